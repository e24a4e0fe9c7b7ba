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
#: The policies' size of a GPU worker when the snapshot has none to copy it from (an
#: 80 GiB H100); also what ``turboserve.simulator.gpu-memory-bytes: null`` means.
DEFAULT_WORKER_MEMORY_BYTES = 80 * GiB
#: Time from a scale-up to a usable worker when nobody says (a GPU node with its model);
#: the configured values are ``turboserve.simulator.worker-startup-s`` and ``autoscale.worker-startup-s``.
DEFAULT_WORKER_STARTUP_S = 60.0
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
    memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES  # device memory available for session state
    max_batch: int = 32
    started_s: float = 0.0
    #: The model presets this worker serves (its pool); None: any model (loaded on demand).
    models: frozenset[str] | None = None
    #: With the quality valve: the most sessions its engine runs in one degraded step that
    #: still meets the SLO (above ``max_batch``, its b*); 0: no valve.
    valve_batch: int = 0

    def serves(self, model: str) -> bool:
        """Whether a session of ``model`` may be placed here (the one model-pool rule).

        >>> WorkerView("w1", models=frozenset({"tiny"})).serves("wan-1.3b"), WorkerView("w2").serves("wan-1.3b")
        (False, True)
        """
        return self.models is None or model in self.models


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
class ParallelGroup:
    """``degree`` workers (one GPU each) that serve their sessions together, one step at a time.

    ``workers[0]`` leads: sessions on the group name it as their ``worker``. A worker in no
    group serves alone (degree 1) and has no record. ``model`` is the preset the group
    serves, when known.
    """

    group_id: str
    workers: tuple[str, ...]
    degree: int
    model: str | None = None

    def __post_init__(self) -> None:
        if self.degree < 2 or self.degree != len(self.workers) or len(set(self.workers)) != self.degree:
            raise ValueError(
                f"group {self.group_id!r}: degree {self.degree} needs that many distinct workers (>= 2), "
                f"got {self.workers}"
            )

    @property
    def leader(self) -> str:
        """The worker whose engine leads the group's steps."""
        return self.workers[0]


@dataclass(frozen=True, slots=True)
class ParallelStepModel:
    """Time of a chunk step at parallel degree ``k`` from the degree-1 time (sequence parallel).

    ``step(b, k) = step(b, 1) / (k * efficiency) + comm(b, k)`` for ``k > 1``, with
    ``comm(b, k) = comm_latency_s + b * comm_bytes_per_session * (k - 1) / k**2 / link_bytes_per_s``:
    in an all-to-all each rank holds ``1/k`` of a tensor and sends ``(k - 1)/k`` of that.
    ``comm_bytes_per_session`` is what the collectives of one chunk step move for one
    session at full size (``kernels.presets.ModelPreset.alltoall_bytes_per_chunk``);
    ``comm_latency_s`` the fixed cost of those collectives (count x per-call latency).
    ``efficiency`` is the share of linear speed-up the split compute keeps (<= 1).

    Examples
    --------
    >>> m = ParallelStepModel(efficiency=1.0)
    >>> base = BatchLatencyModel((1,), (2.0,))
    >>> m.predict(base, 1, 4)
    0.5
    """

    efficiency: float = 1.0
    comm_latency_s: float = 0.0
    comm_bytes_per_session: float = 0.0
    link_bytes_per_s: float = 450e9
    #: A group's step takes ``max_batch * degree`` sessions (True) or the leader engine's
    #: ``max_batch`` (False, the default: one engine leads with its own cap).
    batch_scales_with_degree: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency!r}")
        if self.comm_latency_s < 0 or self.comm_bytes_per_session < 0 or self.link_bytes_per_s <= 0:
            raise ValueError("comm_latency_s and comm_bytes_per_session must be >= 0 and link_bytes_per_s > 0")

    def group_max_batch(self, max_batch: int, degree: int) -> int:
        """Sessions a step of a group of ``degree`` takes, from the per-worker ``max_batch``."""
        return max_batch * degree if self.batch_scales_with_degree else max_batch

    def comm_s(self, batch_size: int, degree: int) -> float:
        """Seconds of communication in one step of ``batch_size`` sessions at ``degree``."""
        if degree <= 1 or batch_size <= 0:
            return 0.0
        per_rank = self.comm_bytes_per_session * (degree - 1) / degree**2
        return self.comm_latency_s + batch_size * per_rank / self.link_bytes_per_s

    def predict(self, base: BatchLatencyModel, batch_size: int, degree: int, context_frames: float = 0.0) -> float:
        """Seconds of one step of ``batch_size`` sessions at ``degree`` (``base``: degree 1)."""
        t1 = base.predict(batch_size, context_frames)
        if degree <= 1:
            return t1
        return t1 / (degree * self.efficiency) + self.comm_s(batch_size, degree)

    def curve(self, base: BatchLatencyModel, degree: int, max_batch: int) -> BatchLatencyModel:
        """``base`` at ``degree`` tabulated for batches ``1..max_batch`` (context term scaled too)."""
        if degree <= 1:
            return base
        sizes = tuple(range(1, max(max_batch, 2) + 1))
        return BatchLatencyModel(
            sizes, tuple(self.predict(base, b, degree) for b in sizes),
            context_slope_s=base.context_slope_s / (degree * self.efficiency),
        )


class BurstTally:
    """The bursts of a run so far, for :attr:`Snapshot.bursts_ended` and :attr:`Snapshot.burst_exposure_s`.

    The simulator and the live registry call :meth:`begin` when a session starts a burst
    and :meth:`end` (with the time it began) when it goes idle or closes. The exposure
    counts bursts still going on up to ``now`` too, so that their ratio is the
    maximum-likelihood mean of exponential bursts observed up to ``now`` (the bursts
    that ended by ``now`` alone are biased short: the long ones have not ended yet).

    >>> t = BurstTally(); t.begin(0.0); t.begin(2.0); t.end(0.0, 4.0)
    >>> t.ended, t.exposure_s(6.0)  # 4 s ended, 4 s going on
    (1, 8.0)
    """

    __slots__ = ("ended", "ended_s", "_open", "_open_from_s")

    def __init__(self) -> None:
        self.ended = 0
        self.ended_s = 0.0
        self._open = 0
        self._open_from_s = 0.0  # the sum of the open bursts' start times

    def begin(self, now_s: float) -> None:
        """A burst began at ``now_s``."""
        self._open += 1
        self._open_from_s += now_s

    def end(self, began_s: float, now_s: float) -> None:
        """The burst that began at ``began_s`` ended at ``now_s``."""
        self._open -= 1
        self._open_from_s -= began_s
        self.ended += 1
        self.ended_s += now_s - began_s

    def exposure_s(self, now_s: float) -> float:
        """Session-seconds in bursts up to ``now_s``, ended or not."""
        return self.ended_s + self._open * now_s - self._open_from_s


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
    worker_startup_s: float = DEFAULT_WORKER_STARTUP_S
    #: Parallel groups of degree > 1 (a worker in none serves alone).
    groups: tuple[ParallelGroup, ...] = ()
    #: How a step's time changes with the degree (None: no parallel groups here).
    parallel: ParallelStepModel | None = None
    #: Chunks made so far, and how many of them the quality valve degraded (what its
    #: budget is spent against: ``control.valve-budget``).
    chunks_made: int = 0
    degraded_chunks: int = 0
    #: Bursts (a session's spell of asking for chunks, from its open or its first
    #: request after an idle spell to its next idle spell or its close) that ended so
    #: far, and the session-seconds spent in bursts so far, ended or not
    #: (:class:`BurstTally`): their ratio estimates the mean burst length.
    bursts_ended: int = 0
    burst_exposure_s: float = 0.0

    @property
    def mean_burst_s(self) -> float | None:
        """Mean length of a burst (exponential, right-censored estimate); None before one ended."""
        return self.burst_exposure_s / self.bursts_ended if self.bursts_ended > 0 else None

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


@dataclass(frozen=True, slots=True)
class FormGroup(Action):
    """Merge these degree-1 workers into one group of degree ``len(workers)``; ``workers[0]`` leads.

    Their sessions go on streaming on the group (their state is re-sharded at a chunk boundary).
    """

    workers: tuple[str, ...]

    @property
    def degree(self) -> int:
        return len(self.workers)


@dataclass(frozen=True, slots=True)
class SplitGroup(Action):
    """Split the group of exactly these workers back to degree 1; its sessions stay on ``workers[0]``."""

    workers: tuple[str, ...]


# ---------------------------------------------------------------- policy protocol


@runtime_checkable
class Policy(Protocol):
    """A pure decision function with explicit state.

    ``decide`` must not read clocks, random sources other than a seeded generator kept
    in ``state``, or anything but its arguments. It returns the actions and the next
    state (``initial_state()`` gives the first one).
    """

    kind: str  # "placement", "autoscaling", "offload" or "parallelism"
    name: str

    def initial_state(self) -> Any: ...

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]: ...
