"""The simulator's state records: one per session, one per worker, and the event kinds.

:class:`_Session` and :class:`_Worker` are the mutable bookkeeping the event loop works
on (slotted, for speed); the policies never see them, only the frozen views built from
them (:mod:`experiments.sim.snapshot`).
"""

from __future__ import annotations

import math
from typing import Callable

from policies.types import SessionStatus, SessionView, WorkerStatus, WorkerView

# event kinds, in priority order at equal times
_TRACE, _COPY, _RELEASE, _STEP, _READY, _TICK, _WAKE, _ADMIT = range(8)
_N_KINDS = 8
_INF = math.inf
# The automatic cyclic GC is off during a run: with millions of live objects its full
# passes cost a third of the wall time, and the loop makes no reference cycles. Young
# cyclic garbage (from policies, say) is still collected every this many ticks.
_GC_EVERY_TICKS = 600

PENDING, ACTIVE, IDLE = SessionStatus.PENDING, SessionStatus.ACTIVE, SessionStatus.IDLE
SUSPENDED, MIGRATING, CLOSED = SessionStatus.SUSPENDED, SessionStatus.MIGRATING, SessionStatus.CLOSED
STARTING, RUNNING, DRAINING = WorkerStatus.STARTING, WorkerStatus.RUNNING, WorkerStatus.DRAINING


class _Session:
    __slots__ = (
        "idx", "sid", "status", "worker", "target", "nbytes", "period", "frames", "since",
        "next_index", "next_req", "in_flight", "copy_until", "migrated_next", "wants", "ctx",
        "recent", "on_host", "host_ready", "view", "dirty", "opened", "fresh", "put_off",
        "burst_from",
    )

    def __init__(self, idx: int, sid: str, nbytes: int, period: float, frames: int) -> None:
        self.idx, self.sid, self.nbytes, self.period, self.frames = idx, sid, nbytes, period, frames
        self.status = PENDING
        self.worker: _Worker | None = None
        self.target: _Worker | None = None
        self.since = 0.0
        self.next_index = 0
        self.next_req = 0.0
        self.in_flight = False
        self.copy_until = 0.0
        self.migrated_next = False
        self.wants = False
        self.ctx = 0.0
        self.recent: float | None = None
        self.on_host = False
        self.host_ready = 0.0
        self.view: SessionView | None = None
        self.dirty = False  # queued in Simulator._dirty for a new view
        self.opened = False
        self.fresh = True  # its next chunk is the first of a burst (index 0 or after a resume)
        self.put_off = False  # that first chunk was put after in-stream chunks once (split_due)
        self.burst_from = 0.0  # when its current burst began (while it wants chunks)

    @property
    def admission_wait(self) -> bool:
        """Its next chunk counts as an admission wait (first of a burst, not yet put off once)."""
        return self.fresh and not self.put_off


class _Worker:
    __slots__ = (
        "idx", "address", "status", "started", "memory", "max_batch", "used", "sessions",
        "active", "busy", "step_end", "wake_at", "released", "view", "degree", "group", "rules",
    )

    def __init__(self, idx: int, started: float, status: WorkerStatus, memory: int, max_batch: int) -> None:
        self.idx, self.address, self.status, self.started = idx, f"sim-w{idx}", status, started
        self.memory, self.max_batch = memory, max_batch
        self.used = 0
        self.sessions: dict[int, _Session] = {}
        self.active: dict[int, _Session] = {}
        self.busy = False
        self.step_end = 0.0
        self.wake_at: float | None = None
        self.released: float | None = None
        self.view: WorkerView | None = None
        self.degree = 1  # a group's leader steps at its group's degree
        self.group: tuple[str, ...] = ()  # the workers of its parallel group, leader first
        # (valve group size, step time of n sessions, their raw step times): the batching
        # rules' numbers for this degree and batch cap (StepRunner.rules), looked up once; None: not yet
        self.rules: tuple[float, Callable[[int], float], list[float]] | None = None

    def regroup(self, degree: int, max_batch: int) -> None:
        """Step at ``degree`` (a parallel group's leader; 1: alone) with ``max_batch`` sessions at most."""
        self.degree, self.max_batch = degree, max_batch
        self.rules = None

