"""A small ipywidgets panel that drives a live session from Jupyter (:meth:`Session.panel`).

A prompt box with a *steer* button (:meth:`Session.set_prompt`: the stream follows the new
prompt from the next chunk boundary), a *play* toggle (on: the session streams at its
playback pace; off: :meth:`Session.pause`, its state stays on the device and the closed
loop may offload it; on again: it resumes, wherever the loop put it) and the live video
of the last chunks with a line of what happened. Needs ``ipywidgets`` (the ``notebook``
extra).

>>> panel = s.panel()        # doctest: +SKIP
>>> panel                    # the widget, in a notebook   # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from typing import Any

from framework import notebook

#: Chunks of the live video (the latest ones, as one looping clip).
VIDEO_CHUNKS = 2


class SessionPanel:
    """The widgets of one session: ``prompt``, ``steer``, ``play``, ``video``, ``info``; ``widget`` holds them."""

    def __init__(self, session: Any, scale: int = 3) -> None:
        import ipywidgets as widgets

        self.session, self.scale = session, scale
        self.prompt = widgets.Text(value=session.prompt, description="prompt", layout=widgets.Layout(width="32em"))
        self.steer = widgets.Button(description="steer", tooltip="switch the prompt at the next chunk boundary")
        self.play = widgets.ToggleButton(value=False, description="play", icon="play",
                                         tooltip="stream at playback pace; off: pause (the state stays)")
        self.video = widgets.HTML()
        self.info = widgets.Label(value=f"session {session.id}: paused")
        self.widget = widgets.VBox([widgets.HBox([self.prompt, self.steer, self.play]), self.video, self.info])
        self.chunks: list[Any] = []
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steer.on_click(lambda _b: self._steer())
        self.play.observe(self._toggle, names="value")

    # ------------------------------------------------------------ callbacks

    def _steer(self) -> None:
        try:
            k = self.session.set_prompt(self.prompt.value)
        except Exception as exc:  # shown, not raised into the widget machinery
            self.info.value = f"steer refused: {type(exc).__name__}: {exc}"
            return
        self.info.value = f"prompt {self.prompt.value!r} from chunk {k} on"

    def _toggle(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._stop.clear()
            self._thread = threading.Thread(target=self._stream, name=f"panel-{self.session.id}", daemon=True)
            self._thread.start()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            try:
                self.session.pause()
                self.info.value = f"session {self.session.id}: paused at chunk {len(self.chunks)}"
            except Exception as exc:
                self.info.value = f"pause failed: {type(exc).__name__}: {exc}"

    def _stream(self) -> None:
        period = self.session.frames / self.session.fps
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                chunk = next(iter(self.session.stream(1)))
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self.info.value = f"stream stopped: {self.error}"
                return
            self.chunks.append(chunk)
            self._show(chunk)
            self._stop.wait(max(0.0, period - (time.monotonic() - asked)))

    def _show(self, chunk: Any) -> None:
        import numpy as np

        frames = np.concatenate([c.frames for c in self.chunks[-VIDEO_CHUNKS:]])
        video = notebook.inline_video(frames, self.session.fps)
        self.video.value = notebook.media_tag(video, self.scale)
        self.info.value = (f"chunk {chunk.index}  latency {chunk.latency_s:.2f}s  worker {chunk.worker}"
                           f"{'  (first after a move)' if chunk.migrated else ''}")

    # ------------------------------------------------------------ display

    def close(self) -> None:
        """Stop streaming (the session stays open)."""
        self.play.value = False

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)
