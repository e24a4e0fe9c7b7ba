"""Plain data the policies read and write: the cluster snapshot and the actions.

Policies are pure functions of a :class:`Snapshot` (and of their own explicit state):
no Dask, no torch, no clock, no I/O. The live controller (``framework``) and the
simulator (``experiments``) both build a snapshot, call the same policy, and apply the
returned actions with their own mechanism.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

GiB = 1024**3
#: Where a suspended session's state can go (``Offload.tier``): pinned host memory or disk (zarr).
TIERS: tuple[str, ...] = ("host", "disk")


class SessionStatus(enum.Enum):
    """Lifecycle of a session.

    ``pending`` sessions wait for a placement; ``active`` ones want a chunk every
    playback period; ``idle`` ones keep their state on the device; ``suspended`` ones
    have their state on the host (or on disk) and hold no device memory.
    """

    PENDING = "pending"
    ACTIVE = "active"
    IDLE = "idle"
    SUSPENDED = "suspended"
    MIGRATING = "migrating"
    CLOSED = "closed"

    @property
    def on_device(self) -> bool:
        """True when the session's state occupies device memory on its worker."""
        return self in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING)

    @property
    def finished(self) -> bool:
        return self is SessionStatus.CLOSED


class WorkerStatus(enum.Enum):
    """Lifecycle of a worker (one GPU)."""

    STARTING = "starting"  # requested, paying its start-up time; holds nothing yet
    RUNNING = "running"
    DRAINING = "draining"  # sessions are being moved away before retirement


@dataclass(frozen=True, slots=True)
class BatchLatencyModel:
    """Predicted time of one coalesced chunk step as a function of the batch size.

    A piecewise-linear curve through measured points ``(batch_size, seconds)``;
    beyond the last point it extrapolates with the last slope. ``context_slope_s``
    adds time per cached context frame per session (attention over the KV cache).

    Examples
    --------
    >>> m = BatchLatencyModel(batch_sizes=(1, 8), step_s=(0.1, 0.4))
    >>> round(m.predict(4), 4)
    0.2286
    """

    batch_sizes: tuple[int, ...]
    step_s: tuple[float, ...]
    context_slope_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.batch_sizes) != len(self.step_s) or not self.batch_sizes:
            raise ValueError("batch_sizes and step_s must be non-empty and of equal length")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError(f"batch_sizes must be strictly increasing and >= 1, got {self.batch_sizes}")

    def predict(self, batch_size: int, context_frames: float = 0.0) -> float:
        """Seconds for one step advancing ``batch_size`` sessions by one chunk."""
        if batch_size <= 0:
            return 0.0
        xs, ys = self.batch_sizes, self.step_s
        if len(xs) == 1:
            base = ys[0] * batch_size / xs[0]
        else:
            i = bisect.bisect_left(xs, batch_size)
            i = min(max(i, 1), len(xs) - 1)
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            base = y0 + (y1 - y0) * (batch_size - x0) / (x1 - x0)
            if batch_size < xs[0]:
                base = ys[0]
        return max(base, 0.0) + self.context_slope_s * context_frames * batch_size


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What a policy knows of one worker (one GPU)."""

    address: str
    status: WorkerStatus = WorkerStatus.RUNNING
    memory_bytes: int = 80 * GiB  # device memory available for session state
    max_batch: int = 32
    started_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a policy knows of one session."""

    session_id: str
    status: SessionStatus
    worker: str | None = None  # where its state lives on a device (None if pending/suspended)
    state_bytes: int = 0
    model: str = "tiny"
    since_s: float = 0.0  # time of the last status change
    chunk_period_s: float = 1.0  # playback time of one chunk (its deadline cadence)
    context_frames: float = 0.0
    recent_latency_s: float | None = None  # last measured per-chunk latency
    next_active_s: float | None = None  # when the session is expected to become active again, if known


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable view of the cluster at time ``now_s`` (seconds, virtual or real)."""

    now_s: float
    workers: tuple[WorkerView, ...]
    sessions: tuple[SessionView, ...]
    slo_s: float = 1.0  # per-chunk latency target
    latency: BatchLatencyModel = field(default_factory=lambda: BatchLatencyModel((1,), (0.1,)))
    migrate_bytes_per_s: float = 25e9  # GPU-GPU link
    offload_bytes_per_s: float = 20e9  # GPU-host (pinned) link
    min_workers: int = 0
    max_workers: int = 1_000_000
    worker_startup_s: float = 60.0

    def worker(self, address: str) -> WorkerView | None:
        for w in self.workers:
            if w.address == address:
                return w
        return None

    def session(self, session_id: str) -> SessionView | None:
        for s in self.sessions:
            if s.session_id == session_id:
                return s
        return None

    def sessions_on(self, address: str) -> list[SessionView]:
        return [s for s in self.sessions if s.worker == address and s.status.on_device]

    def running_workers(self) -> list[WorkerView]:
        return [w for w in self.workers if w.status is WorkerStatus.RUNNING]


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Action:
    """Base of every decision; ``cause`` says why, for logs and refusals."""

    cause: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class Place(Action):
    """Put a pending session on a worker."""

    session_id: str
    worker: str


@dataclass(frozen=True, slots=True)
class Migrate(Action):
    """Move a session's device state from ``source`` to ``target`` at a chunk boundary."""

    session_id: str
    source: str
    target: str
    #: Part of emptying a DRAINING worker (an executor that drains it itself refuses it).
    #: Out of the repr, so decision digests pinned before the field existed still hold.
    drain: bool = field(default=False, kw_only=True, repr=False)


@dataclass(frozen=True, slots=True)
class Offload(Action):
    """Suspend an idle session: its state leaves the device for ``tier`` ("host" or "disk")."""

    session_id: str
    tier: str = "host"
    #: Part of emptying a DRAINING worker (see :class:`Migrate`).
    drain: bool = field(default=False, kw_only=True, repr=False)


@dataclass(frozen=True, slots=True)
class Resume(Action):
    """Bring a suspended session's state back onto ``worker``'s device."""

    session_id: str
    worker: str


@dataclass(frozen=True, slots=True)
class Reject(Action):
    """Admission control: refuse (or keep queued) a pending session."""

    session_id: str


@dataclass(frozen=True, slots=True)
class ScaleTo(Action):
    """Ask for ``n`` workers in total (the autoscaler's target)."""

    n: int


@dataclass(frozen=True, slots=True)
class Retire(Action):
    """Drain ``worker`` (move its sessions away) and then release it."""

    worker: str


# ---------------------------------------------------------------- policy protocol


@runtime_checkable
class Policy(Protocol):
    """A pure decision function with explicit state.

    ``decide`` must not read clocks, random sources other than a seeded generator kept
    in ``state``, or anything but its arguments. It returns the actions and the next
    state (``initial_state()`` gives the first one).
    """

    kind: str  # "placement", "autoscaling" or "offload"
    name: str

    def initial_state(self) -> Any: ...

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]: ...
