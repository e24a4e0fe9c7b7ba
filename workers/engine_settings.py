"""The knobs of a worker's chunk engine (``turboserve.engine.*``), resolved once.

A plain frozen record: the client resolves it from ``dask.config``
(:meth:`EngineSettings.from_config`) and passes it to the worker plugin, so every
worker runs with the same settings and worker code does not read the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.config


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Knobs of one engine (``turboserve.engine.*``; :meth:`from_config` resolves them).

    Attributes
    ----------
    max_batch : int
        Most sessions in one coalesced step (also capped by free device memory).
    batching : bool
        ``False`` runs one session per step: the baseline of the serving benchmark.
    checkpoint_every : int
        Hand the state to ``checkpoint`` every this many chunks (0: never). A
        checkpoint is written only once the client has acknowledged every chunk
        before it (:meth:`Engine.ack`), so a recovery from it never leaves a gap in
        the client's stream; until then its host copy waits in memory.
    batch_window_s : float
        Longest wait for sessions about to become due before a step starts (0: never
        wait); always bounded by the deadline of the chunks already due.
    batch_window_share : float
        The window is at least this share of the predicted step time (its clients'
        round trip grows with the machine's load, as the step does); 0: the fixed
        ``batch_window_s`` only.
    deadline_s : float
        Per-chunk latency target: a chunk's deadline is its request time plus this.
    max_unread : int
        Most chunks of one session produced but not yet acknowledged by its reader
        (0: unbounded); a session that far ahead of its reader waits.
    valve_batch : int
        Quality valve: a step of more sessions than this (b*) runs with
        ``valve_steps`` denoising steps (0: off).
    valve_steps : int
        Denoising steps of a step under the quality valve.
    batch_invariant : bool
        The model computes each session's chunk bit-identically whatever it is batched
        with (``kernels.model``; the worker builds its models with it).
    prearm_chunks : int
        Chunks of a session made ahead of its requests (0: none): while its client is
        reading (it asked, and did not pause), the next ones join steps that run for
        other sessions' due chunks, within ``max_unread`` and the due chunks'
        deadlines. At most this many chunks are made that nobody asks for when a
        session stops.
    start_with_joins : bool
        A step that would hold every reading session (due chunks, and the rest made
        ahead) starts at once instead of waiting in the window for their requests,
        which would only make them due (``turboserve.engine.start-with-joins``; off by
        default until the loaded back-to-back runs that split batches with it are
        explained: docs/PERFORMANCE.md).
    """

    max_batch: int = 8
    batching: bool = True
    checkpoint_every: int = 0
    batch_window_s: float = 0.02
    batch_window_share: float = 0.25
    deadline_s: float = 0.75
    max_unread: int = 8
    valve_batch: int = 0
    valve_steps: int = 2
    batch_invariant: bool = True
    prearm_chunks: int = 1
    start_with_joins: bool = False

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not self.batch_window_s >= 0:
            raise ValueError(f"batch_window_s must be >= 0 seconds, got {self.batch_window_s}")
        if not self.batch_window_share >= 0:
            raise ValueError(f"batch_window_share must be >= 0, got {self.batch_window_share}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds, got {self.deadline_s}")
        if self.max_unread < 0:
            raise ValueError(f"max_unread must be >= 0 (0: unbounded), got {self.max_unread}")
        if self.valve_batch < 0:
            raise ValueError(f"valve_batch must be >= 0 (0: valve off), got {self.valve_batch}")
        if self.prearm_chunks < 0:
            raise ValueError(f"prearm_chunks must be >= 0 (0: nothing made ahead), got {self.prearm_chunks}")
        if self.valve_steps < 1:
            raise ValueError(f"valve_steps must be >= 1 denoising step, got {self.valve_steps}")

    @classmethod
    def from_config(cls, **given: Any) -> "EngineSettings":
        """Settings from ``dask.config`` (``turboserve.engine.*``); given fields win.

        Needs turboserve's defaults loaded (``framework`` loads them). ``None`` values
        count as not given. The deadline is ``turboserve.slo-s``, or by default the
        playback time of one chunk (``chunk.frames / chunk.fps``).

        Examples
        --------
        >>> import framework.config
        >>> EngineSettings.from_config(max_batch=4).max_batch
        4
        """
        get = dask.config.get
        slo = get("turboserve.slo-s", None)
        if slo is None:
            slo = get("turboserve.chunk.frames") / get("turboserve.chunk.fps")
        values = {
            "max_batch": int(get("turboserve.engine.max-batch")),
            "batching": bool(get("turboserve.engine.batching")),
            "checkpoint_every": int(get("turboserve.state.checkpoint-every")),
            "batch_window_s": float(get("turboserve.engine.batch-window-s")),
            "batch_window_share": float(get("turboserve.engine.batch-window-share")),
            "deadline_s": float(slo),
            "max_unread": int(get("turboserve.engine.max-unread-chunks")),
            "valve_batch": int(get("turboserve.engine.quality-valve.batch")),
            "valve_steps": int(get("turboserve.engine.quality-valve.steps")),
            "batch_invariant": bool(get("turboserve.engine.batch-invariant")),
            "prearm_chunks": int(get("turboserve.engine.prearm-chunks")),
            "start_with_joins": bool(get("turboserve.engine.start-with-joins")),
        }
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)
