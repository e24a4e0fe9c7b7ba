"""The Jupyter panel of a session (issue 12): its widgets drive a live session on a LocalCluster."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ipywidgets")

from framework import Server  # noqa: E402

PROMPT = "a red fox running through snow"


def _until(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_play_steer_and_pause_from_the_panel():
    with Server.local(n_workers=1, model="tiny", adaptive=False, dashboard_address=":0") as server:
        s = server.open_session(PROMPT, seed=0)
        panel = s.panel()
        panel.play.value = True  # what clicking "play" does
        _until(lambda: len(panel.chunks) >= 2, "two chunks")
        assert panel.video.value.startswith(("<img", "<video")) and "chunk" in panel.info.value
        panel.prompt.value = "a blue bird over the sea"
        panel.steer.click()
        assert "from chunk" in panel.info.value
        k = s.prompts[-1][0]
        _until(lambda: len(panel.chunks) > k, f"chunk {k}")
        panel.play.value = False
        assert "paused" in panel.info.value and s.status == "idle"
        assert [c.index for c in panel.chunks] == list(range(len(panel.chunks)))
        assert panel.error is None
        s.close()
