"""Choosers: which running worker a placement takes next, kept in a heap or a ring.

A placement decision books sessions one by one into a
:class:`~policies.admission.CapacityLedger`; a chooser answers "the best worker with
room for ``nbytes`` of ``model``" after each booking without rescanning every worker.
:class:`HeapChooser` keeps the running workers in a min-heap by a key (stale entries
skipped by the load's version) and the batch slots idle sessions keep; :class:`RingChooser`
goes round them in snapshot order. The placement policies (``policies.placement``) and
the offload policy's re-placement of returning sessions (``policies.offload``) use them.
"""

from __future__ import annotations

import heapq
import itertools
from heapq import heappop, heappush
from operator import attrgetter
from typing import Any, Callable, Iterable, Protocol

from policies.admission import WorkerLoad
from policies.types import WorkerStatus

_entries = itertools.count()  # a tie-breaker of heap entries that compares before objects
_RUNNING = WorkerStatus.RUNNING
# Rank of a load for "fewest active sessions, then least memory used" (C-level, no call frame).
fewest_active: Callable[[WorkerLoad], tuple[int, int]] = attrgetter("n_active", "mem_used")


class Chooser(Protocol):
    """What a placement asks of a chooser: the best worker with room, and to re-rank one after a booking."""

    def pick(self, nbytes: int, exclude: WorkerLoad | None = None, model: str | None = None) -> WorkerLoad | None: ...

    def refresh(self, load: WorkerLoad) -> None: ...


class HeapChooser:
    """Running workers in a min-heap by ``key(load)``; picks the best one with room.

    Entries of a load whose ``version`` changed are stale and skipped; call
    :meth:`refresh` after booking into a load. Workers without a free batch slot
    leave the heap until refreshed; memory misses are remembered (a session at least
    as large as one that found no room finds none either, until a refresh).

    ``held`` maps a worker's address to batch slots that are not free although no
    session computes in them (slots kept for idle sessions resident there, see
    :class:`MigrationAware`); a worker has room while ``n_active + held < max_batch``.
    The caller changes ``held`` in place and then calls :meth:`refresh`. ``outlook``:
    the caller's reading of this decision's snapshot for the quality valve's budget
    (:class:`~policies.valve_budget.ValveOutlook`; None until it is first needed). ``incoming``
    counts the batch slots of starting workers not yet spoken for (set and spent by
    the caller: a new session may wait for one of them instead of taking a held slot);
    ``evict_failed`` remembers, per ``(model, protected)``, the smallest session for
    which no held slot could be freed (within one decision candidates only shrink, so a
    session at least as large finds none either); :meth:`kept_heap` lists the idle
    sessions holding those slots by their worker's rank, then longest idle first.

    ``pick(..., model=m)`` skips workers that do not serve ``m`` (``WorkerView.serves``);
    when no worker names its models (the common case) the check costs nothing, and
    otherwise misses are remembered per model.
    """

    __slots__ = ("_key", "_heap", "_min_failed", "_share", "held", "incoming", "outlook", "evict_failed", "_pooled",
                 "_failed_by_model", "_open_in_pools", "_kept", "_kept_built")

    def __init__(
        self, loads: Any, key: Callable[[WorkerLoad], tuple], memory_share: float = 1.0,
        held: dict[str, int] | None = None,
    ) -> None:
        self._key = key
        self._share = memory_share
        self.held: dict[str, int] = {} if held is None else held
        self.incoming = 0
        self.outlook: Any = None
        self.evict_failed: dict[tuple[str, bool], int] = {}
        self._min_failed: int | None = None
        self._failed_by_model: dict[str, int] = {}
        # (key(load)[0], since_s, session_id, address, version, n, session, load) per idle
        # session of a worker with held slots: built by kept_heap() when first asked for.
        self._kept: list[tuple] | None = None
        self._kept_built = 0
        self._fill(loads)

    def _fill(self, loads: Any) -> None:
        """The heap of the open loads among ``loads``, afresh."""
        hold = self.held.get
        self._heap = [
            (*self._key(ld), ld.address, ld.version, ld)
            for ld in loads
            if ld.view.status is _RUNNING and ld.n_active + hold(ld.address, 0) < ld.view.max_batch  # _open, inlined
        ]
        heapq.heapify(self._heap)
        # Open workers that serve given models (WorkerView.models), as of the start of a decision.
        self._open_in_pools = {entry[-1].address for entry in self._heap if entry[-1].view.models is not None}
        self._pooled = bool(self._open_in_pools)

    def renew(
        self, loads: Any, changed: Any, key: Callable[[WorkerLoad], tuple],
        held_of: Callable[[Iterable[WorkerLoad]], dict[str, int]] | None = None,
    ) -> None:
        """Carry this chooser over to the next ledger of a :class:`~policies.ledger_cache.LedgerCache`.

        ``loads``: that ledger's loads (the same objects as this chooser's ledger had),
        ``changed``: those it counted afresh (``CapacityLedger.recounted``; every load
        this chooser's decision booked into is among them), ``key``: the new ledger's
        ranking. The chooser then picks what one built on the new ledger picks: a load
        not counted again has the counts, version and heap entry it had, the changed
        ones get an entry at their new version (older entries are stale), and the memos
        of the previous decision are forgotten. ``incoming`` and ``outlook`` are the caller's to set.
        With more stale entries than loads, the heap is built again.
        """
        self._key = key
        self._min_failed = None
        self._failed_by_model.clear()
        self.evict_failed.clear()
        self.incoming = 0
        self.outlook = None
        held = self.held
        if held_of is not None:
            counted = held_of(changed)
            for load in changed:
                n = counted.get(load.address)
                if n:
                    held[load.address] = n
                else:
                    held.pop(load.address, None)
        if self._kept is not None:
            if len(self._kept) > 2 * self._kept_built + 64:
                self._kept = None  # mostly stale entries: built again when next asked for
            else:
                for load in changed:
                    self._push_kept(load)
        if len(self._heap) > 2 * len(loads) + 64:
            self._fill(loads)
            return
        in_pools = self._open_in_pools
        for load in changed:
            if self._open(load):
                heappush(self._heap, (*key(load), load.address, load.version, load))
                if load.view.models is not None:
                    in_pools.add(load.address)
            else:
                in_pools.discard(load.address)
        self._pooled = bool(in_pools)

    def _open(self, load: WorkerLoad) -> bool:
        return load.view.status is _RUNNING and load.n_active + self.held.get(load.address, 0) < load.view.max_batch

    def refresh(self, load: WorkerLoad) -> None:
        """Re-rank ``load`` after its counts (or its ``held`` slots) changed."""
        view = load.view  # _open(load), inlined: this runs after every booking
        if view.status is _RUNNING and load.n_active + self.held.get(load.address, 0) < view.max_batch:
            heappush(self._heap, (*self._key(load), load.address, load.version, load))
            self._min_failed = None
            if self._pooled:
                self._failed_by_model.clear()
        if self._kept is not None:
            self._push_kept(load)

    def kept_heap(self, loads: dict[str, WorkerLoad]) -> list[tuple]:
        """The idle sessions holding slots (``held``), as a min-heap by their worker's rank, then longest idle.

        Entries ``(key(load)[0], since_s, session_id, address, version, n, session,
        load)``, one per idle session of a running worker with held slots, as of the
        load's ``version`` (an entry of an older version is stale). Kept up to date by
        :meth:`refresh` and :meth:`renew` once built; a reader pops what it skips and
        pushes back what it skipped only for now. ``loads``: the ledger's loads by address.
        """
        if self._kept is None:
            self._kept = []
            for address in self.held:
                self._push_kept(loads[address])
            self._kept_built = len(self._kept)
        return self._kept

    def _push_kept(self, load: WorkerLoad) -> None:
        if self.held.get(load.address, 0) <= 0 or load.view.status is not _RUNNING:
            return
        step = self._key(load)[0]
        kept, version, address = self._kept, load.version, load.address
        for s in load.idle:
            heappush(kept, (step, s.since_s, s.session_id, address, version, next(_entries), s, load))

    def pick(self, nbytes: int, exclude: WorkerLoad | None = None, model: str | None = None) -> WorkerLoad | None:
        """The best-ranked running worker that fits an active session of ``nbytes`` (of ``model``)."""
        pooled = self._pooled and model is not None
        failed = self._failed_by_model.get(model) if pooled else self._min_failed  # type: ignore[arg-type]
        if failed is not None and nbytes >= failed and exclude is None:
            return None
        heap, stash, found = self._heap, [], None
        share, hold = self._share, self.held.get
        while heap:
            entry = heap[0]
            load = entry[-1]
            view = load.view
            # Stale, or no batch slot left (``_open`` inlined: the top is usually taken).
            if (entry[-2] != load.version or view.status is not _RUNNING
                    or load.n_active + hold(load.address, 0) >= view.max_batch):
                heappop(heap)
                continue
            # load.fits(nbytes, active=True, memory_share=share, model=model), inlined: status
            # and slot checked above; the pool check (WorkerView.serves) only where pools exist.
            limit = view.memory_bytes if share >= 1.0 else share * view.memory_bytes
            if (load is exclude or load.mem_used + nbytes > limit
                    or (pooled and view.models is not None and model not in view.models)):
                stash.append(heappop(heap))
                continue
            found = load
            break
        for entry in stash:
            heappush(heap, entry)
        if found is None and exclude is None:
            if pooled:
                self._failed_by_model[model] = nbytes  # type: ignore[index]
            else:
                self._min_failed = nbytes
        return found


class RingChooser:
    """Running workers in snapshot order; picks the next one with room after ``last``.

    Like :class:`HeapChooser` it remembers the smallest session that found no room
    (per model where workers serve given models), so a full cluster costs one scan per
    decision, not one per pending session.
    """

    __slots__ = ("_ring", "_pos", "_min_failed", "_key_model")

    def __init__(self, loads: Any, last: str | None) -> None:
        self._ring = [ld for ld in loads if ld.view.status is _RUNNING]
        self._pos = 0
        # Keyed by model (None: any) only where some worker serves given models.
        self._min_failed: dict[str | None, int] = {}
        pooled = any(ld.view.models is not None for ld in self._ring)
        self._key_model = pooled
        for i, ld in enumerate(self._ring):
            if ld.address == last:
                self._pos = i + 1
                break

    def refresh(self, load: WorkerLoad) -> None:
        """The ring order is fixed; only forget the remembered misses (a slot may have freed)."""
        if self._min_failed:
            self._min_failed.clear()

    def pick(self, nbytes: int, exclude: WorkerLoad | None = None, model: str | None = None) -> WorkerLoad | None:
        """The next worker in the ring that fits an active session of ``nbytes`` (of ``model``)."""
        key = model if self._key_model else None
        failed = self._min_failed.get(key)
        if failed is not None and nbytes >= failed and exclude is None:
            return None
        ring = self._ring
        n = len(ring)
        for i in range(n):
            load = ring[(self._pos + i) % n]
            if load is not exclude and load.fits(nbytes, active=True, model=model):
                self._pos = (self._pos + i + 1) % n
                return load
        if exclude is None:
            self._min_failed[key] = nbytes
        return None

    @property
    def last(self) -> str | None:
        """Address of the worker picked last (where the next round starts after)."""
        return self._ring[self._pos - 1].address if self._ring else None
