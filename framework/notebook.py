"""What a session and a server look like in Jupyter: rich reprs, inline video, live display.

The renderers work on plain cards (:class:`SessionCard`, :class:`ServerCard`) so they are
pure functions of data; ``Session``/``Server`` build a card from their own state and
delegate their ``_repr_html_``/``_repr_mimebundle_`` here. The video of a session is the
last frames its client received, kept in a bounded :class:`FrameBuffer` and shown as an
HTML5 ``<video>`` (H.264 mp4 embedded as base64; an animated GIF where PyAV is missing):
no file, no server round trip.

Examples
--------
>>> import numpy as np
>>> buf = FrameBuffer(max_frames=4)
>>> buf.append(np.zeros((3, 8, 8, 3), np.uint8)); buf.append(np.ones((3, 8, 8, 3), np.uint8))
>>> len(buf), buf.frames().shape
(4, (4, 8, 8, 3))
>>> encode_gif(buf.frames(), fps=8)[:6]
b'GIF89a'
"""

from __future__ import annotations

import base64
import html
import io
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Frames a session keeps client side for its inline video when nothing else is configured.
DEFAULT_KEEP_FRAMES = 64

_STATUS_COLOURS = {
    "pending": "#9e9e9e",
    "active": "#2e7d32",
    "idle": "#f9a825",
    "suspended": "#1565c0",
    "migrating": "#6a1b9a",
    "closed": "#616161",
}


class FrameBuffer:
    """The most recent ``max_frames`` video frames of a session, oldest first.

    Appending a chunk is O(frames in the chunk); old frames fall off the front. Safe to
    append from a streaming thread while a repr reads it.

    Parameters
    ----------
    max_frames : int
        Frames kept (``0`` keeps none: the session then shows no video).

    Examples
    --------
    >>> buf = FrameBuffer(max_frames=2)
    >>> buf.append(np.zeros((3, 4, 4, 3), np.uint8))
    >>> len(buf)
    2
    """

    def __init__(self, max_frames: int = DEFAULT_KEEP_FRAMES) -> None:
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.max_frames = max_frames
        self._frames: deque[np.ndarray] = deque(maxlen=max_frames or None)
        self._lock = threading.Lock()

    def append(self, frames: np.ndarray) -> None:
        """Add a chunk's frames, ``uint8`` of shape ``(T, H, W, 3)``."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        if self.max_frames == 0:
            return
        with self._lock:
            self._frames.extend(frames[-self.max_frames :])

    def frames(self) -> np.ndarray | None:
        """The kept frames as one ``(T, H, W, 3)`` array, or ``None`` when empty."""
        with self._lock:
            kept = list(self._frames)
        return np.stack(kept) if kept else None

    def clear(self) -> None:
        """Forget every kept frame."""
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)


def encode_gif(frames: np.ndarray, fps: float = 16.0) -> bytes:
    """Encode ``uint8`` frames ``(T, H, W, 3)`` as a looping animated GIF.

    Raises
    ------
    ValueError
        When ``frames`` is empty or not ``(T, H, W, 3)`` ``uint8``, or ``fps`` is not positive.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be non-empty uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = [Image.fromarray(f, mode="RGB") for f in frames]
    out = io.BytesIO()
    # GIF frame durations are in ms; most viewers clamp below 20 ms, so cap the rate there.
    duration = max(20, round(1000 / fps))
    images[0].save(
        out, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class AnimatedGif:
    """An animated GIF that displays itself inline in Jupyter.

    Attributes
    ----------
    data : bytes
        The encoded GIF.
    n_frames, height, width : int
    fps : float
    """

    data: bytes
    n_frames: int
    height: int
    width: int
    fps: float

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float = 16.0) -> "AnimatedGif":
        """Encode ``uint8`` frames ``(T, H, W, 3)`` (see :func:`encode_gif`)."""
        t, h, w, _ = np.shape(frames)
        return cls(encode_gif(frames, fps), t, h, w, fps)

    def img_tag(self, scale: int = 2) -> str:
        """An ``<img>`` tag with the GIF inline as base64, shown ``scale`` times its size."""
        return f'<img src="data:image/gif;base64,{_b64(self.data)}" {self.size_attrs(scale)} alt="{self.n_frames} frames"/>'

    def size_attrs(self, scale: int) -> str:
        """The ``width``, ``height`` and ``style`` attributes of ``scale`` times the frame size, pixelated."""
        return f'width="{self.width * scale}" height="{self.height * scale}" style="image-rendering: pixelated"'

    def save(self, path: str) -> None:
        """Write the GIF to ``path``."""
        Path(path).write_bytes(self.data)

    def __repr__(self) -> str:
        return f"<AnimatedGif {self.n_frames} frames {self.height}x{self.width} @ {self.fps:g} fps>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            "image/gif": _b64(self.data),
            "text/html": self.img_tag(),
            "text/plain": repr(self),
        }


@dataclass(frozen=True, slots=True)
class InlineVideo:
    """An H.264 mp4 that plays inline in Jupyter as an HTML5 ``<video>`` (GIF inside as fallback).

    The mime bundle carries ``text/html`` (the ``<video>``) and ``image/gif`` (for
    frontends that render no HTML, e.g. a notebook viewer without scripts).

    Attributes
    ----------
    data : bytes
        The encoded mp4 (:func:`storage.video_files.encode_video`).
    gif : AnimatedGif
    """

    data: bytes
    gif: AnimatedGif

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float = 16.0) -> "InlineVideo":
        """Encode ``uint8`` frames ``(T, H, W, 3)``; ``VideoStoreError`` when PyAV is missing."""
        from storage.video_files import encode_video

        return cls(encode_video(frames, fps), AnimatedGif.from_frames(frames, fps))

    def video_tag(self, scale: int = 2) -> str:
        """A looping, muted, autoplaying ``<video>`` with the mp4 inline as base64."""
        return (
            f'<video autoplay loop muted playsinline controls {self.gif.size_attrs(scale)} '
            f'title="{self.gif.n_frames} frames">'
            f'<source type="video/mp4" src="data:video/mp4;base64,{_b64(self.data)}"/></video>'
        )

    def save(self, path: str) -> None:
        """Write the mp4 to ``path``."""
        Path(path).write_bytes(self.data)

    def __repr__(self) -> str:
        g = self.gif
        return f"<InlineVideo mp4 {g.n_frames} frames {g.height}x{g.width} @ {g.fps:g} fps>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            "text/html": self.video_tag(),
            "image/gif": _b64(self.gif.data),
            "text/plain": repr(self),
        }


def inline_video(frames: np.ndarray, fps: float = 16.0) -> "InlineVideo | AnimatedGif":
    """An :class:`InlineVideo` (mp4) of the frames, or an :class:`AnimatedGif` without PyAV."""
    from storage.errors import VideoStoreError

    try:
        return InlineVideo.from_frames(frames, fps)
    except VideoStoreError:
        return AnimatedGif.from_frames(frames, fps)


def media_tag(video: "InlineVideo | AnimatedGif", scale: int) -> str:
    """The HTML tag of :func:`inline_video`'s result: a ``<video>``, or an ``<img>`` for a GIF."""
    return video.video_tag(scale) if isinstance(video, InlineVideo) else video.img_tag(scale)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class StreamHistory:
    """What one client received of a session's stream: recent frames, counts, latencies.

    ``Session`` keeps one and records every chunk it hands out; its repr reads it.

    Parameters
    ----------
    max_frames : int, optional
        Frames kept for the inline video (``turboserve.notebook.keep-frames``, default 64).

    Examples
    --------
    >>> from workers.chunk import Chunk
    >>> h = StreamHistory(max_frames=4)
    >>> h.record(Chunk("s", 0, np.zeros((3, 8, 8, 3), np.uint8), 0.5, "tcp://w:1", 2, 0.0, 0.1, 0.5))
    >>> h.chunks, h.last_latency_s, h.worker, len(h.buffer)
    (1, 0.5, 'tcp://w:1', 3)
    """

    def __init__(self, max_frames: int | None = None) -> None:
        if max_frames is None:
            import dask.config

            max_frames = int(dask.config.get("turboserve.notebook.keep-frames", default=DEFAULT_KEEP_FRAMES))
        self.buffer = FrameBuffer(max_frames)
        self.chunks = 0
        self.last_latency_s: float | None = None
        self.max_latency_s: float | None = None
        self.worker: str | None = None

    def record(self, chunk: Any) -> None:
        """Fold in one received chunk (a :class:`~workers.chunk.Chunk`)."""
        self.buffer.append(chunk.frames)
        self.chunks += 1
        self.last_latency_s = chunk.latency_s
        self.max_latency_s = max(self.max_latency_s or 0.0, chunk.latency_s)
        self.worker = chunk.worker


# ---------------------------------------------------------------- cards


@dataclass(frozen=True, slots=True)
class SessionCard:
    """What the repr of one session shows (plain data, built by ``Session``).

    Attributes
    ----------
    session_id, prompt, status : str
    worker : str or None
        Address of the worker holding its state (``None`` when suspended or pending).
    chunks : int
        Chunks received so far.
    last_latency_s, max_latency_s : float or None
        Latency of the last chunk and the worst one so far.
    slo_s : float or None
        Per-chunk latency target, to colour the latency.
    frames : numpy.ndarray or None
        Recent frames ``(T, H, W, 3)`` for the inline video.
    fps : float
    """

    session_id: str
    prompt: str
    status: str
    worker: str | None = None
    chunks: int = 0
    last_latency_s: float | None = None
    max_latency_s: float | None = None
    slo_s: float | None = None
    frames: np.ndarray | None = field(default=None, repr=False, compare=False)
    fps: float = 16.0


@dataclass(frozen=True, slots=True)
class ServerCard:
    """What the repr of a server shows (plain data, built by ``Server``).

    Attributes
    ----------
    workers : sequence of str
    sessions : sequence of SessionCard
        Their frames are not shown in the table.
    dashboard_link : str or None
    model : str or None
    """

    workers: Sequence[str]
    sessions: Sequence[SessionCard] = ()
    dashboard_link: str | None = None
    model: str | None = None


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _badge(status: str) -> str:
    colour = _STATUS_COLOURS.get(status, "#616161")
    return (
        f'<span style="background:{colour};color:white;border-radius:4px;padding:1px 6px">'
        f"{html.escape(status)}</span>"
    )


def _latency_cell(latency: float | None, slo_s: float | None) -> str:
    text = _fmt_s(latency)
    if latency is not None and slo_s is not None and latency > slo_s:
        return f'<span style="color:#c62828" title="over the {_fmt_s(slo_s)} target">{text}</span>'
    return text


def session_text(card: SessionCard) -> str:
    """One-line plain-text summary of a session (its ``text/plain`` repr)."""
    where = f" on {card.worker}" if card.worker else ""
    return (
        f"<Session {card.session_id} {card.status}{where}: {card.chunks} chunks, "
        f"last latency {_fmt_s(card.last_latency_s)}>"
    )


def session_html(card: SessionCard, scale: int = 2) -> str:
    """HTML card of a session: a facts table beside its recent video (if any frames)."""
    rows = [
        ("prompt", html.escape(card.prompt)),
        ("status", _badge(card.status)),
        ("worker", html.escape(card.worker or "–")),
        ("chunks", str(card.chunks)),
        ("last latency", _latency_cell(card.last_latency_s, card.slo_s)),
        ("max latency", _latency_cell(card.max_latency_s, card.slo_s)),
    ]
    if card.slo_s is not None:
        rows.append(("latency target", _fmt_s(card.slo_s)))
    table = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{k}</th>'
        f'<td style="text-align:left">{v}</td></tr>'
        for k, v in rows
    )
    if card.frames is not None and len(card.frames):
        video = media_tag(inline_video(card.frames, card.fps), scale)
        caption = f"last {len(card.frames)} frames"
    else:
        video, caption = "<em>no frames yet</em>", ""
    return (
        '<div class="turboserve-session" style="display:flex;gap:1.5em;align-items:flex-start">'
        f"<div><strong>Session {html.escape(card.session_id)}</strong>"
        f"<table>{table}</table></div>"
        f'<figure style="margin:0">{video}<figcaption style="font-size:small">{caption}'
        "</figcaption></figure></div>"
    )


def session_mimebundle(card: SessionCard) -> dict[str, str]:
    """``_repr_mimebundle_`` of a session: the HTML card and the one-line text."""
    return {"text/html": session_html(card), "text/plain": session_text(card)}


def sessions_table_html(cards: Iterable[SessionCard]) -> str:
    """HTML table of sessions: id, status, worker, chunks, latencies, prompt."""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("session", "status", "worker", "chunks", "last latency", "max latency", "prompt")
    )
    body = "".join(
        "<tr>"
        f"<td>{html.escape(c.session_id)}</td><td>{_badge(c.status)}</td>"
        f"<td>{html.escape(c.worker or '–')}</td><td>{c.chunks}</td>"
        f"<td>{_latency_cell(c.last_latency_s, c.slo_s)}</td>"
        f"<td>{_latency_cell(c.max_latency_s, c.slo_s)}</td>"
        f"<td style='text-align:left'>{html.escape(c.prompt)}</td>"
        "</tr>"
        for c in cards
    )
    return f'<table class="turboserve-sessions"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def server_text(card: ServerCard) -> str:
    """One-line plain-text summary of a server."""
    return (
        f"<Server {len(card.workers)} workers, {len(card.sessions)} sessions, "
        f"dashboard {card.dashboard_link or '–'}>"
    )


def server_html(card: ServerCard) -> str:
    """HTML card of a server: workers, a sessions table and the dashboard links."""
    if card.dashboard_link:
        link = html.escape(card.dashboard_link)
        page = html.escape(turboserve_page_url(card.dashboard_link))
        dash = (
            f'<a href="{link}" target="_blank">{link}</a> '
            f'(sessions page: <a href="{page}" target="_blank">{page}</a>)'
        )
    else:
        dash = "–"
    workers = "".join(f"<li>{html.escape(w)}</li>" for w in card.workers) or "<li>none</li>"
    model = f" &middot; model <code>{html.escape(card.model)}</code>" if card.model else ""
    sessions = sessions_table_html(card.sessions) if card.sessions else "<p><em>no sessions</em></p>"
    return (
        '<div class="turboserve-server">'
        f"<strong>turboserve Server</strong>{model}"
        f"<p>Dashboard: {dash}</p>"
        f"<details open><summary>{len(card.workers)} workers</summary><ul>{workers}</ul></details>"
        f"<details open><summary>{len(card.sessions)} sessions</summary>{sessions}</details>"
        "</div>"
    )


def server_mimebundle(card: ServerCard) -> dict[str, str]:
    """``_repr_mimebundle_`` of a server."""
    return {"text/html": server_html(card), "text/plain": server_text(card)}


def turboserve_page_url(dashboard_link: str) -> str:
    """URL of the turboserve dashboard page, given Dask's dashboard link (``.../status``)."""
    base = dashboard_link.rstrip("/")
    if base.endswith("/status"):
        base = base[: -len("/status")]
    from framework.dashboard.page import PAGE_PATH  # late: keeps bokeh out of plain imports

    return base + PAGE_PATH


# ---------------------------------------------------------------- live display


def display_stream(session: Any, n: int | None = None, **stream_kwargs: Any) -> list[Any]:
    """Stream ``n`` chunks of ``session``, updating one IPython display as each arrives.

    The display shows the session's repr (status, latency, video so far). Returns the
    chunks received.

    Parameters
    ----------
    session : Session
        Anything with ``stream(n, **kw)`` yielding chunks and a rich repr.
    n : int, optional
        Chunks to stream (passed to ``session.stream``).
    **stream_kwargs
        Passed on to ``session.stream``.
    """
    from IPython.display import display

    handle = display(session, display_id=True)
    chunks = []
    for chunk in session.stream(n, **stream_kwargs):
        chunks.append(chunk)
        if handle is not None:
            handle.update(session)
    return chunks


# ---------------------------------------------------------------- adapters (Session, Server)


def _slo_for(frames_per_chunk: int, fps: float) -> float | None:
    import dask.config

    slo = dask.config.get("turboserve.slo-s", default=None)
    if slo is not None:
        return float(slo)
    return frames_per_chunk / fps if fps else None


def session_card(session: Any) -> SessionCard:
    """The card of a live ``Session``: its scheduler record plus what this client received.

    Never raises for a session whose server is gone: the status then reads ``unknown``.
    """
    history: StreamHistory | None = getattr(session, "history", None)
    try:
        rec = session.record()
    except Exception:  # the repr of a session must not fail after its server closed
        rec = {"status": "unknown"}
    return SessionCard(
        session_id=session.id,
        prompt=session.prompts[-1][1] if getattr(session, "prompts", None) else session.prompt,
        status=str(rec.get("status", "unknown")),
        worker=rec.get("worker", history.worker if history else None),
        chunks=history.chunks if history else int(rec.get("chunks", 0)),
        last_latency_s=history.last_latency_s if history else rec.get("recent_latency_s"),
        max_latency_s=history.max_latency_s if history else None,
        slo_s=_slo_for(session.frames, session.fps),
        frames=history.buffer.frames() if history else None,
        fps=float(session.fps),
    )


def session_video(session: Any, fps: float | None = None) -> InlineVideo | AnimatedGif | None:
    """The frames a session's client kept, as an :class:`InlineVideo` (GIF without PyAV; None before any)."""
    history: StreamHistory | None = getattr(session, "history", None)
    frames = history.buffer.frames() if history else None
    if frames is None:
        return None
    return inline_video(frames, fps or float(session.fps))


def server_card(server: Any) -> ServerCard:
    """The card of a live ``Server`` (one scheduler round trip for the sessions)."""
    try:
        workers = server.workers()
        records = server.sessions()
        link = server.dashboard_link
    except Exception:  # closed server: show what is known without a cluster
        workers, records, link = [], [], None
    model = getattr(getattr(server, "settings", None), "model", None)
    cards = [
        SessionCard(
            session_id=r["id"],
            prompt=r.get("current_prompt", r.get("prompt", "")),
            status=r["status"],
            worker=r.get("worker"),
            chunks=int(r.get("chunks", 0)),
            last_latency_s=r.get("recent_latency_s"),
        )
        for r in records
    ]
    return ServerCard(workers=workers, sessions=cards, dashboard_link=link, model=model)
