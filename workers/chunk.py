"""The chunk record: one piece of a session's video plus the metrics of its making."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Result columns of one chunk row (DESIGN.md contract), in order.
CHUNK_COLUMNS = (
    "session_id",
    "index",
    "t_request_s",
    "t_start_s",
    "t_done_s",
    "latency_s",
    "worker",
    "batch_size",
    "migrated",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a session's video, as the client receives it.

    Times are wall-clock seconds (``time.time()``) on the worker's host:
    ``t_request_s`` when the worker received the request for this chunk,
    ``t_start_s`` when the batched step that made it began, ``t_done_s`` when its frames
    were ready. ``latency_s = t_done_s - t_request_s``.

    Attributes
    ----------
    session_id : str
    index : int
        Position of the chunk in its session's stream, from 0, without gaps.
    frames : numpy.ndarray
        ``uint8`` array of shape ``(T, H, W, 3)``.
    latency_s, t_request_s, t_start_s, t_done_s : float
    worker : str
        Address of the worker whose engine produced the chunk.
    batch_size : int
        Number of sessions in the coalesced step that produced it.
    migrated : bool
        True for the first chunk produced after the session moved (migration or
        recovery on another worker).
    degraded : bool
        True when the quality valve made it with fewer denoising steps than the
        model's own (its step held more sessions than the batch ``b*``).
    denoise_steps : int or None
        Denoising steps that made it (None when the engine did not know them).

    Examples
    --------
    >>> import numpy as np
    >>> c = Chunk("s", 0, np.zeros((1, 2, 2, 3), np.uint8), 0.5, "tcp://w", 1, 0.0, 0.1, 0.5)
    >>> c.to_row()["latency_s"]
    0.5
    """

    session_id: str
    index: int
    frames: np.ndarray
    latency_s: float
    worker: str
    batch_size: int
    t_request_s: float
    t_start_s: float
    t_done_s: float
    migrated: bool = False
    degraded: bool = False
    denoise_steps: int | None = None

    def to_row(self) -> dict[str, Any]:
        """The chunk's result-column row (everything but the frames)."""
        return {name: getattr(self, name) for name in CHUNK_COLUMNS}
