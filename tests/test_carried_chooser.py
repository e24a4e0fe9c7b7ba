"""A placement chooser carried from one admission to the next decides as one built afresh.

Admission between the simulator's ticks decides on ledgers of a
:class:`~policies.ledger_cache.LedgerCache`; placement then keeps its
:class:`~policies.choosers.HeapChooser` (the heap of workers, the slots kept for idle
sessions) from one such ledger to the next and re-ranks only the workers counted again
(:meth:`HeapChooser.renew`). Whatever changed in the snapshot between two admissions
and whatever the previous decision booked, a policy deciding that way must give the
same actions as one deciding on a full :class:`~policies.admission.CapacityLedger` with
a chooser built over every worker.

The policies deciding on full ledgers free kept slots by a scan of every worker (the
rule as first written), the others through the chooser's kept-slot heap.

The random snapshots are those of ``tests/test_ledger_cache.py`` but without two views
of one session id: two idle views of one id on two workers would tie in the choice of
the slot to free, which then falls to the order of the kept-slot table (a carried table
lists a worker where it first kept a slot, a fresh one in snapshot order).
"""

from __future__ import annotations

import random
from dataclasses import replace

from policies.admission import CapacityLedger
from policies.choosers import HeapChooser
from policies.ledger_cache import LedgerCache
from policies.placement import LeastLoaded, MigrationAware, _kept_slots
from policies.types import BatchLatencyModel, Offload, SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView

LATENCY = BatchLatencyModel((1, 2, 4), (0.3, 0.5, 0.9), context_slope_s=0.0013)
STATUSES = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.IDLE, SessionStatus.MIGRATING,
            SessionStatus.PENDING, SessionStatus.SUSPENDED)


def a_session(rng: random.Random, sid: str, addresses: list[str]) -> SessionView:
    status = rng.choice(STATUSES)
    on = status in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING)
    worker = rng.choice(addresses + [None, "gone"]) if on else None
    return SessionView(sid, status, worker, state_bytes=rng.choice([0, 1, 2, 3, 7]), model="m",
                       since_s=rng.choice([0.0, 1.0, 2.5, 5.0]), chunk_period_s=rng.choice([0.75, 1.5]),
                       context_frames=rng.choice([0.0, 0.1, 12.0, 1 / 3, 7.7]))


def a_worker(rng: random.Random, address: str) -> WorkerView:
    return WorkerView(address, rng.choice([WorkerStatus.RUNNING] * 4 + [WorkerStatus.DRAINING, WorkerStatus.STARTING]),
                      memory_bytes=rng.choice([6, 20]), max_batch=rng.choice([1, 2, 3]),
                      models=rng.choice([None, None, frozenset({"m"}), frozenset({"other"})]))


def change(rng: random.Random, sessions: list[SessionView], workers: list[WorkerView], fresh) -> None:
    """One random change of the snapshot between two admissions, in place (ids stay unique)."""
    addresses = [w.address for w in workers]
    op = rng.random()
    if op < 0.4 and sessions:
        i = rng.randrange(len(sessions))
        sessions[i] = a_session(rng, sessions[i].session_id, addresses)
    elif op < 0.55 and sessions:
        del sessions[rng.randrange(len(sessions))]
    elif op < 0.8:
        sessions.insert(rng.randrange(len(sessions) + 1), a_session(rng, fresh(), addresses))
    elif op < 0.87 and len(sessions) > 1:
        i, j = rng.randrange(len(sessions)), rng.randrange(len(sessions))
        sessions[i], sessions[j] = sessions[j], sessions[i]
    elif op < 0.9 and sessions:
        sessions.insert(rng.randrange(len(sessions) + 1), rng.choice(sessions))  # the same object twice
    elif op < 0.94:
        k = rng.randrange(len(workers))
        workers[k] = replace(a_worker(rng, workers[k].address))
        if rng.random() < 0.3:
            workers.append(a_worker(rng, f"w{len(workers) + rng.randint(0, 3)}"))
        if rng.random() < 0.2 and len(workers) > 1:
            workers.pop(0)
    else:
        rng.shuffle(sessions)


def dedup(sessions: list[SessionView]) -> list[SessionView]:
    """One view per id (a view object listed twice stays: the cache then counts in full)."""
    seen: dict[str, SessionView] = {}
    return [s for s in sessions if seen.setdefault(s.session_id, s) is s]


def views(workers: list[WorkerView], last: tuple[WorkerView, ...]) -> tuple[WorkerView, ...]:
    """The snapshot's worker views: the previous tuple itself while no worker changed (as the simulator's)."""
    return last if list(last) == workers and all(a is b for a, b in zip(last, workers)) else tuple(workers)


class ScanningMigrationAware(MigrationAware):
    """The rule for a kept slot written as a scan of every worker (what the kept-slot heap must find)."""

    def _make_room(self, ledger, chooser, nbytes, actions, model, returning=False):
        if not self.keep_idle_slots or not chooser.held:
            return None
        held, acted, now = chooser.held, ledger.acted, ledger.snap.now_s
        protect = 0.0
        if not returning and chooser.incoming > 0:
            protect = ledger.snap.worker_startup_s if self.keep_idle_s is None else self.keep_idle_s
        best, best_key, victim = None, None, None
        for address, n in held.items():
            load = ledger.loads[address]
            view = load.view
            if (n <= 0 or view.status is not WorkerStatus.RUNNING or load.n_active >= view.max_batch
                    or load.mem_used + nbytes > view.memory_bytes or not view.serves(model)):
                continue
            idle = [s for s in load.idle if s.session_id not in acted
                    and now - s.since_s >= max(2.0 * s.chunk_period_s, protect)]
            if idle:
                oldest = min(idle, key=lambda s: (s.since_s, s.session_id))
                k = (ledger.latency_plus(load), oldest.since_s, oldest.session_id)
                if best_key is None or k < best_key:
                    best, best_key, victim = load, k, oldest
        if best is None:
            if protect > 0:
                chooser.incoming -= 1
            return None
        acted.add(victim.session_id)
        held[best.address] -= 1
        best.version += 1
        actions.append(Offload(victim.session_id, tier="host", cause="evict: its kept batch slot goes to a pending session"))
        return best


def policies(migration_aware=MigrationAware) -> list:
    return [
        migration_aware(keep_idle_slots=True, max_migrations=2, plan_limit=4),
        migration_aware(keep_idle_slots=True, keep_idle_s=1.0, max_migrations=0, on_full="refuse"),
        MigrationAware(keep_idle_slots=False),
        LeastLoaded(max_drain_migrations=1),
    ]


def test_a_carried_chooser_decides_as_a_fresh_one_over_random_admissions():
    decided = carried = 0
    for seed in range(150):
        rng = random.Random(seed)
        workers = [a_worker(rng, f"w{i}") for i in range(rng.randint(1, 6))]
        names = iter(f"s{i}" for i in range(10**6))
        sessions = [a_session(rng, next(names), [w.address for w in workers]) for _ in range(rng.randint(0, 14))]
        on_cache, on_full = policies(), policies(ScanningMigrationAware)
        caches = [LedgerCache() for _ in on_cache]
        worker_views: tuple[WorkerView, ...] = ()
        slo = rng.choice([0.4, 0.9])
        for step in range(30):
            for _ in range(rng.randint(0, 3)):
                change(rng, sessions, workers, lambda: next(names))
            sessions[:] = dedup(sessions)
            worker_views = views(workers, worker_views)
            snap = Snapshot(now_s=2.0 + step, workers=worker_views, sessions=tuple(sessions), latency=LATENCY,
                            slo_s=slo, worker_startup_s=rng.choice([0.5, 4.0]))
            new_bytes = rng.choice([None, 2])
            for cache, policy, twin in zip(caches, on_cache, on_full):
                ledger = cache.ledger(snap, new_bytes)
                carried += ledger.recounted is not None and policy in ledger.carry
                got, _ = policy.decide_on(ledger, policy.initial_state())
                want, _ = twin.decide_on(CapacityLedger(snap, new_bytes), twin.initial_state())
                assert got == want, (seed, step, policy)
                decided += 1
    assert decided == 150 * 30 * 4
    assert carried > decided // 2  # most decisions did carry a chooser over


def test_a_renewed_chooser_picks_what_a_fresh_one_picks_between_bookings():
    for seed in range(150):
        rng = random.Random(1000 + seed)
        workers = [a_worker(rng, f"w{i}") for i in range(rng.randint(1, 6))]
        names = iter(f"s{i}" for i in range(10**6))
        sessions = [a_session(rng, next(names), [w.address for w in workers]) for _ in range(rng.randint(0, 14))]
        cache = LedgerCache()
        chooser = None
        worker_views: tuple[WorkerView, ...] = ()
        renewed = 0
        for step in range(30):
            for _ in range(rng.randint(0, 3)):
                change(rng, sessions, workers, lambda: next(names))
            sessions[:] = dedup(sessions)
            worker_views = views(workers, worker_views)
            snap = Snapshot(now_s=float(step), workers=worker_views, sessions=tuple(sessions), latency=LATENCY)
            ledger = cache.ledger(snap)
            loads = ledger.loads.values()
            key = ledger.latency_plus_key()
            if chooser is None or ledger.recounted is None:
                chooser = HeapChooser(loads, key, held=_kept_slots(loads))
            else:
                chooser.renew(loads, ledger.recounted, key, _kept_slots)
                renewed += 1
            fresh = HeapChooser(loads, key, held=_kept_slots(loads))
            assert chooser.held == fresh.held, (seed, step)
            for _ in range(rng.randint(0, 6)):
                nbytes, model = rng.choice([0, 1, 3, 8]), rng.choice([None, "m", "other"])
                exclude = rng.choice([None, None, *loads]) if loads else None
                got, want = chooser.pick(nbytes, exclude, model), fresh.pick(nbytes, exclude, model)
                assert got is want, (seed, step)
                if got is not None and ledger.pending:
                    ledger.book(ledger.pending[0], got, active=True, nbytes=nbytes)
                    chooser.refresh(got)
                    fresh.refresh(got)
        assert renewed > 0, seed
