"""Capacity accounting for one decision: what each worker holds and can still take.

Every policy builds one :class:`CapacityLedger` from the snapshot (one pass over the
sessions, O(sessions + workers)) and books its own actions into it as it decides, so
that later actions of the same decision see the memory and batch slots taken by the
earlier ones. (Admissions between the simulator's ticks take theirs from a
:class:`~policies.ledger_cache.LedgerCache`, which counts again only what changed since
the previous one: the same ledger.) The ledger is the single place where the admission rules live:

- memory: the ``state_bytes`` of every on-device session (ACTIVE, IDLE, MIGRATING)
  plus what this decision placed, resumed or migrated in must stay within
  ``WorkerView.memory_bytes``;
- compute: at most ``WorkerView.max_batch`` active sessions (ACTIVE, MIGRATING into
  the worker, placed this decision) share one coalesced step;
- only RUNNING workers take sessions;
- a worker takes only sessions of a model it serves (``WorkerView.serves``: its
  ``models``, None for any).

A session that leaves a worker in this decision (migrated away, offloaded) gives its
batch slot back at once but keeps its memory booked on the source until the copy has
completed (a later decision sees it gone), so a decision never over-commits a device
while a transfer is in flight.

Examples
--------
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> snap = Snapshot(now_s=0.0, workers=(WorkerView("w1", memory_bytes=10, max_batch=2),),
...                 sessions=(SessionView("a", SessionStatus.ACTIVE, "w1", state_bytes=4),))
>>> ledger = CapacityLedger(snap)
>>> load = ledger.loads["w1"]
>>> load.n_active, load.mem_used, load.fits(6, active=True), load.fits(7, active=False)
(1, 4, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Callable, Iterable

from policies.types import SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView

_ACTIVE = SessionStatus.ACTIVE
_IDLE = SessionStatus.IDLE
_MIGRATING = SessionStatus.MIGRATING
_PENDING = SessionStatus.PENDING
_SUSPENDED = SessionStatus.SUSPENDED
_RUNNING = WorkerStatus.RUNNING
_bytes_of = attrgetter("state_bytes")
_model_of = attrgetter("model")


@dataclass(slots=True, eq=False, init=False)
class WorkerLoad:
    """Mutable per-decision load of one worker (compute slots and device memory).

    ``version`` increases on every change, so heaps of loads can drop stale entries.
    ``address`` is the worker's address (``view.address``, kept as a plain attribute:
    policies read it in their inner loops).
    """

    view: WorkerView
    n_active: int = 0  # ACTIVE + MIGRATING into it + placed/migrated in this decision
    ctx_sum: float = 0.0  # sum of context_frames of those active sessions
    mem_used: int = 0  # bytes of on-device sessions (+ booked by this decision)
    n_sessions: int = 0  # on-device sessions, for "fewest sessions first" choices
    # The snapshot's ACTIVE sessions here; those moved away in this decision stay
    # listed but are in ``CapacityLedger.acted``, which every reader skips.
    active: list[SessionView] = field(default_factory=list)
    idle: list[SessionView] = field(default_factory=list)
    version: int = 0
    address: str = field(default="", repr=False)

    # Written out (not generated) because one is built per worker per decision.
    def __init__(
        self,
        view: WorkerView,
        n_active: int = 0,
        ctx_sum: float = 0.0,
        mem_used: int = 0,
        n_sessions: int = 0,
        active: list[SessionView] | None = None,
        idle: list[SessionView] | None = None,
        version: int = 0,
    ) -> None:
        self.view = view
        self.address = view.address
        self.n_active = n_active
        self.ctx_sum = ctx_sum
        self.mem_used = mem_used
        self.n_sessions = n_sessions
        self.active = [] if active is None else active
        self.idle = [] if idle is None else idle
        self.version = version

    @property
    def running(self) -> bool:
        """True when the worker may receive sessions."""
        return self.view.status is _RUNNING

    @property
    def free_bytes(self) -> int:
        """Device memory not booked by any session."""
        return self.view.memory_bytes - self.mem_used

    def fits(self, nbytes: int, *, active: bool, memory_share: float = 1.0, model: str | None = None) -> bool:
        """Whether a session of ``nbytes`` (active or not, of ``model``) may still go here.

        ``memory_share`` < 1 keeps that share of the device as the ceiling instead of
        all of it (the offload policy resumes only below its high-water mark).
        ``model`` None: any worker's pool will do (the check is skipped).
        """
        view = self.view
        limit = view.memory_bytes if memory_share >= 1.0 else memory_share * view.memory_bytes
        if view.status is not _RUNNING or self.mem_used + nbytes > limit:
            return False
        if model is not None and view.models is not None and model not in view.models:
            return False
        return not active or self.n_active < view.max_batch


class CapacityLedger:
    """The load of every worker in ``snap``, updated by the actions of one decision.

    Parameters
    ----------
    snap
        The cluster snapshot.
    new_session_bytes
        Device memory to reserve for a new session (a pending one with
        ``state_bytes == 0``, whose state does not exist yet). ``None``: the largest
        ``state_bytes`` among the snapshot's sessions of the same model (0 if none).

    Notes
    -----
    A MIGRATING session is booked on its ``worker``, which is the migration target.
    Sessions on a worker that is not in the snapshot are ignored (never acted on).
    Several policies may decide on one ledger in turn (:class:`policies.combined.Combined`);
    ``acted`` holds the sessions already named by an action, which the next ones skip.
    """

    __slots__ = (
        "snap", "loads", "pending", "_suspended", "acted", "refused", "in_flight_bytes", "_new_bytes", "_model_bytes",
        "_base", "_ctx_slope", "touched", "_over", "recounted", "carry", "generation",
        "_by_status",
    )

    def __init__(self, snap: Snapshot, new_session_bytes: int | None = None) -> None:
        self._start(snap, new_session_bytes)
        loads = {w.address: WorkerLoad(w) for w in snap.workers}
        pending: list[SessionView] = []
        suspended: list[SessionView] = []
        _count(snap.sessions, loads.get, pending, suspended)
        for load in loads.values():
            _count_lists(load)
        self.loads: dict[str, WorkerLoad] = loads
        self.pending = _queue(pending)
        self._suspended: list[SessionView] | None = suspended

    @classmethod
    def of_counted(
        cls, snap: Snapshot, loads: dict[str, WorkerLoad], pending: list[SessionView],
        new_session_bytes: int | None = None, *, step_times: list[float],
        loads_by_status: dict[WorkerStatus, list[WorkerLoad]], over: tuple[float, set[str]],
    ) -> CapacityLedger:
        """The ledger of ``snap`` on ``loads`` already counted from it: no pass over its sessions.

        How a :class:`~policies.ledger_cache.LedgerCache` makes its ledgers. ``pending``: the
        snapshot's pending sessions, in snapshot order. Shared with the cache's other ledgers:
        ``step_times``, the step times by batch size without context of ``snap.latency``
        (``[0.0]`` and filled as asked), and ``loads_by_status``, what :meth:`loads_of` lists
        (for one tuple of worker views). ``over``: ``(limit, addresses)`` of the loads whose
        latency was over ``limit`` as counted, so that :meth:`latency_within` looks again only
        at those and at the loads this decision books into or out of. The suspended sessions
        are listed when first asked for.
        """
        ledger = cls.__new__(cls)
        ledger._start(snap, new_session_bytes)
        ledger.loads = loads
        ledger.pending = _queue(pending)
        ledger._suspended = None
        ledger._base = step_times
        ledger._by_status = loads_by_status
        ledger._over = over
        return ledger

    def _start(self, snap: Snapshot, new_session_bytes: int | None) -> None:
        """What every ledger starts with, however its loads were counted."""
        if new_session_bytes is not None and new_session_bytes < 0:
            raise ValueError(f"new_session_bytes must be >= 0 or None, got {new_session_bytes!r}")
        self.snap = snap
        self._new_bytes = new_session_bytes
        self._model_bytes: dict[str, int] | None = None
        self._base: list[float] = [0.0]  # step time by batch size without context, filled lazily
        self._ctx_slope = snap.latency.context_slope_s
        # Sessions some action of this decision already names: no second action may.
        self.acted: set[str] = set()
        # Pending sessions refused by this decision: still demand for the autoscaler.
        self.refused: set[str] = set()
        # Bytes of migrations booked on both ends (the source keeps its copy until done).
        self.in_flight_bytes = 0
        # Loads this decision booked into or out of (a LedgerCache counts them afresh).
        self.touched: set[WorkerLoad] = set()
        # (limit, addresses of the loads whose latency is over it as counted): from a LedgerCache
        self._over: tuple[float, set[str]] | None = None
        # From a LedgerCache: the loads counted afresh since its previous ledger (None: every
        # load is new to a policy's own per-load structures), a dict kept from one ledger of
        # the cache to the next, where a policy keeps such structures (None: a full ledger),
        # and the ledger's number in the cache (a structure kept for ledger k - 1 may be
        # carried over to ledger k with ``recounted``; 0: a full ledger).
        self.recounted: list[WorkerLoad] | None = None
        self.carry: dict | None = None
        self.generation = 0
        self._by_status: dict[WorkerStatus, list[WorkerLoad]] | None = None

    @property
    def suspended(self) -> list[SessionView]:
        """The snapshot's SUSPENDED sessions, in snapshot order."""
        if self._suspended is None:  # a ledger of a LedgerCache lists them when asked
            self._suspended = [s for s in self.snap.sessions if s.status is _SUSPENDED]
        return self._suspended

    def loads_of(self, status: WorkerStatus) -> list[WorkerLoad]:
        """The loads of the workers of ``status``, in snapshot order (a list not to be changed).

        Listed once per ledger and status (a ledger of a
        :class:`~policies.ledger_cache.LedgerCache`: once per tuple of worker views), so that
        a policy looking for the few draining or starting workers does not scan all of them
        each time.
        """
        if self._by_status is None:
            self._by_status = {}
        found = self._by_status.get(status)
        if found is None:
            found = self._by_status[status] = [ld for ld in self.loads.values() if ld.view.status is status]
        return found

    # ------------------------------------------------------------ sizes and latency

    def reserve(self, session: SessionView) -> int:
        """Device bytes ``session`` will occupy once on a device."""
        if session.state_bytes > 0:
            return session.state_bytes
        if self._new_bytes is not None:
            return self._new_bytes
        if self._model_bytes is None:
            sessions = self.snap.sessions
            models = set(map(_model_of, sessions))
            if len(models) == 1:
                self._model_bytes = {models.pop(): max(map(_bytes_of, sessions))}
            else:
                sizes: dict[str, int] = {}
                for s in sessions:
                    if s.state_bytes > sizes.get(s.model, 0):
                        sizes[s.model] = s.state_bytes
                self._model_bytes = sizes
        return self._model_bytes.get(session.model, 0)

    def step_s(self, n: int, context_sum: float) -> float:
        """Predicted step time of ``n`` active sessions holding ``context_sum`` context frames.

        Equal to ``snap.latency.predict(n, context_sum / n)`` (the context term is
        linear in the total context), with the context-free part cached by ``n``.
        """
        if n <= 0:
            return 0.0
        base = self._base
        while len(base) <= n:
            base.append(self.snap.latency.predict(len(base)))
        return base[n] + self._ctx_slope * context_sum

    def latency(self, load: WorkerLoad) -> float:
        """Predicted per-chunk step time of ``load``'s worker as it stands."""
        n = load.n_active
        if 0 < n < len(self._base):  # cached: what step_s returns, without the call
            return self._base[n] + self._ctx_slope * load.ctx_sum
        return self.step_s(n, load.ctx_sum)

    def latency_within(self, limit: float) -> bool:
        """Whether every worker with active sessions has a predicted step time of at most ``limit``.

        ``all(self.latency(ld) <= limit for ld in self.loads.values() if ld.n_active)``; a
        ledger of a :class:`~policies.ledger_cache.LedgerCache` knows which loads were over
        ``snap.slo_s`` as counted and looks again only at those this decision booked into or
        out of.
        """
        over = self._over
        if over is None or over[0] != limit:
            return all(self.latency(ld) <= limit for ld in self.loads.values() if ld.n_active)
        touched = self.touched
        return (all(self.latency(ld) <= limit for ld in touched if ld.n_active)
                and all(self.loads[address] in touched for address in over[1]))

    def latency_plus(self, load: WorkerLoad, context_frames: float = 0.0) -> float:
        """Predicted step time once one more active session (of ``context_frames``) joins."""
        n = load.n_active + 1
        if 0 < n < len(self._base):  # cached: what step_s returns, without the call
            return self._base[n] + self._ctx_slope * (load.ctx_sum + context_frames)
        return self.step_s(n, load.ctx_sum + context_frames)

    def latency_plus_key(self) -> Callable[[WorkerLoad], tuple[float, int]]:
        """A function of a load giving ``(latency_plus(load), load.mem_used)``, for heap ranking.

        The same floats as :meth:`latency_plus`, without its method call: a chooser
        calls it on every re-rank.
        """
        base, slope, step = self._base, self._ctx_slope, self.step_s

        def key(load: WorkerLoad) -> tuple[float, int]:
            n = load.n_active + 1
            if n < len(base):
                return base[n] + slope * load.ctx_sum, load.mem_used
            return step(n, load.ctx_sum), load.mem_used

        return key

    def latency_minus(self, load: WorkerLoad, session: SessionView) -> float:
        """Predicted step time once the active ``session`` has left."""
        n = load.n_active - 1
        if 0 < n < len(self._base):  # cached: what step_s returns, without the call
            return self._base[n] + self._ctx_slope * (load.ctx_sum - session.context_frames)
        return self.step_s(n, load.ctx_sum - session.context_frames)

    # ------------------------------------------------------------ booking actions

    def book(self, session: SessionView, load: WorkerLoad, *, active: bool, nbytes: int | None = None) -> None:
        """Book ``session`` onto ``load`` (placed, resumed, or migrated in)."""
        load.mem_used += self.reserve(session) if nbytes is None else nbytes
        load.n_sessions += 1
        if active:
            load.n_active += 1
            load.ctx_sum += session.context_frames
        load.version += 1
        self.touched.add(load)

    def release_compute(self, session: SessionView, load: WorkerLoad) -> None:
        """``session`` stops computing on ``load``; its memory stays booked (copy in flight)."""
        load.n_active -= 1
        load.ctx_sum -= session.context_frames
        load.version += 1
        self.touched.add(load)

    def move(self, session: SessionView, source: WorkerLoad, target: WorkerLoad) -> None:
        """Book the migration of the ACTIVE ``session`` from ``source`` to ``target``."""
        self.release_compute(session, source)
        self.book(session, target, active=True, nbytes=session.state_bytes)
        self.acted.add(session.session_id)
        self.in_flight_bytes += session.state_bytes

    def undo_move(self, session: SessionView, source: WorkerLoad, target: WorkerLoad) -> None:
        """Take back a :meth:`move` (moves are undone in reverse order)."""
        target.mem_used -= session.state_bytes
        target.n_sessions -= 1
        target.n_active -= 1
        target.ctx_sum -= session.context_frames
        target.version += 1
        source.n_active += 1
        source.ctx_sum += session.context_frames
        source.version += 1
        self.touched.update((source, target))
        self.acted.discard(session.session_id)
        self.in_flight_bytes -= session.state_bytes


def _count(
    sessions: Iterable[SessionView], get: Callable[[str], WorkerLoad | None],
    pending: list[SessionView], suspended: list[SessionView],
) -> None:
    """Add ``sessions`` (in snapshot order) to the loads ``get`` finds and to ``pending``/``suspended``.

    The hot loop of every decision: one branch per status, most frequent first. Active
    and idle sessions are only listed (:func:`_count_lists` counts them).
    """
    for s in sessions:
        status = s.status
        if status is _ACTIVE:
            load = get(s.worker)  # type: ignore[arg-type]
            if load is not None:
                load.mem_used += s.state_bytes
                load.ctx_sum += s.context_frames
                load.active.append(s)
        elif status is _IDLE:
            load = get(s.worker)  # type: ignore[arg-type]
            if load is not None:
                load.mem_used += s.state_bytes
                load.idle.append(s)
        elif status is _SUSPENDED:
            suspended.append(s)
        elif status is _PENDING:
            pending.append(s)
        elif status is _MIGRATING:
            load = get(s.worker)  # type: ignore[arg-type]
            if load is not None:
                load.mem_used += s.state_bytes
                load.n_sessions += 1
                load.n_active += 1
                load.ctx_sum += s.context_frames


def _count_lists(load: WorkerLoad) -> None:
    """Count the sessions :func:`_count` listed on ``load``."""
    n = len(load.active)
    load.n_active += n
    load.n_sessions += n + len(load.idle)


def _queue(pending: list[SessionView]) -> list[SessionView]:
    """The pending sessions (in snapshot order) in the order placement takes them.

    Sessions that already have state (resumed ones) go first, then first come first
    served; the id breaks ties so that decisions are deterministic. A duplicated id is
    placed once only (its first view).
    """
    seen: set[str] = set()
    queue = []
    for s in pending:
        if s.session_id not in seen:
            seen.add(s.session_id)
            queue.append(s)
    queue.sort(key=lambda s: (s.state_bytes == 0, s.since_s, s.session_id))
    return queue
