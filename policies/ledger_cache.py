"""The capacity ledgers of successive snapshots of one cluster, each counted only where it changed.

A :class:`~policies.admission.CapacityLedger` counts every session of its snapshot. The
simulator decides far more often than the cluster changes: it admits sessions between
its ticks, and from one admission to the next a few dozen session views change among
thousands. A :class:`LedgerCache` keeps the counts of its previous ledger and counts
afresh only the workers whose sessions came or went, with the same result as a full
build (``tests/test_ledger_cache.py``). Policies read its ledgers as any other; those
that keep structures of their own per load (placement's chooser) may carry them from
one ledger to the next (``CapacityLedger.recounted`` and ``carry``).

Examples
--------
>>> from dataclasses import replace
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> workers = (WorkerView("w1", memory_bytes=10, max_batch=2), WorkerView("w2", memory_bytes=10, max_batch=2))
>>> a = SessionView("a", SessionStatus.ACTIVE, "w1", state_bytes=4)
>>> snap = Snapshot(now_s=0.0, workers=workers, sessions=(a,))
>>> cache = LedgerCache()
>>> cache.ledger(snap).loads["w1"].mem_used
4
>>> b = SessionView("b", SessionStatus.IDLE, "w2", state_bytes=3)
>>> ledger = cache.ledger(replace(snap, now_s=1.0, sessions=(a, b)))  # only w2 is counted again
>>> [(ld.address, ld.mem_used) for ld in ledger.recounted]
[('w2', 3)]
"""

from __future__ import annotations

from itertools import compress, count
from operator import is_not
from typing import Iterator

from policies.admission import CapacityLedger, WorkerLoad
from policies.types import SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView

_ACTIVE = SessionStatus.ACTIVE
_IDLE = SessionStatus.IDLE
_PENDING = SessionStatus.PENDING
_ON_DEVICE = (_ACTIVE, _IDLE, SessionStatus.MIGRATING)


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
    neighbours'); a snapshot that lists a session twice is counted in full. The loads are
    reused from one ledger to the next: a ledger of the cache is valid until the next one
    is built. Each ledger names the loads counted afresh (``recounted``) and carries one
    dict from ledger to ledger (``carry``), so a policy may keep its own per-load
    structures (placement's chooser) and update only those loads.
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
        # Step times by batch size of ``_latency`` without context (the ledgers' ``step_times``),
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
        if snap.latency is not self._latency:  # a new model: a new list, filled as the ledgers ask
            self._base = [0.0]
        # ``loads`` is replaced, never changed, when the workers change; ``_over`` is filled below.
        ledger = CapacityLedger.of_counted(
            snap, loads, self._in_order(self._pending), new_session_bytes,
            step_times=self._base, loads_by_status=self._by_status, over=(snap.slo_s, self._over),
        )
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

        :func:`policies.admission._count` and ``_count_lists`` for one load, inlined (the same sums in the
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
