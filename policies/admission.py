"""Capacity accounting for one decision: what each worker holds and can still take.

Every policy builds one :class:`CapacityLedger` from the snapshot (one pass over the
sessions, O(sessions + workers)) and books its own actions into it as it decides, so
that later actions of the same decision see the memory and batch slots taken by the
earlier ones. (Admissions between the simulator's ticks take theirs from a
:class:`LedgerCache`, which counts again only what changed since the previous one: the
same ledger.) The ledger is the single place where the admission rules live:

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
from itertools import compress, count
from operator import attrgetter, is_not
from typing import Callable, Iterable, Iterator

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

        Listed once per ledger and status (a ledger of a :class:`LedgerCache`: once per
        tuple of worker views), so that a policy looking for the few draining or
        starting workers does not scan all of them each time.
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
        ledger of a :class:`LedgerCache` knows which loads were over ``snap.slo_s`` as
        counted and looks again only at those this decision booked into or out of.
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


_ON_DEVICE = (_ACTIVE, _IDLE, _MIGRATING)


def _changes(
    old: tuple[SessionView, ...], new: tuple[SessionView, ...],
) -> Iterator[tuple[str, SessionView | None, SessionView | None, int]]:
    """Where ``new`` differs from ``old``, in order of ``new``: ``(how, gone, came, k)``, ``came`` being ``new[k]``.

    ``how``: "replaced" (``came`` took the place of ``gone``), "removed" (``gone`` only),
    "inserted" (``came`` only, before a view that both hold) or "appended" (``came`` only,
    after the last view both hold). Views are compared by identity, in step: one C-level
    pass from one removal or insertion to the next. Every view of ``old`` not matched by
    the same object at its place in ``new`` is gone once, every such view of ``new`` came
    once (a view that moved is both: still exact, only slower).
    """
    i = j = 0
    while True:
        shifted = False
        for k in compress(count(), map(is_not, old[i:], new[j:])):
            a, b = i + k, j + k
            if a + 1 < len(old) and old[a + 1] is new[b]:
                yield "removed", old[a], None, b
                i, j, shifted = a + 1, b, True
                break
            if b + 1 < len(new) and old[a] is new[b + 1]:
                yield "inserted", None, new[b], b
                i, j, shifted = a, b + 1, True
                break
            yield "replaced", old[a], new[b], b
        if not shifted:
            n = min(len(old) - i, len(new) - j)
            for s in old[i + n:]:
                yield "removed", s, None, len(new)
            for k in range(j + n, len(new)):
                yield "appended", None, new[k], k
            return


class LedgerCache:
    """The ledgers of successive snapshots of one cluster, each counted only where it changed.

    ``cache.ledger(snap, new_session_bytes)`` equals ``CapacityLedger(snap,
    new_session_bytes)`` (every load's counts and session lists, the pending queue, the
    suspended sessions, all in snapshot order), but instead of one pass over all the
    sessions it counts afresh only the workers where a session view came or went since
    the previous call (views are immutable: a view found again contributes what it did)
    and those the previous ledger booked into (its ``touched`` loads). The simulator
    admits sessions between ticks this way: from one admission to the next a few dozen
    views change, among thousands.

    Snapshot order is kept as a rank per session id (the index in the first snapshot; a
    view that replaces another takes its rank, one inserted gets a rank between its
    neighbours'); a snapshot that lists a session twice is counted in full. The loads are reused from one ledger to the next: a ledger of the
    cache is valid until the next one is built. Each ledger names the loads counted
    afresh (``recounted``) and carries one dict from ledger to ledger (``carry``), so a
    policy may keep its own per-load structures (placement's chooser) and update only
    those loads.
    """

    def __init__(self) -> None:
        self._sessions: tuple[SessionView, ...] | None = None
        self._rank: dict[str, float] = {}  # session id -> its place in snapshot order
        self._workers: tuple[WorkerView, ...] | None = None
        self._loads: dict[str, WorkerLoad] = {}
        # On-device sessions by the worker they are booked on, and pending ones, by session id.
        self._on_worker: dict[str | None, dict[str, SessionView]] = {}
        # A bucket's ids in snapshot order, as last sorted, and the buckets that gained or
        # lost an id since (a session's new view in its place keeps its bucket's order).
        self._order: dict[str | None, list[str]] = {}
        self._unordered: set[str | None] = set()
        self._pending: dict[str, SessionView] = {}
        self._last: CapacityLedger | None = None
        # Workers whose counted load is over ``snap.slo_s`` (as of _slo and _latency), for latency_within.
        self._over: set[str] = set()
        self._slo: float | None = None
        self._latency: object = None
        # Step times by batch size of ``_latency`` without context (CapacityLedger._base),
        # shared by the ledgers of one latency model instead of filled again by each.
        self._base: list[float] = [0.0]
        self._by_status: dict[WorkerStatus, list[WorkerLoad]] = {}  # CapacityLedger.loads_of, per _workers
        self._carry: dict = {}  # CapacityLedger.carry of every ledger of this cache
        self._generation = 0  # ledgers built since the cache last counted in full

    def ledger(self, snap: Snapshot, new_session_bytes: int | None = None) -> CapacityLedger:
        """The ledger of ``snap`` (equal to ``CapacityLedger(snap, new_session_bytes)``)."""
        sessions = snap.sessions
        changed = self._update_sessions(sessions)
        counted_in_full = changed is None
        if changed is None:  # counted in full
            self.__init__()  # type: ignore[misc]
            self._start(sessions)
            if len(self._rank) != len(sessions):  # a session listed twice: counted twice, as CapacityLedger does
                self.__init__()  # type: ignore[misc]
                return CapacityLedger(snap, new_session_bytes)
            changed = set()
        if self._last is not None:
            changed.update(load.address for load in self._last.touched)
        workers_changed = snap.workers is not self._workers
        if workers_changed:
            old = self._loads
            self._loads = {}
            for w in snap.workers:
                load = old.get(w.address)
                if load is None or load.view is not w:
                    load = WorkerLoad(w)
                    changed.add(w.address)
                self._loads[w.address] = load
            self._workers = snap.workers
            self._by_status = {}
        loads = self._loads
        recounted = []
        for address in changed:
            load = loads.get(address)  # type: ignore[arg-type]
            if load is not None:
                self._recount(load)
                recounted.append(load)
        ledger = CapacityLedger.__new__(CapacityLedger)
        ledger._start(snap, new_session_bytes)
        if snap.latency is self._latency:
            ledger._base = self._base
        else:  # a new model: this ledger's list, filled as it is asked, serves the next ones
            self._base = ledger._base
        ledger.loads = loads  # replaced, never changed, when the workers change
        ledger.pending = _queue(self._in_order(self._pending))
        ledger._suspended = None
        ledger._by_status = self._by_status
        ledger.carry = self._carry
        self._generation += 1
        ledger.generation = self._generation
        ledger.recounted = None if counted_in_full else recounted
        if snap.slo_s != self._slo or snap.latency is not self._latency or workers_changed:
            ledger.recounted = None
            self._over.clear()
            recounted = loads.values()  # type: ignore[assignment]
            self._slo, self._latency = snap.slo_s, snap.latency
        for load in recounted:
            if load.n_active and not ledger.latency(load) <= snap.slo_s:
                self._over.add(load.address)
            else:
                self._over.discard(load.address)
        ledger._over = (snap.slo_s, self._over)
        self._last = ledger
        return ledger

    def _start(self, sessions: tuple[SessionView, ...]) -> None:
        """Take in all of ``sessions``."""
        self._rank = {s.session_id: i for i, s in enumerate(sessions)}
        self._sessions = sessions
        for s in sessions:
            self._add(s, s.session_id, set())

    def _update_sessions(self, sessions: tuple[SessionView, ...]) -> set[str | None] | None:
        """Take in the views that came and went since the previous snapshot; the workers they were on.

        None (nothing taken in): there is no previous snapshot, a session is listed twice
        (ranks and buckets are by session id), or no rank fits between an inserted view's
        neighbours. The state may then be half updated: the caller counts in full.
        """
        old, rank = self._sessions, self._rank
        if old is None:
            return None
        changed: set[str | None] = set()
        on_worker, pending, unordered = self._on_worker, self._pending, self._unordered
        gone: list[SessionView] = []
        came: dict[str, SessionView] = {}
        placed: dict[str, float] = {}  # session id -> rank, of those that came
        for how, out, into, k in _changes(old, sessions):
            if into is None:
                gone.append(out)  # type: ignore[arg-type]
                continue
            if k > 0:  # the rank of the view before it (placed already if it came too)
                key = sessions[k - 1].session_id
                before = placed.get(key)
                if before is None:
                    before = rank[key]
            else:
                before = -1.0
            key = into.session_id
            if out is not None and out.session_id == key:
                # The session's new view in its place (most changes: it made a chunk). No other
                # change names this session (ids are unique, or the caller counts in full), so
                # its bucket entry is replaced at once and its rank stays.
                if not before < rank[key]:
                    return None
                status, worker = out.status, out.worker
                if status in _ON_DEVICE:
                    changed.add(worker)
                    if into.status in _ON_DEVICE and into.worker == worker:
                        on_worker[worker][key] = into
                        continue
                    del on_worker[worker][key]
                    unordered.add(worker)
                elif status is _PENDING:
                    del pending[key]
                self._add(into, key, changed)
                continue
            if out is not None:  # replaced by another session's view: it takes the place
                gone.append(out)
                place = rank[out.session_id]
            elif how == "inserted":  # between its neighbours (the next one is a view both hold)
                after = rank[sessions[k + 1].session_id]
                place = (before + after) / 2
                if not place < after:
                    return None
            else:  # appended
                place = before + 1.0
            if not before < place:
                return None
            came[key] = into
            placed[key] = place
        # Take the views that went out of their buckets, then put those that came in (as _add
        # does, inlined: a session may go at one place and come at another)
        for s in gone:
            key = s.session_id
            status = s.status
            if status in _ON_DEVICE:
                del on_worker[s.worker][key]
                changed.add(s.worker)
                unordered.add(s.worker)
            elif status is _PENDING:
                del pending[key]
            del rank[key]
        for key, s in came.items():
            status = s.status
            if status in _ON_DEVICE:
                worker = s.worker
                held = on_worker.get(worker)
                if held is None:
                    held = on_worker[worker] = {}
                held[key] = s
                changed.add(worker)
                unordered.add(worker)
            elif status is _PENDING:
                pending[key] = s
        rank.update(placed)
        self._sessions = sessions
        if len(rank) != len(sessions):  # a session listed twice: the ranks cannot tell its places apart
            return None
        return changed

    def _in_order(self, views: dict[str, SessionView]) -> list[SessionView]:
        """``views`` in snapshot order."""
        return [views[key] for key in sorted(views, key=self._rank.__getitem__)]

    def _add(self, s: SessionView, key: str, changed: set[str | None]) -> None:
        if s.status in _ON_DEVICE:
            self._on_worker.setdefault(s.worker, {})[key] = s
            changed.add(s.worker)
            self._unordered.add(s.worker)
        elif s.status is _PENDING:
            self._pending[key] = s

    def _recount(self, load: WorkerLoad) -> None:
        """Count ``load`` afresh from its sessions, in snapshot order, as :class:`CapacityLedger` does.

        :func:`_count` and :func:`_count_lists` for one load, inlined (the same sums in the
        same order): its sessions are all on a device (active, idle or migrating).
        """
        load.version += 1
        active: list[SessionView] = []
        idle: list[SessionView] = []
        mem = migrating = 0
        ctx = 0.0
        address = load.address
        views = self._on_worker.get(address)
        if views:
            order = self._order.get(address)
            if order is None or address in self._unordered:
                order = self._order[address] = sorted(views, key=self._rank.__getitem__)
                self._unordered.discard(address)
            for key in order:
                s = views[key]
                status = s.status
                mem += s.state_bytes
                if status is _ACTIVE:
                    ctx += s.context_frames
                    active.append(s)
                elif status is _IDLE:
                    idle.append(s)
                else:  # MIGRATING, booked on its target
                    ctx += s.context_frames
                    migrating += 1
        load.mem_used, load.ctx_sum, load.active, load.idle = mem, ctx, active, idle
        load.n_active = len(active) + migrating
        load.n_sessions = len(active) + len(idle) + migrating
