"""Parallelism policies: which workers serve together as a group of degree ``k``.

Registered under kind ``"parallelism"``: ``fixed`` (every worker in groups of one
degree) and ``adaptive`` (the degree each model needs, chosen from the snapshot).

A group of ``k`` workers (one GPU each) runs one sequence-parallel step for its
sessions: a step of ``b`` sessions takes ``snap.parallel.predict(snap.latency, b, k)``
(:class:`~policies.types.ParallelStepModel`), the group holds ``k`` GPUs of session
state and takes ``group_max_batch`` sessions a step. Three things decide the degree:

- **the deadline**: a model whose batch-1 step misses the SLO at degree 1 needs a group
  (:func:`needed_degree`, the smallest degree that meets it);
- **the load**: among the degrees that meet it, the one that serves the most sessions
  per GPU (:func:`slots`; degree 1 when it meets the deadline, since splitting a step
  over ``k`` GPUs loses ``efficiency`` and pays the all-to-alls);
- **the cost of a transformation**: workers that serve nobody are transformed at once
  (nothing to re-shard); workers whose sessions stream are transformed only when their
  sessions miss the deadline where they are, or when sessions wait for a slot the
  transformation creates and the re-shard pause of each session stays within
  ``max_pause_s``.

The other policies see groups through :func:`unit_view`: one worker per group (the
leader, with the group's memory and batch slots), the followers and every unit of a
lower degree than a session may use with no capacity, so a placement policy that knows
nothing of groups still puts a session that needs degree ``k`` only on a group of
degree ``>= k`` (:class:`policies.combined.Combined` does this).

Examples
--------
>>> from policies.types import BatchLatencyModel, ParallelStepModel, Snapshot, WorkerView
>>> snap = Snapshot(now_s=0.0, workers=tuple(WorkerView(f"w{i}") for i in range(4)), sessions=(),
...                 slo_s=0.75, latency=BatchLatencyModel((1,), (2.0,)),
...                 parallel=ParallelStepModel(efficiency=1.0))
>>> needed_degree(snap)
4
>>> [a.workers for a in Adaptive().decide(snap, None)[0]]
[('w0', 'w1', 'w2', 'w3')]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import lru_cache
from typing import Any

from policies.registry import register
from policies.types import (
    Action,
    BatchLatencyModel,
    FormGroup,
    ParallelGroup,
    ParallelStepModel,
    SessionStatus,
    SessionView,
    Snapshot,
    SplitGroup,
    WorkerStatus,
    WorkerView,
)

_RUNNING = WorkerStatus.RUNNING
_ON_DEVICE = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING)
#: Degrees that divide the heads of both Wan models (wan-1.3b: 12, wan-14b: 40): the
#: uniform fixed degrees of the experiments, and the degrees of a policy not told its
#: model's (``degrees=None``). A group serving one model may take any divisor of *its*
#: heads (:func:`head_degrees`); the live loop and the simulator pass those
#: (``framework.parallelism.model_degrees``: up to ``turboserve.policies.parallelism-max-degree``).
DEGREES: tuple[int, ...] = (1, 2, 4)
_EPS = 1e-9


def head_degrees(num_heads: int, max_degree: int) -> tuple[int, ...]:
    """The degrees a sequence-parallel group of a model with ``num_heads`` attention heads may
    have: every divisor of the heads (Ulysses shards whole heads) up to ``max_degree``.

    >>> head_degrees(40, 8)  # wan-14b
    (1, 2, 4, 5, 8)
    >>> head_degrees(12, 8)  # wan-1.3b
    (1, 2, 3, 4, 6)
    """
    for name, v in (("num_heads", num_heads), ("max_degree", max_degree)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return tuple(k for k in range(1, max_degree + 1) if num_heads % k == 0)


# ---------------------------------------------------------------- capacity at a degree


def _par(snap: Snapshot) -> ParallelStepModel:
    return snap.parallel if snap.parallel is not None else ParallelStepModel()


def step_s(snap: Snapshot, batch_size: int, degree: int, context_frames: float = 0.0) -> float:
    """Predicted step time of ``batch_size`` sessions on a unit of ``degree`` GPUs."""
    return _par(snap).predict(snap.latency, batch_size, degree, context_frames)


def needed_degree(snap: Snapshot, degrees: tuple[int, ...] = DEGREES) -> int | None:
    """The smallest degree whose batch-1 step meets ``snap.slo_s``; None if none does."""
    for k in sorted(degrees):
        if step_s(snap, 1, k) <= snap.slo_s + _EPS:
            return k
    return None


def slots(snap: Snapshot, degree: int, *, max_batch: int, memory_bytes: float, state_bytes: float) -> int:
    """Sessions a unit of ``degree`` GPUs serves within the SLO (0 if not even one).

    The largest batch up to the group's cap (:meth:`ParallelStepModel.group_max_batch` of
    the per-GPU ``max_batch``) whose step meets the SLO and whose states fit in
    ``degree * memory_bytes``.
    """
    return _slots(snap.latency, _par(snap), snap.slo_s, degree, max_batch, memory_bytes, state_bytes)


@lru_cache(maxsize=256)
def _slots(base: BatchLatencyModel, par: ParallelStepModel, slo_s: float, degree: int, max_batch: int,
           memory_bytes: float, state_bytes: float) -> int:
    """:func:`slots` of immutable inputs, memoized (the adaptive policy asks it every tick)."""
    cap = par.group_max_batch(max_batch, degree)
    if state_bytes > 0:
        cap = min(cap, int(degree * memory_bytes // state_bytes))
    best = 0
    for b in range(1, cap + 1):
        if par.predict(base, b, degree) > slo_s + _EPS:
            break
        best = b
    return best


def best_degree(snap: Snapshot, *, max_batch: int, memory_bytes: float, state_bytes: float,
                degrees: tuple[int, ...] = DEGREES) -> int:
    """The degree serving the most sessions per GPU within the SLO; the smallest on ties.

    When no degree meets the SLO the largest one is returned (it misses by the least).
    """
    best, best_rate = max(degrees), 0.0
    for k in sorted(degrees):
        rate = slots(snap, k, max_batch=max_batch, memory_bytes=memory_bytes, state_bytes=state_bytes) / k
        if rate > best_rate + _EPS:
            best, best_rate = k, rate
    return best


def degree_of(snap: Snapshot) -> dict[str, int]:
    """Degree of every worker in the snapshot (1 when in no group)."""
    out = {w.address: 1 for w in snap.workers}
    for g in snap.groups:
        for a in g.workers:
            out[a] = g.degree
    return out


def typical_state_bytes(snap: Snapshot, new_session_bytes: int | None = None) -> int:
    """The state size a session of the snapshot takes (the largest known; else ``new_session_bytes``)."""
    known = max((s.state_bytes for s in snap.sessions), default=0)
    return known if known > 0 else int(new_session_bytes or 0)


# ---------------------------------------------------------------- what the other policies see


def unit_view(snap: Snapshot, min_degree: int = 1, busy: frozenset[str] = frozenset()) -> Snapshot:
    """``snap`` as the placement, offload and autoscaling policies see it: one unit per group.

    A group's leader stands for the group: the memory of all its workers and the group's
    batch cap. Followers, workers in ``busy`` (being transformed by this decision) and
    units of a degree below ``min_degree`` keep their place in ``workers`` (the
    autoscaler still counts every GPU) but have no memory and no batch slot, so nothing
    is placed, resumed or migrated onto them. ``latency`` becomes the step-time curve of
    the most common degree among the units that take sessions (one curve per snapshot:
    a unit of another degree is predicted at that one).
    """
    if not snap.groups and min_degree <= 1 and not busy:
        return snap
    key = (snap.workers, snap.groups, _par(snap), snap.latency, min_degree, frozenset(busy))
    last = _LAST_UNITS[0]  # one read: another thread may replace it meanwhile
    if last is not None and all(a is b for a, b in zip(last[0][:4], key[:4])) and last[0][4:] == key[4:]:
        workers, latency = last[1]  # the same objects as the last call: no hashing of every worker view
    else:
        workers, latency = _units(key[0], key[1], min_degree, key[5], key[2], key[3])
        _LAST_UNITS[0] = (key, (workers, latency))
    return replace(snap, workers=workers, latency=latency)


#: The last :func:`unit_view` inputs and result (a simulator's snapshots reuse the same
#: worker and group tuples from tick to tick, so an identity check answers most calls).
_LAST_UNITS: list[Any] = [None]


@lru_cache(maxsize=32)
def _units(snap_workers: tuple[WorkerView, ...], groups: tuple[ParallelGroup, ...], min_degree: int,
           busy: frozenset[str], par: ParallelStepModel,
           base: BatchLatencyModel) -> tuple[tuple[WorkerView, ...], BatchLatencyModel]:
    """The unit view's workers and latency curve: a function of immutable inputs, memoized.

    A control loop asks for the same view tick after tick (its workers and groups change
    only when a worker starts, leaves or is regrouped); at 64 workers rebuilding it took
    most of a simulated tick.
    """
    leaders = {g.leader: g for g in groups}
    followers = {a for g in groups for a in g.workers[1:]}
    members = {a for g in groups for a in g.workers}
    workers: list[WorkerView] = []
    serving: Counter[int] = Counter()
    for w in snap_workers:
        g = leaders.get(w.address)
        degree = g.degree if g is not None else 1
        shut = (
            w.address in followers
            or degree < min_degree
            or w.address in busy
            or (g is not None and any(a in busy for a in g.workers))
            or (g is None and w.address in members)
        )
        if shut:
            workers.append(replace(w, memory_bytes=0, max_batch=0))
            continue
        if g is not None:
            mem = sum(v.memory_bytes for v in snap_workers if v.address in g.workers)
            workers.append(replace(w, memory_bytes=mem, max_batch=par.group_max_batch(w.max_batch, degree)))
        else:
            workers.append(w)
        if w.status is _RUNNING:
            serving[degree] += 1
    degree = max(serving, key=lambda k: (serving[k], -k)) if serving else max(min_degree, 1)
    cap = max((w.max_batch for w in workers), default=1)
    latency = par.curve(base, degree, cap) if degree > 1 else base
    return tuple(workers), latency


# ---------------------------------------------------------------- the policies


class _ParallelismPolicy:
    """Shared parts: the degree a session may run at, forming groups out of free workers."""

    kind = "parallelism"
    name = ""

    def initial_state(self) -> Any:
        return None

    def min_degree(self, snap: Snapshot) -> int:
        """The smallest degree a session of the snapshot may be placed on."""
        raise NotImplementedError

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]:
        raise NotImplementedError


def _sessions_by_worker(snap: Snapshot) -> dict[str, list[SessionView]]:
    out: dict[str, list[SessionView]] = {}
    for s in snap.sessions:
        if s.worker is not None and s.status in _ON_DEVICE:
            out.setdefault(s.worker, []).append(s)
    return out


def _singles(snap: Snapshot) -> list[WorkerView]:
    """RUNNING workers in no group, in snapshot order."""
    grouped = {a for g in snap.groups for a in g.workers}
    return [w for w in snap.workers if w.status is _RUNNING and w.address not in grouped]


def _form(candidates: list[WorkerView], degree: int, cause: str) -> list[Action]:
    """Groups of ``degree`` out of ``candidates``, in order (a remainder stays alone)."""
    out: list[Action] = []
    for i in range(0, len(candidates) - degree + 1, degree):
        out.append(FormGroup(tuple(w.address for w in candidates[i:i + degree]), cause=cause))
    return out


@register("parallelism", "fixed")
class FixedDegree(_ParallelismPolicy):
    """Every worker in groups of ``degree`` (degree 1: no groups); a group of another degree
    is split once it serves nobody.

    ``degrees``: the degrees the served model allows (:func:`head_degrees`); None: any
    positive degree (the caller vouches for it).
    """

    name = "fixed"

    def __init__(self, *, degree: int = 1, degrees: tuple[int, ...] | None = None) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"fixed parallelism needs a positive integer degree, got {degree!r}")
        if degrees is not None and degree not in degrees:
            raise ValueError(f"fixed parallelism: degree {degree} is not one the model allows {tuple(degrees)} "
                             "(the divisors of its heads up to turboserve.policies.parallelism-max-degree)")
        self.degree = degree

    def __repr__(self) -> str:
        return f"FixedDegree(degree={self.degree})"

    def min_degree(self, snap: Snapshot) -> int:
        return self.degree

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]:
        used = _sessions_by_worker(snap)
        actions: list[Action] = [
            SplitGroup(g.workers, cause=f"fixed degree {self.degree}: group of {g.degree} is empty")
            for g in snap.groups if g.degree != self.degree and not used.get(g.leader)
        ]
        if self.degree > 1:
            free = [w for w in _singles(snap) if not used.get(w.address)]
            actions += _form(free, self.degree, f"fixed degree {self.degree}")
        return actions, state


@register("parallelism", "adaptive")
class Adaptive(_ParallelismPolicy):
    """The degree the snapshot's model needs: by deadline, by load, by transformation cost.

    Parameters
    ----------
    degrees
        Degrees a group may have: the served model's, every divisor of its heads up to a
        maximum (:func:`head_degrees`; the live loop and the simulator pass
        ``framework.parallelism.model_degrees(model)``, up to
        ``turboserve.policies.parallelism-max-degree``, 8: wan-14b 1, 2, 4, 5, 8; wan-1.3b
        1, 2, 3, 4, 6). None: :data:`DEGREES` (1, 2, 4, which divide both Wan models' heads).
        The live framework refuses a group whose degree is not the model's
        (:func:`framework.parallelism.plan_groups`).
    max_pause_s
        Longest re-shard pause a streaming session may be given to create slots for
        waiting sessions (default: one SLO).
    max_batch, memory_bytes
        Per-GPU batch cap and session memory when the snapshot has no worker to read them from.
    new_session_bytes
        State of a new session when the snapshot shows none.

    The target degree is :func:`best_degree` of the snapshot (its model's latency and
    SLO). Free degree-1 workers are formed into groups of the target degree; a group of
    another degree is split once it serves nobody; a degree-1 worker whose sessions miss
    the deadline is grouped with free workers (its sessions are re-sharded), and so is
    one whose sessions fit the larger group when pending sessions wait and the pause
    of its sessions is at most ``max_pause_s``.
    """

    name = "adaptive"

    def __init__(self, *, degrees: tuple[int, ...] | None = None, max_pause_s: float | None = None,
                 max_batch: int = 8, memory_bytes: float = 69.4e9, new_session_bytes: int | None = None) -> None:
        degrees = tuple(sorted(set(int(k) for k in (DEGREES if degrees is None else degrees))))
        if not degrees or degrees[0] != 1:
            raise ValueError(f"degrees must be positive and include 1, got {degrees!r}")
        if max_pause_s is not None and max_pause_s < 0:
            raise ValueError(f"max_pause_s must be >= 0 seconds or None, got {max_pause_s!r}")
        self.degrees = degrees
        self.max_pause_s = max_pause_s
        self.max_batch, self.memory_bytes, self.new_session_bytes = max_batch, memory_bytes, new_session_bytes

    def __repr__(self) -> str:
        return f"Adaptive(degrees={self.degrees}, max_pause_s={self.max_pause_s})"

    def _shape(self, snap: Snapshot) -> tuple[int, float, int]:
        ref = next((w for w in snap.workers if w.status is _RUNNING), None)
        max_batch = ref.max_batch if ref is not None else self.max_batch
        memory = ref.memory_bytes if ref is not None else self.memory_bytes
        return max_batch, memory, typical_state_bytes(snap, self.new_session_bytes)

    def target(self, snap: Snapshot) -> int:
        """The degree the snapshot's sessions are best served at, among those its running
        workers can form (a degree above their number would never be formed)."""
        max_batch, memory, nbytes = self._shape(snap)
        running = sum(1 for w in snap.workers if w.status is _RUNNING)
        degrees = tuple(k for k in self.degrees if k <= running) or self.degrees[:1]
        return best_degree(snap, max_batch=max_batch, memory_bytes=memory, state_bytes=nbytes, degrees=degrees)

    def min_degree(self, snap: Snapshot) -> int:
        need = needed_degree(snap, self.degrees)
        return need if need is not None else max(self.degrees)

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]:
        target = self.target(snap)
        used = _sessions_by_worker(snap)
        actions: list[Action] = [
            SplitGroup(g.workers, cause=f"adaptive: target degree {target}, group of {g.degree} is empty")
            for g in snap.groups if g.degree != target and not used.get(g.leader)
        ]
        if target == 1:
            return actions, state
        singles = _singles(snap)
        free = [w for w in singles if not used.get(w.address)]
        busy = [w for w in singles if used.get(w.address)]
        waiting = any(s.status is SessionStatus.PENDING for s in snap.sessions)
        limit = snap.slo_s if self.max_pause_s is None else self.max_pause_s
        # A busy worker leads a group of free ones (its sessions are re-sharded and stay
        # on it) when they miss the deadline where they are, or when sessions wait for
        # slots and the re-shard pause is short enough.
        late = step_s(snap, 1, 1) > snap.slo_s + _EPS
        if late or (waiting and self._pause_s(snap, target) <= limit):
            why = "deadline missed at degree 1" if late else "sessions wait for slots"
            for w in busy:
                if len(free) < target - 1:
                    break
                members = (w, *free[: target - 1])
                free = free[target - 1:]
                actions.append(FormGroup(tuple(m.address for m in members),
                                         cause=f"adaptive: re-shard into degree {target} ({why})"))
        actions += _form(free, target, f"adaptive: degree {target} for the deadline and the load")
        return actions, state

    def _pause_s(self, snap: Snapshot, degree: int) -> float:
        """Re-shard pause of one session joining a group of ``degree`` (its state bytes over the link)."""
        par = _par(snap)
        nbytes = typical_state_bytes(snap, self.new_session_bytes)
        return nbytes * (degree - 1) / degree / par.link_bytes_per_s
