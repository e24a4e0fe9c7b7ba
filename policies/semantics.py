"""What an action means, written once: the rules an executor checks, the order it applies
them in, and the record it keeps of each decision.

The live control loop (:class:`framework.controller.ControlLoop`) and the simulator
(:mod:`experiments.sim.actions`) both apply the policies' actions. Each describes its
current state through the small :class:`Facts` interface; :func:`check` then accepts an
action or raises :class:`ActionRefused` with a :class:`Refusal` category and a reason,
and the executor keeps only its mechanism (start an actor, copy bytes in virtual time).
An executor may still refuse what only it can know (``cluster-full`` in the simulator,
``no-autoscaler`` live) by raising the same error.

Like the policies, this module is pure: no Dask, no torch, no clock.

Examples
--------
>>> from policies.types import Migrate, SessionStatus, WorkerStatus
>>> class Two:
...     min_workers = 1
...     def session(self, sid):
...         return SessionFacts(SessionStatus.ACTIVE, worker="a", state_bytes=10)
...     def worker(self, address):
...         return {"a": WorkerFacts(WorkerStatus.RUNNING), "b": WorkerFacts(WorkerStatus.DRAINING)}.get(address)
...     def serving(self):
...         return 1
...     def tiers(self):
...         return TIERS
>>> try:
...     check(Migrate("s", "a", "b"), Two())
... except ActionRefused as exc:
...     print(exc.refusal.value, "|", exc.reason)
worker-draining | worker 'b' is draining
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from policies.types import (
    TIERS,
    Action,
    FormGroup,
    Migrate,
    Offload,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
    SessionStatus,
    SplitGroup,
    WorkerStatus,
)

__all__ = [
    "DECISION_COLUMNS", "ActionRefused", "Decision", "Facts", "Refusal", "SessionFacts", "WorkerFacts",
    "apply_order", "check", "clip_scale", "decided", "subject",
]

_PENDING, _ACTIVE, _IDLE, _SUSPENDED = SessionStatus.PENDING, SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.SUSPENDED
_RUNNING, _DRAINING = WorkerStatus.RUNNING, WorkerStatus.DRAINING


class Refusal(enum.Enum):
    """Why an action was not applied; the value is the key the refusal counters use."""

    UNKNOWN_ACTION = "unknown-action"
    IN_FLIGHT = "in-flight"  # the executor is still applying an earlier action to the session
    DRAINED_BY_EXECUTOR = "drained-by-runtime"  # a drain move off a worker the executor empties itself
    SESSION_NOT_PLACEABLE = "session-not-placeable"
    NO_SUCH_WORKER = "no-such-worker"
    WORKER_STARTING = "worker-starting"
    WORKER_DRAINING = "worker-draining"
    NO_MEMORY = "no-memory"
    MIGRATE_BAD_SOURCE = "migrate-bad-source"
    COPY_IN_PROGRESS = "copy-in-progress"
    MIGRATE_SAME_WORKER = "migrate-same-worker"
    OFFLOAD_NOT_IDLE = "offload-not-idle"
    OFFLOAD_NO_TIER = "offload-no-tier"
    REJECT_NOT_PENDING = "reject-not-pending"
    REJECT_BY_EXECUTOR = "reject-by-runtime"  # live admission refuses or queues at open instead
    SCALE_OUT_OF_BOUNDS = "scale-out-of-bounds"
    NO_AUTOSCALER = "no-autoscaler"
    CLUSTER_FULL = "cluster-full"
    SCALE_DOWN_BUSY = "scale-down-busy"
    RETIRE_BAD_WORKER = "retire-bad-worker"
    RETIRE_BELOW_MINIMUM = "retire-below-minimum"
    GROUP_MEMBER = "group-member"  # a follower of a parallel group takes no session and is not retired alone
    GROUP_BAD_WORKERS = "group-bad-workers"  # a FormGroup of unknown, busy, repeated or too few workers
    GROUP_NOT_FOUND = "group-not-found"  # a SplitGroup naming workers that are not one group


class ActionRefused(Exception):
    """An action that will not be applied: ``refusal`` (the category) and ``reason`` (for people)."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(f"{refusal.value}: {reason}")
        self.refusal, self.reason = refusal, reason


class Decision(NamedTuple):
    """One applied or refused action: a row of the decision log, live and simulated alike.

    A named tuple rather than a dataclass: the simulator keeps hundreds of thousands of
    them and builds its decision table straight from the rows.
    """

    time_s: float
    action: str
    session_id: str
    worker: str
    accepted: bool
    reason: str


DECISION_COLUMNS: tuple[str, ...] = Decision._fields


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the rules need to know of one session, as the executor sees it now.

    Parameters
    ----------
    status
        Its lifecycle status.
    worker
        The worker whose device holds its state (None when it has none).
    state_bytes
        Device memory its state takes.
    opened
        Its ``open`` happened (the simulator registers sessions ahead of their trace event).
    offloaded
        Its state is on the host or on disk, so ``Resume`` can bring it back.
    copying
        Its state is being copied (a migration or a resume under way).
    computing
        A chunk of it is in flight.
    in_flight
        What the executor is still doing to it (``"a Migrate"``, ``"its admission"``), if anything.
    """

    status: SessionStatus
    worker: str | None = None
    state_bytes: float = 0
    opened: bool = True
    offloaded: bool = False
    copying: bool = False
    computing: bool = False
    in_flight: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """What the rules need to know of one worker.

    ``memory_bytes`` None: the executor does not track device memory (no memory check).
    ``drains_itself``: the executor is emptying the worker on its own (live: a ``Retire``
    it accepted), so the placement policy's drain moves off it are refused.
    """

    status: WorkerStatus
    used_bytes: float = 0
    memory_bytes: float | None = None
    drains_itself: bool = False
    #: The workers of its parallel group, leader first (empty: it serves alone).
    group: tuple[str, ...] = ()


class Facts(Protocol):
    """The executor's current state, as the rules read it."""

    min_workers: int

    def session(self, session_id: str) -> SessionFacts | None:
        """The session's facts, None when the executor does not know it."""

    def worker(self, address: str) -> WorkerFacts | None:
        """The worker's facts, None when it is not (or no longer) in the cluster."""

    def serving(self) -> int:
        """Workers that are not draining (running or starting)."""

    def tiers(self) -> Collection[str]:
        """Offload tiers the executor can suspend a session to."""


# ---------------------------------------------------------------- order and records


def apply_order(actions: Iterable[Action]) -> list[Action]:
    """The order of application: as decided, except ``ScaleTo`` last.

    The ``Retire`` actions that come with a scale-in are then applied first, so the target
    only starts workers or releases what the retirements did not cover.
    """
    actions = list(actions)
    return [a for a in actions if not isinstance(a, ScaleTo)] + [a for a in actions if isinstance(a, ScaleTo)]


def subject(action: Action) -> tuple[str, str]:
    """``(session_id, worker)`` columns of the action's decision row."""
    if isinstance(action, (Place, Resume)):
        return action.session_id, action.worker
    if isinstance(action, Migrate):
        return action.session_id, action.target
    if isinstance(action, (Offload, Reject)):
        return action.session_id, ""
    if isinstance(action, Retire):
        return "", action.worker
    if isinstance(action, ScaleTo):
        return "", str(action.n)
    if isinstance(action, (FormGroup, SplitGroup)):
        return "", "+".join(action.workers)
    return "", ""


def decided(now: float, action: Action, accepted: bool, reason: str | None = None,
            worker: str | None = None) -> Decision:
    """The decision row of ``action``; ``reason`` defaults to its cause, ``worker`` to :func:`subject`'s."""
    sid, where = subject(action)
    return Decision(now, type(action).__name__, sid, where if worker is None else worker, accepted,
                    action.cause if reason is None else reason)


# ---------------------------------------------------------------- the rules


def clip_scale(action: ScaleTo, minimum: int, maximum: int) -> tuple[int, ActionRefused | None]:
    """The target ``ScaleTo`` sets within the bounds, and the refusal to log when it was clipped.

    A clipped target still applies (the policy asked for more, or fewer, than allowed).
    """
    n = min(max(action.n, minimum), maximum)
    if n == action.n:
        return n, None
    return n, ActionRefused(Refusal.SCALE_OUT_OF_BOUNDS, f"target {action.n} outside [{minimum}, {maximum}]; clipped to {n}")


def check(action: Action, facts: Facts) -> None:
    """Raise :class:`ActionRefused` when ``action`` cannot be applied to ``facts``; else return.

    ``ScaleTo`` passes (see :func:`clip_scale`). The rules are listed in the order they are
    checked, first refusal wins:

    - session actions: the executor is not still applying an earlier one to the session;
      a drain move (``drain=True``) does not start from a worker the executor drains itself;
    - ``Place``: the session is open and pending (``Resume``: pending or suspended, with
      offloaded state); the worker is running; its free memory takes the state;
    - ``Migrate``: the session is active or idle on ``source``; not being copied;
      ``target`` differs from ``source``, is running, and has the memory;
    - ``Offload``: the session is idle with no chunk or copy in flight; the tier is available;
    - ``Reject``: the session is pending;
    - ``Retire``: the worker exists, is not draining already and is in no group; the
      workers left serving stay at or above the minimum;
    - ``FormGroup``: at least two distinct running workers, none in a group;
      ``SplitGroup``: the workers are exactly one group, leader first;
    - a session never goes to a follower of a group (only its leader takes sessions).
    """
    if isinstance(action, (Place, Resume, Migrate, Offload, Reject)):
        s = facts.session(action.session_id)
        if s is not None and s.in_flight:
            raise ActionRefused(Refusal.IN_FLIGHT, f"session {action.session_id!r} has {s.in_flight} in flight")
        if isinstance(action, Place):
            _check_place(action.session_id, action.worker, s, facts, resume=False)
        elif isinstance(action, Resume):
            _check_place(action.session_id, action.worker, s, facts, resume=True)
        elif isinstance(action, Migrate):
            _check_migrate(action, s, facts)
        elif isinstance(action, Offload):
            _check_offload(action, s, facts)
        elif s is None or s.status is not _PENDING:
            raise ActionRefused(Refusal.REJECT_NOT_PENDING, f"session is {_status(s)}, not pending")
    elif isinstance(action, Retire):
        _check_retire(action, facts)
    elif isinstance(action, FormGroup):
        _check_form(action, facts)
    elif isinstance(action, SplitGroup):
        _check_split(action, facts)
    elif not isinstance(action, ScaleTo):
        raise ActionRefused(Refusal.UNKNOWN_ACTION, f"unknown action type {type(action).__name__}")


def _status(s: SessionFacts | None) -> str:
    return "unknown" if s is None else s.status.value


def _check_drain(action: Migrate | Offload, s: SessionFacts | None, facts: Facts) -> None:
    if action.drain and s is not None and s.worker is not None:
        w = facts.worker(s.worker)
        if w is not None and w.drains_itself:
            raise ActionRefused(Refusal.DRAINED_BY_EXECUTOR, f"worker {s.worker} is being drained by the runtime")


def _usable(address: str, facts: Facts) -> WorkerFacts:
    w = facts.worker(address)
    if w is None:
        raise ActionRefused(Refusal.NO_SUCH_WORKER, f"worker {address!r} does not exist")
    if w.status is not _RUNNING:
        raise ActionRefused(Refusal(f"worker-{w.status.value}"), f"worker {address!r} is {w.status.value}")
    if w.group and w.group[0] != address:
        raise ActionRefused(Refusal.GROUP_MEMBER, f"worker {address!r} follows group {w.group}; place on {w.group[0]!r}")
    return w


def _check_memory(address: str, w: WorkerFacts, need: float) -> None:
    if w.memory_bytes is not None and w.used_bytes + need > w.memory_bytes:
        raise ActionRefused(
            Refusal.NO_MEMORY, f"worker {address!r} has {w.memory_bytes - w.used_bytes} bytes free, session needs {need}"
        )


def _check_place(sid: str, address: str, s: SessionFacts | None, facts: Facts, *, resume: bool) -> None:
    allowed = (_PENDING, _SUSPENDED) if resume else (_PENDING,)
    if s is None or s.status not in allowed or not s.opened:
        raise ActionRefused(Refusal.SESSION_NOT_PLACEABLE, f"session {sid!r} is {_status(s)}")
    if resume and not s.offloaded:
        raise ActionRefused(Refusal.SESSION_NOT_PLACEABLE, f"session {sid!r} has no offloaded state")
    _check_memory(address, _usable(address, facts), s.state_bytes)


def _check_migrate(action: Migrate, s: SessionFacts | None, facts: Facts) -> None:
    _check_drain(action, s, facts)
    sid = action.session_id
    if s is None or s.status not in (_ACTIVE, _IDLE) or s.worker != action.source:
        where = None if s is None else s.worker
        raise ActionRefused(Refusal.MIGRATE_BAD_SOURCE,
                            f"session {sid!r} is {_status(s)} on {where}, not on {action.source!r}")
    if s.copying:
        raise ActionRefused(Refusal.COPY_IN_PROGRESS, f"session {sid!r} is still being copied")
    if action.target == action.source:
        raise ActionRefused(Refusal.MIGRATE_SAME_WORKER, "source and target are the same worker")
    _check_memory(action.target, _usable(action.target, facts), s.state_bytes)


def _check_offload(action: Offload, s: SessionFacts | None, facts: Facts) -> None:
    _check_drain(action, s, facts)
    sid = action.session_id
    if s is None or s.status is not _IDLE or s.computing or s.copying:
        why = "a chunk or a copy is in flight" if s is not None and s.status is _IDLE else f"it is {_status(s)}, not idle"
        raise ActionRefused(Refusal.OFFLOAD_NOT_IDLE, f"cannot offload session {sid!r}: {why}")
    tiers = facts.tiers()
    if action.tier not in tiers:
        raise ActionRefused(Refusal.OFFLOAD_NO_TIER,
                            f"cannot offload session {sid!r} to {action.tier!r}: the tiers here are {sorted(tiers)} "
                            f"(of {TIERS}; disk needs a checkpoint store)")


def _check_retire(action: Retire, facts: Facts) -> None:
    w = facts.worker(action.worker)
    if w is None or w.status is _DRAINING:
        why = "does not exist" if w is None else "is already draining"
        raise ActionRefused(Refusal.RETIRE_BAD_WORKER, f"worker {action.worker!r} {why}")
    if w.group:
        raise ActionRefused(Refusal.GROUP_MEMBER, f"worker {action.worker!r} is in group {w.group}; split it first")
    if facts.serving() - 1 < facts.min_workers:
        raise ActionRefused(Refusal.RETIRE_BELOW_MINIMUM, f"retiring would go below min_workers={facts.min_workers}")


def _check_form(action: FormGroup, facts: Facts) -> None:
    workers = action.workers
    if len(workers) < 2 or len(set(workers)) != len(workers):
        raise ActionRefused(Refusal.GROUP_BAD_WORKERS, f"a group needs >= 2 distinct workers, got {workers}")
    for address in workers:
        w = facts.worker(address)
        if w is None:
            raise ActionRefused(Refusal.GROUP_BAD_WORKERS, f"worker {address!r} does not exist")
        if w.status is not _RUNNING:
            raise ActionRefused(Refusal.GROUP_BAD_WORKERS, f"worker {address!r} is {w.status.value}, not running")
        if w.group:
            raise ActionRefused(Refusal.GROUP_BAD_WORKERS, f"worker {address!r} is in group {w.group} already")


def _check_split(action: SplitGroup, facts: Facts) -> None:
    w = facts.worker(action.workers[0]) if action.workers else None
    if w is None or tuple(w.group) != tuple(action.workers):
        found = None if w is None else w.group
        raise ActionRefused(Refusal.GROUP_NOT_FOUND, f"workers {action.workers} are not one group (leader's group: {found})")
