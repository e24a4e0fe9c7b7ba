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
from heapq import heappop, heappush
from typing import Any, Callable, Iterable, Iterator

from policies.admission import CapacityLedger, WorkerLoad
from policies.choosers import Chooser, HeapChooser, RingChooser, fewest_active
from policies.base import LedgerPolicy
from policies.registry import register
from policies.types import Action, Migrate, Offload, Place, Reject, SessionView, Snapshot, WorkerStatus
from policies.valve_budget import LentWorker, ValveOutlook, lend_fits

ON_FULL = ("queue", "refuse")
_DRAINING = WorkerStatus.DRAINING
_STARTING = WorkerStatus.STARTING
_RUNNING = WorkerStatus.RUNNING


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

    def _chooser(self, ledger: CapacityLedger, state: Any) -> Chooser:
        raise NotImplementedError

    def _next_state(self, chooser: Chooser, state: Any) -> Any:
        return state

    def _rebalance(self, ledger: CapacityLedger, chooser: Chooser, actions: list[Action], moved: set[str]) -> None:
        """Optional extra moves after placement and draining (none by default)."""

    def _make_room(
        self, ledger: CapacityLedger, chooser: Chooser, nbytes: int, actions: list[Action], model: str,
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

        On a ledger of a :class:`~policies.ledger_cache.LedgerCache` the chooser of the
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

    def _drain(self, ledger: CapacityLedger, chooser: Chooser, actions: list[Action], moved: set[str]) -> None:
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


def _over_batch(ledger: CapacityLedger) -> Iterator[WorkerLoad]:
    """The running workers holding more resident sessions (active and idle) than their ``b*``."""
    return (ld for ld in ledger.loads.values()
            if ld.view.status is _RUNNING and ld.n_active + len(ld.idle) > ld.view.max_batch)


def _lent_workers(ledger: CapacityLedger, period_s: float) -> list[LentWorker]:
    """The workers over their ``b*`` (slots lent on the valve), as the valve's budget reads them."""
    lent = []
    for ld in _over_batch(ledger):
        view = ld.view
        some = ld.active[0] if ld.active else ld.idle[0] if ld.idle else None
        lent.append(LentWorker(ld.n_active + len(ld.idle), len(ld.idle), ld.n_active > view.max_batch,
                               period_s if some is None else some.chunk_period_s, view.max_batch))
    return lent


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

    def _chooser(self, ledger: CapacityLedger, state: Any) -> Chooser:
        return RingChooser(ledger.loads.values(), state)

    def _next_state(self, chooser: Chooser, state: Any) -> Any:
        return chooser.last if isinstance(chooser, RingChooser) and chooser.last else state


@register("placement", "least-loaded")
class LeastLoaded(_PlacementPolicy):
    """Each pending session goes to the worker with the fewest active sessions.

    Ties go to the worker with the least memory used, then the smallest address.
    Never migrates a session except away from a DRAINING worker.
    """

    name = "least-loaded"

    def _chooser(self, ledger: CapacityLedger, state: Any) -> Chooser:
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
    valve_admission
        With ``keep_idle_slots`` and the quality valve (``WorkerView.valve_batch``): a
        pending session that would wait for capacity takes an idle session's kept slot
        without evicting it, up to the valve's batch of resident sessions
        (:meth:`_valve_slot`). Off by default here; on in TurboServe's configuration.
    valve_budget
        With ``valve_admission``: the share of chunks the valve may degrade; a slot is
        lent only when the chunks degraded so far plus what the lent slots are expected
        to degrade stay within it (:func:`policies.valve_budget.lend_fits`); None: no
        budget.
    valve_lend_active
        With ``valve_admission``: when no idle resident's slot can be lent, lend a full
        worker's (``b*`` active sessions, fewer residents than the valve's batch): its
        group runs degraded from then until the capacity started for the newcomer takes
        the surplus away, priced as degrading for a whole start-up. Off by default.
    valve_lend_at_max
        With ``valve_admission`` and a ``valve_budget``: lend also at the cluster's
        maximum with nothing starting, priced until a burst of the group ends
        (:func:`policies.valve_budget.lend_fits`), the surplus given back soon after
        (:meth:`_give_back`). Off by default here; on in TurboServe's configuration.
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
        valve_budget: float | None = 0.01,
        valve_lend_active: bool = False,
        valve_lend_at_max: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.valve_admission = bool(valve_admission)
        self.valve_lend_active = bool(valve_lend_active)
        self.valve_lend_at_max = bool(valve_lend_at_max)
        if valve_budget is not None and not 0 <= valve_budget <= 1:
            raise ValueError(f"valve_budget must be a share in [0, 1] or None (no budget), got {valve_budget!r}")
        self.valve_budget = None if valve_budget is None else float(valve_budget)
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

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """As every placement's; with ``valve_lend_at_max``, slots lent at the maximum given back."""
        actions, state = super().decide_on(ledger, state)
        if self.valve_lend_at_max:
            self._give_back(ledger, actions)
        return actions, state

    def _give_back(self, ledger: CapacityLedger, actions: list[Action]) -> None:
        """At the maximum with nothing starting, offload the idle residents a valve worker holds over its ``b*``.

        A slot lent at the maximum is priced for one episode (until a burst of the group
        ends: :func:`policies.valve_budget.lend_fits`). Left alone, the surplus would
        last as long as the saturation: a waiting newcomer takes the kept slot of the
        next resident that goes idle, and the group degrades again whenever all its
        sessions are active. So the surplus is given back as soon as a resident has been
        idle for two chunk periods (its last chunk delivered), longest idle first, as an
        eviction at the maximum would take it anyway. With capacity on its way the
        rebalance takes the surplus instead.
        """
        snap = ledger.snap
        if len(snap.workers) < snap.max_workers or ledger.loads_of(_STARTING):
            return
        acted, now = ledger.acted, snap.now_s
        for load in _over_batch(ledger):
            view = load.view
            if view.valve_batch <= 0:
                continue  # a worker without the valve is never lent a slot
            # idle sessions an action of this decision already takes away (an eviction) leave a slot
            staying = sorted((s for s in load.idle if s.session_id not in acted), key=lambda s: s.since_s)
            surplus = load.n_active + len(staying) - view.max_batch
            for s in staying:
                if surplus <= 0:
                    break
                if now - s.since_s < 2.0 * s.chunk_period_s:
                    continue
                acted.add(s.session_id)
                surplus -= 1
                actions.append(Offload(s.session_id, tier="host", cause="give back a slot lent on the valve at the maximum"))

    def _chooser(self, ledger: CapacityLedger, state: Any) -> Chooser:
        if not self.keep_idle_slots:
            return self._heap_chooser(ledger, ledger.latency_plus_key())
        chooser = self._heap_chooser(ledger, ledger.latency_plus_key(), held_of=_kept_slots)
        chooser.incoming = sum(max(0, ld.view.max_batch - ld.n_active) for ld in ledger.loads_of(_STARTING))
        return chooser

    def _make_room(
        self, ledger: CapacityLedger, chooser: Chooser, nbytes: int, actions: list[Action], model: str,
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
            if self.valve_admission:  # _valve_slot has its own gate (the maximum, the budget)
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
        stalling one. Not while the cluster is at its maximum with nothing starting (there
        the valve would become standing capacity) unless ``valve_lend_at_max``, priced
        for a burst's end instead of a start-up; nor when what the lent slots and this
        one are expected to degrade does not fit ``valve_budget``
        (:mod:`policies.valve_budget`). With ``valve_lend_active``, a full worker's slot
        when no idle resident's can be lent (its group degrades at once).
        """
        snap = ledger.snap
        at_max = chooser.incoming <= 0 and len(snap.workers) >= snap.max_workers
        if at_max and not (self.valve_lend_at_max and self.valve_budget is not None):
            return None
        held = chooser.held
        key = ledger.latency_plus_key()
        best, best_key = None, None
        for load in ledger.loads.values():
            view = load.view
            if (view.status is not _RUNNING or load.n_active + len(load.idle) >= view.valve_batch
                    or load.mem_used + nbytes > view.memory_bytes or not view.serves(model)):
                continue
            full = load.n_active >= view.max_batch
            if full and not self.valve_lend_active:
                continue
            k = (full, key(load)[0])  # an idle resident's slot before a full worker's
            if best_key is None or k < best_key:
                best, best_key = load, k
        if best is None:
            return None
        full = best_key[0]
        if self.valve_budget is not None:
            if chooser.outlook is None:  # read once per decision, when a lend is first possible
                chooser.outlook = ValveOutlook.of(snap)
            lent = _lent_workers(ledger, chooser.outlook.period_s)
            if not lend_fits(snap, chooser.outlook, lent, best.view.valve_batch, self.valve_budget, degrading=full,
                             at_max_batch=best.view.max_batch if at_max else None):
                return None  # the valve's budget of degraded chunks does not cover another lend
        if held.get(best.address, 0) > 0:
            held[best.address] -= 1  # the slot it takes is one an idle session kept
        best.version += 1
        return best

    def _rebalance(self, ledger: CapacityLedger, chooser: Chooser, actions: list[Action], moved: set[str]) -> None:
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

    def _plan(self, ledger: CapacityLedger, chooser: Chooser, moved: set[str]) -> tuple[list[tuple], float, float]:
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
