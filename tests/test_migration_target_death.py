"""A migration whose target worker dies does not hang, and the stream goes on (issue 13,
measurement 1): on a real LocalCluster the target's process is killed (SIGKILL) at the
moment the migration starts the new actor there, before the target has taken the state.
``migrate()`` must return promptly with a typed error, the session must stay at its
source, and its next chunks must be the frames of an uninterrupted run."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from framework import Server
from kernels.model import StreamingVideoModel

pytestmark = pytest.mark.slow

PROMPT = "a kite over the dunes"


def test_a_migration_whose_target_dies_returns_and_the_stream_goes_on_at_the_source(tmp_path, kill_at_actor_start):
    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), dashboard_address=None) as server:
        s = server.open_session(PROMPT, seed=11)
        frames = [c.frames for c in s.stream(2)]
        source = s.worker
        (target,) = [w for w in server.workers() if w != source]
        pid = server.client.run(os.getpid, workers=[target])[target]
        server.client.run_on_scheduler(kill_at_actor_start, kind="peer", pid=pid)

        outcome: dict = {}

        def move():
            try:
                s.migrate(target)
                outcome["ok"] = True
            except Exception as exc:  # the typed error the client sees
                outcome["error"] = exc

        t0 = time.monotonic()
        mover = threading.Thread(target=move, daemon=True)
        mover.start()
        mover.join(timeout=120)
        assert not mover.is_alive(), "migrate() hung after its target died"
        assert "error" in outcome and "goes on at the source" in str(outcome["error"]), outcome
        assert time.monotonic() - t0 < 120
        rec = next(r for r in server.sessions() if r["id"] == s.id)
        assert rec["worker"] == source and rec["status"] in ("active", "idle"), rec
        frames += [c.frames for c in s.stream(2)]

    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    state = model.new_session(PROMPT, 11)
    expected = [model.step([state])[0] for _ in range(4)]
    assert len(frames) == 4
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got, want)
