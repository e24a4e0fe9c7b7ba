"""Placement policies: where pending sessions go, and when active ones move.

Three policies, registered under kind ``"placement"``:

- ``round-robin``: the next running worker with room, in snapshot order;
- ``least-loaded``: the worker with the fewest active sessions, then least memory used;
- ``migration-aware`` (TurboServe): each pending session goes where the resulting
  maximum predicted per-chunk latency is smallest, then active sessions migrate from
  the worst worker to the best one while that lowers the worst latency by more than
  the migration costs.

All three also empty DRAINING workers (retired by the autoscaler): active sessions
migrate to a worker the policy would place them on, idle ones are offloaded. A session
for which no running worker has memory and a batch slot stays pending, or is refused
with :class:`~policies.types.Reject` when the policy is built with ``on_full="refuse"``
(only new sessions are refused; a resumed one keeps its place in the queue).

Each decision is O(sessions + workers + placed x log workers): one pass over the
snapshot builds the :class:`~policies.admission.CapacityLedger`, and heaps of workers
(with stale entries skipped by version) pick targets.

Examples
--------
>>> from policies.registry import make
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> snap = Snapshot(now_s=0.0, workers=(WorkerView("w1"), WorkerView("w2")),
...                 sessions=(SessionView("a", SessionStatus.ACTIVE, "w1"),
...                           SessionView("b", SessionStatus.PENDING)))
>>> policy = make("placement", "least-loaded")
>>> actions, state = policy.decide(snap, policy.initial_state())
>>> [(a.session_id, a.worker) for a in actions]
[('b', 'w2')]
"""

from __future__ import annotations

import heapq
import itertools
from heapq import heappop, heappush
from operator import attrgetter
from typing import Any, Callable, Iterable, Protocol

from policies.admission import CapacityLedger, WorkerLoad
from policies.base import LedgerPolicy
from policies.registry import register
from policies.types import Action, Migrate, Offload, Place, Reject, SessionView, Snapshot, WorkerStatus

ON_FULL = ("queue", "refuse")
_entries = itertools.count()  # a tie-breaker of heap entries that compares before objects
_DRAINING = WorkerStatus.DRAINING
_STARTING = WorkerStatus.STARTING
_RUNNING = WorkerStatus.RUNNING
# Rank of a load for "fewest active sessions, then least memory used" (C-level, no call frame).
fewest_active: Callable[[WorkerLoad], tuple[int, int]] = attrgetter("n_active", "mem_used")


class _Chooser(Protocol):
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
    The caller changes ``held`` in place and then calls :meth:`refresh`. ``incoming``
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

    __slots__ = ("_key", "_heap", "_min_failed", "_share", "held", "incoming", "evict_failed", "_pooled",
                 "_failed_by_model", "_open_in_pools", "_kept", "_kept_built")

    def __init__(
        self, loads: Any, key: Callable[[WorkerLoad], tuple], memory_share: float = 1.0,
        held: dict[str, int] | None = None,
    ) -> None:
        self._key = key
        self._share = memory_share
        self.held: dict[str, int] = {} if held is None else held
        self.incoming = 0
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
        """Carry this chooser over to the next ledger of a :class:`~policies.admission.LedgerCache`.

        ``loads``: that ledger's loads (the same objects as this chooser's ledger had),
        ``changed``: those it counted afresh (``CapacityLedger.recounted``; every load
        this chooser's decision booked into is among them), ``key``: the new ledger's
        ranking. The chooser then picks what one built on the new ledger picks: a load
        not counted again has the counts, version and heap entry it had, the changed
        ones get an entry at their new version (older entries are stale), and the memos
        of the previous decision are forgotten. ``incoming`` is the caller's to set.
        With more stale entries than loads, the heap is built again.
        """
        self._key = key
        self._min_failed = None
        self._failed_by_model.clear()
        self.evict_failed.clear()
        self.incoming = 0
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


class _PlacementPolicy(LedgerPolicy):
    """Shared decision loop: place pending sessions, drain DRAINING workers, rebalance."""

    kind = "placement"
    name = ""

    def __init__(
        self,
        *,
        on_full: str = "queue",
        new_session_bytes: int | None = None,
        max_drain_migrations: int = 32,
    ) -> None:
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {ON_FULL}, got {on_full!r}")
        if max_drain_migrations < 0:
            raise ValueError(f"max_drain_migrations must be >= 0, got {max_drain_migrations!r}")
        self.on_full = on_full
        self.new_session_bytes = new_session_bytes
        self.max_drain_migrations = max_drain_migrations

    def __repr__(self) -> str:
        return f"{type(self).__name__}(on_full={self.on_full!r})"

    def _chooser(self, ledger: CapacityLedger, state: Any) -> _Chooser:
        raise NotImplementedError

    def _next_state(self, chooser: _Chooser, state: Any) -> Any:
        return state

    def _rebalance(self, ledger: CapacityLedger, chooser: _Chooser, actions: list[Action], moved: set[str]) -> None:
        """Optional extra moves after placement and draining (none by default)."""

    def _make_room(
        self, ledger: CapacityLedger, chooser: _Chooser, nbytes: int, actions: list[Action], model: str,
        returning: bool = False,
    ) -> WorkerLoad | None:
        """A worker for a pending ``model`` session none has room for, after freeing a slot (none by default).

        ``returning``: the session comes back with its state (not a new session).
        """
        return None

    def ledger(self, snap: Snapshot) -> CapacityLedger:
        """A fresh ledger reserving ``new_session_bytes`` for each new session."""
        return CapacityLedger(snap, self.new_session_bytes)

    def _heap_chooser(
        self, ledger: CapacityLedger, key: Callable[[WorkerLoad], tuple],
        held_of: Callable[[Iterable[WorkerLoad]], dict[str, int]] | None = None,
    ) -> HeapChooser:
        """A :class:`HeapChooser` of ``ledger``'s running workers by ``key`` (``held_of(loads)``: their held slots).

        On a ledger of a :class:`~policies.admission.LedgerCache` the chooser of the
        previous ledger, if this policy decided on it, is carried over
        (:meth:`HeapChooser.renew`: only the loads counted again are re-ranked) instead
        of being built over every worker: the same picks.
        """
        carry = ledger.carry
        if carry is not None and ledger.recounted is not None:
            generation, chooser = carry.get(self, (None, None))
            if chooser is not None and generation == ledger.generation - 1:
                chooser.renew(ledger.loads.values(), ledger.recounted, key, held_of)
                carry[self] = (ledger.generation, chooser)
                return chooser
        loads = ledger.loads.values()
        chooser = HeapChooser(loads, key, held=None if held_of is None else held_of(loads))
        if carry is not None:
            carry[self] = (ledger.generation, chooser)
        return chooser

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """Place the pending sessions, drain DRAINING workers, then (maybe) rebalance."""
        chooser = self._chooser(ledger, state)
        actions: list[Action] = []
        refuse = self.on_full == "refuse"
        cause = f"pending: {self.name}"
        acted = ledger.acted
        # Bound methods hoisted: this loop runs once per pending session.
        pick, refresh, reserve, book = chooser.pick, chooser.refresh, ledger.reserve, ledger.book
        for s in ledger.pending:
            sid = s.session_id
            if sid in acted:
                continue
            nbytes = s.state_bytes
            if nbytes <= 0:  # a new session: reserve() knows what to set aside
                nbytes = reserve(s)
            load = pick(nbytes, None, s.model)
            if load is None:
                load = self._make_room(ledger, chooser, nbytes, actions, s.model, returning=s.state_bytes > 0)
            if load is None:
                if refuse and s.state_bytes == 0:
                    acted.add(sid)
                    ledger.refused.add(sid)
                    actions.append(Reject(sid, cause=f"full: no running worker of model {s.model!r} has {nbytes} bytes "
                                                     "and a batch slot free"))
                continue
            book(s, load, active=True, nbytes=nbytes)
            refresh(load)
            acted.add(sid)
            actions.append(Place(sid, load.address, cause=cause))
        self._drain(ledger, chooser, actions, acted)
        self._rebalance(ledger, chooser, actions, acted)
        return actions, self._next_state(chooser, state)

    def _drain(self, ledger: CapacityLedger, chooser: _Chooser, actions: list[Action], moved: set[str]) -> None:
        budget = self.max_drain_migrations
        for load in ledger.loads_of(_DRAINING):
            for s in load.active:
                if budget <= 0:
                    break
                if s.session_id in moved:
                    continue
                target = chooser.pick(s.state_bytes, model=s.model)
                if target is None:
                    continue
                ledger.move(s, load, target)
                chooser.refresh(target)
                budget -= 1
                actions.append(Migrate(s.session_id, load.address, target.address, cause="drain", drain=True))
            for s in load.idle:
                if s.session_id in moved:
                    continue
                moved.add(s.session_id)
                actions.append(Offload(s.session_id, tier="host", cause="drain", drain=True))


def _kept_slots(loads: Iterable[WorkerLoad]) -> dict[str, int]:
    # The batch slots MigrationAware(keep_idle_slots=True) keeps on running workers: one per idle session.
    return {ld.address: len(ld.idle) for ld in loads if ld.idle and ld.view.status is _RUNNING}


def _move_rank(s: SessionView) -> tuple:
    # Cheapest copy first; among equals the longest context (it gains the most).
    return (s.state_bytes, -s.context_frames, s.session_id)


@register("placement", "round-robin")
class RoundRobin(_PlacementPolicy):
    """Each pending session goes to the next running worker with room, in snapshot order.

    The state is the address of the last worker used, so rounds continue across
    decisions. Parameters are those of every placement policy: ``on_full`` ("queue"
    or "refuse"), ``new_session_bytes`` (memory to reserve for a new session; None: the
    largest state of the same model in the snapshot), ``max_drain_migrations``.
    """

    name = "round-robin"

    def initial_state(self) -> str | None:
        """No worker used yet."""
        return None

    def _chooser(self, ledger: CapacityLedger, state: Any) -> _Chooser:
        return RingChooser(ledger.loads.values(), state)

    def _next_state(self, chooser: _Chooser, state: Any) -> Any:
        return chooser.last if isinstance(chooser, RingChooser) and chooser.last else state


@register("placement", "least-loaded")
class LeastLoaded(_PlacementPolicy):
    """Each pending session goes to the worker with the fewest active sessions.

    Ties go to the worker with the least memory used, then the smallest address.
    Never migrates a session except away from a DRAINING worker.
    """

    name = "least-loaded"

    def _chooser(self, ledger: CapacityLedger, state: Any) -> _Chooser:
        return self._heap_chooser(ledger, fewest_active)


@register("placement", "migration-aware")
class MigrationAware(_PlacementPolicy):
    """TurboServe placement: keep the worst predicted per-chunk latency low, migrating if it pays.

    A pending session goes to the worker whose predicted step time after adding it
    is smallest, which minimises the resulting maximum over workers.

    Then it plans migrations greedily: take the worker with the highest predicted
    latency, its cheapest-to-move active session and the best target, and move it if
    the drop of the worse of the two workers' latencies below the current worst,
    counted over the next ``horizon_chunks`` chunks, exceeds the migration cost
    (``state_bytes / snap.migrate_bytes_per_s``, paid once as a delayed chunk); repeat
    until no move pays (or ``plan_limit`` moves). With
    several workers tied at the worst, each is lowered in turn. The plan is taken
    only if it lowers the cluster's maximum predicted latency by more than
    ``min_gain`` of it; then its first ``max_migrations`` moves are proposed (the
    rest follow in later decisions, as long as what remains still pays).

    Parameters
    ----------
    min_gain
        Relative threshold (``turboserve.control.migration-gain``, default 0.1).
    horizon_chunks
        Chunks over which a move's per-chunk gain is counted against its one-off copy
        (4: a session that stays active a few more chunks repays the copy).
    max_migrations
        Bound on rebalancing migrations per decision (drain moves not included).
    plan_limit
        How many moves the plan may look ahead to find out whether rebalancing pays.
    rebalance_above_slo
        Rebalance only while some worker's predicted step misses the SLO (``False``:
        whenever it pays). A move stalls the moved session's next chunk by its copy, so
        moves that only shave latency below the SLO cost the in-stream worst case.
    keep_idle_slots
        An idle session still resident on its worker keeps its batch slot: no other
        session is placed or migrated into it (``False``: only active sessions hold
        slots). Without this, a session that pauses for a few seconds comes back to a
        worker that took a newcomer in the meantime and shares it with more sessions
        than it can serve at the SLO, until a rebalance moves one away: a stalled
        in-stream chunk. When no worker has a free slot, a pending session takes a kept
        one and the idle session holding it is offloaded to host memory in the same
        decision (the longest idle first), so it comes back through placement.
    keep_idle_s
        With ``keep_idle_slots``: how long into its idle spell a session's slot is
        protected from *new* sessions (a session coming back with its state may take
        any kept slot). ``None`` (default): the worker start-up time of the snapshot,
        the time for which the load-driven autoscaler provisions the slot
        (``provision_idle_s``); a newcomer that finds only protected slots waits for the
        capacity being provisioned for it, instead of evicting a session likely to come
        back (whose return would then wait for a slot: the resume-wait tail).
    **kwargs
        ``on_full``, ``new_session_bytes``, ``max_drain_migrations`` as for every
        placement policy.
    """

    name = "migration-aware"

    def __init__(
        self,
        *,
        min_gain: float = 0.1,
        max_migrations: int = 8,
        plan_limit: int = 1024,
        horizon_chunks: float = 4.0,
        rebalance_above_slo: bool = False,
        keep_idle_slots: bool = False,
        keep_idle_s: float | None = None,
        valve_admission: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.valve_admission = bool(valve_admission)
        if keep_idle_s is not None and not keep_idle_s >= 0:
            raise ValueError(f"keep_idle_s must be >= 0 or None, got {keep_idle_s!r}")
        self.keep_idle_s = None if keep_idle_s is None else float(keep_idle_s)
        self.rebalance_above_slo = bool(rebalance_above_slo)
        self.keep_idle_slots = bool(keep_idle_slots)
        if not horizon_chunks >= 1:
            raise ValueError(f"horizon_chunks must be >= 1, got {horizon_chunks!r}")
        self.horizon_chunks = float(horizon_chunks)
        if plan_limit < max_migrations:
            raise ValueError(f"plan_limit must be >= max_migrations={max_migrations}, got {plan_limit!r}")
        self.plan_limit = plan_limit
        if not min_gain >= 0:
            raise ValueError(f"min_gain must be >= 0, got {min_gain!r}")
        if max_migrations < 0:
            raise ValueError(f"max_migrations must be >= 0, got {max_migrations!r}")
        self.min_gain = float(min_gain)
        self.max_migrations = max_migrations

    def __repr__(self) -> str:
        return (
            f"MigrationAware(min_gain={self.min_gain}, max_migrations={self.max_migrations}, "
            f"horizon_chunks={self.horizon_chunks}, keep_idle_slots={self.keep_idle_slots}, on_full={self.on_full!r})"
        )

    def _chooser(self, ledger: CapacityLedger, state: Any) -> _Chooser:
        if not self.keep_idle_slots:
            return self._heap_chooser(ledger, ledger.latency_plus_key())
        chooser = self._heap_chooser(ledger, ledger.latency_plus_key(), held_of=_kept_slots)
        chooser.incoming = sum(max(0, ld.view.max_batch - ld.n_active) for ld in ledger.loads_of(_STARTING))
        return chooser

    def _make_room(
        self, ledger: CapacityLedger, chooser: _Chooser, nbytes: int, actions: list[Action], model: str,
        returning: bool = False,
    ) -> WorkerLoad | None:
        """Free a kept slot (``keep_idle_slots``): offload the longest-idle session of the best worker.

        While starting workers have slots not yet spoken for, a new session waits for
        one of them rather than take the slot of a session idle for less than
        ``keep_idle_s`` (which may come back any moment); a returning session, or a new
        one when no capacity is on its way, takes any slot idle for two chunk periods.
        """
        if not self.keep_idle_slots or not isinstance(chooser, HeapChooser):
            return None
        if not chooser.held:
            return self._valve_slot(ledger, chooser, nbytes, model) if self.valve_admission else None
        held, acted, now = chooser.held, ledger.acted, ledger.snap.now_s
        protect = 0.0
        if not returning and chooser.incoming > 0:
            protect = ledger.snap.worker_startup_s if self.keep_idle_s is None else self.keep_idle_s
        memo = (model, protect > 0)
        failed = chooser.evict_failed.get(memo)
        if failed is not None and nbytes >= failed:
            if protect > 0:
                chooser.incoming -= 1  # it waits for a starting worker's slot
            return None
        # The best step after placing, then the longest idle: the first entry of the
        # kept-slot heap whose worker has room for it and whose session may be offloaded.
        best = victim = None
        kept = chooser.kept_heap(ledger.loads)
        skipped = []
        while kept:
            entry = kept[0]
            s, load = entry[-2], entry[-1]
            view = load.view
            if (entry[4] != load.version or held.get(load.address, 0) <= 0 or view.status is not _RUNNING
                    or load.n_active >= view.max_batch):
                heappop(kept)  # stale, or no slot to free at this version of the load
                continue
            # A session idle for less than two chunk periods may still have its last
            # chunk in flight (an offload would be refused): it keeps its slot.
            if (load.mem_used + nbytes > view.memory_bytes or not view.serves(model) or s.session_id in acted
                    or now - s.since_s < max(2.0 * s.chunk_period_s, protect)):
                skipped.append(heappop(kept))  # not for this session, or not yet
                continue
            best, victim = load, s
            break
        for entry in skipped:
            heappush(kept, entry)
        if best is None or victim is None:
            if self.valve_admission and (protect > 0 or len(ledger.snap.workers) < ledger.snap.max_workers):
                load = self._valve_slot(ledger, chooser, nbytes, model)
                if load is not None:
                    return load
            chooser.evict_failed[memo] = min(nbytes, failed) if failed is not None else nbytes
            if protect > 0:
                chooser.incoming -= 1  # it waits for a starting worker's slot
            return None
        acted.add(victim.session_id)
        held[best.address] -= 1
        best.version += 1
        actions.append(Offload(victim.session_id, tier="host", cause="evict: its kept batch slot goes to a pending session"))
        return best

    def _valve_slot(self, ledger: CapacityLedger, chooser: HeapChooser, nbytes: int, model: str) -> WorkerLoad | None:
        """``valve_admission``: a running worker that takes a session over its ``b*``, on the quality valve.

        A pending session that would wait for capacity takes, without an eviction, the
        slot an idle resident session keeps on a worker with a free batch slot and fewer
        than ``valve_batch`` resident sessions (active or idle; the most its engine runs
        in one degraded step within the SLO), the best by predicted step. Should the idle
        sessions come back before the capacity being started takes the surplus away (a
        rebalance), the worker runs them all in one degraded step (the valve) instead of
        stalling one. Not while the cluster is at its maximum with nothing starting: there
        the valve would become standing capacity.
        """
        snap = ledger.snap
        if chooser.incoming <= 0 and len(snap.workers) >= snap.max_workers:
            return None
        held = chooser.held
        key = ledger.latency_plus_key()
        best, best_key = None, None
        for load in ledger.loads.values():
            view = load.view
            if (view.status is not _RUNNING or load.n_active + len(load.idle) >= view.valve_batch
                    or load.n_active >= view.max_batch or load.mem_used + nbytes > view.memory_bytes
                    or not view.serves(model)):
                continue
            k = key(load)[0]
            if best_key is None or k < best_key:
                best, best_key = load, k
        if best is None:
            return None
        if held.get(best.address, 0) > 0:
            held[best.address] -= 1  # the slot it takes is one an idle session kept
        best.version += 1
        return best

    def _rebalance(self, ledger: CapacityLedger, chooser: _Chooser, actions: list[Action], moved: set[str]) -> None:
        if self.max_migrations == 0:
            return
        if self.rebalance_above_slo and ledger.latency_within(ledger.snap.slo_s):
            return
        plan, before, after = self._plan(ledger, chooser, moved)
        keep = min(len(plan), self.max_migrations) if before - after > self.min_gain * before else 0
        # The chooser is not re-ranked after the undo: rebalancing is its last use.
        for s, source, target, _, _ in reversed(plan[keep:]):
            ledger.undo_move(s, source, target)
        for s, source, target, l_max, pair_max in plan[:keep]:
            cause = f"rebalance: worst latency {l_max:.3g}s -> {pair_max:.3g}s"
            actions.append(Migrate(s.session_id, source.address, target.address, cause=cause))

    def _plan(self, ledger: CapacityLedger, chooser: _Chooser, moved: set[str]) -> tuple[list[tuple], float, float]:
        """Greedy moves from the worst worker to the best, booked into ``ledger``.

        Stops when no move pays, after ``plan_limit`` moves, or as soon as the plan has
        ``max_migrations`` moves and has already lowered the cluster's maximum by more
        than ``min_gain`` (the maximum never rises along the plan, so it pays).
        Returns the moves and the maximum predicted latency before and after them.
        """
        snap = ledger.snap
        horizon = self.horizon_chunks
        # Max-heap of the workers that compute (running or draining) by predicted latency.
        latency = ledger.latency
        worst_heap = [
            (-latency(ld), ld.address, ld.version, ld)
            for ld in ledger.loads.values()
            if ld.n_active and ld.view.status is not _STARTING
        ]
        heapq.heapify(worst_heap)
        before = -worst_heap[0][0] if worst_heap else 0.0
        enough = before - self.min_gain * before  # a max below this pays
        plan: list[tuple] = []
        queues: dict[str, list[SessionView]] = {}  # per source: its sessions, cheapest to move last
        l_max = before
        # Bound methods hoisted: this loop runs once per planned move (hundreds).
        pick, refresh, move = chooser.pick, chooser.refresh, ledger.move
        latency_minus, latency_plus = ledger.latency_minus, ledger.latency_plus
        copy_rate = snap.migrate_bytes_per_s
        while worst_heap:
            entry = worst_heap[0]
            worst: WorkerLoad = entry[3]
            if entry[2] != worst.version:
                heapq.heappop(worst_heap)  # stale
                continue
            l_max = -entry[0]
            if len(plan) >= self.plan_limit or (len(plan) >= self.max_migrations and l_max < enough):
                break
            queue = queues.get(worst.address)
            if queue is None:  # cheapest to move last, so pop() takes it
                queue = queues[worst.address] = sorted(worst.active, key=_move_rank, reverse=True)
            while queue and queue[-1].session_id in moved:
                queue.pop()
            if not queue:
                break
            s = queue[-1]
            target = pick(s.state_bytes, worst, s.model)
            if target is None:
                break
            pair_max = max(latency_minus(worst, s), latency_plus(target, s.context_frames))
            if horizon * (l_max - pair_max) <= s.state_bytes / copy_rate:
                break  # over the horizon the worst worker gains less than the copy costs
            move(s, worst, target)
            queue.pop()
            plan.append((s, worst, target, l_max, pair_max))
            refresh(worst)
            heappush(worst_heap, (-latency(worst), worst.address, worst.version, worst))
            refresh(target)
            heappush(worst_heap, (-latency(target), target.address, target.version, target))
        else:
            l_max = 0.0  # no computing worker left
        return plan, before, l_max
