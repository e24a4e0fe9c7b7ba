"""The incremental ledger of admission (policies.ledger_cache.LedgerCache) equals a full build.

Admission between ticks rebuilds only the workers whose sessions changed since the last
ledger; every other count is carried over. Whatever happens to the snapshot between two
admissions (sessions changing status or worker, appearing, disappearing, reordered,
listed twice; workers changing status, joining, leaving) and whatever the last decision
booked, the cached ledger must count exactly what a full :class:`CapacityLedger` counts,
and its rebalance pre-check (``latency_within``) must answer what the full scan does.
"""

from __future__ import annotations

import random
from dataclasses import replace

from policies.admission import CapacityLedger
from policies.ledger_cache import LedgerCache
from policies.types import BatchLatencyModel, SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView

LATENCY = BatchLatencyModel((1, 2, 4), (0.3, 0.5, 0.9), context_slope_s=0.0013)
STATUSES = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING, SessionStatus.PENDING,
            SessionStatus.SUSPENDED)


def counts(ledger: CapacityLedger):
    """Everything a policy reads from a ledger, by object identity (floats to the bit)."""
    loads = [(address, id(ld.view), ld.n_active, float(ld.ctx_sum).hex(), ld.mem_used, ld.n_sessions,
              [id(s) for s in ld.active], [id(s) for s in ld.idle]) for address, ld in ledger.loads.items()]
    return loads, [id(s) for s in ledger.pending], [id(s) for s in ledger.suspended]


def a_session(rng: random.Random, sid: str, addresses: list[str]) -> SessionView:
    status = rng.choice(STATUSES)
    on = status in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING)
    worker = rng.choice(addresses + [None, "gone"]) if on else None
    return SessionView(sid, status, worker, state_bytes=rng.choice([0, 1, 2, 3]), model="m",
                       since_s=rng.choice([0.0, 1.0, 2.5]), chunk_period_s=0.75,
                       context_frames=rng.choice([0.0, 0.1, 12.0, 1 / 3, 7.7]))


def change(rng: random.Random, sessions: list[SessionView], workers: list[WorkerView], fresh) -> None:
    """One random change of the snapshot between two admissions, in place."""
    addresses = [w.address for w in workers]
    op = rng.random()
    if op < 0.35 and sessions:
        i = rng.randrange(len(sessions))
        sessions[i] = a_session(rng, sessions[i].session_id, addresses)
    elif op < 0.5 and sessions:
        del sessions[rng.randrange(len(sessions))]
    elif op < 0.75:
        sessions.insert(rng.randrange(len(sessions) + 1), a_session(rng, fresh(), addresses))
    elif op < 0.82 and len(sessions) > 1:
        i, j = rng.randrange(len(sessions)), rng.randrange(len(sessions))
        sessions[i], sessions[j] = sessions[j], sessions[i]
    elif op < 0.86 and sessions:
        sessions.insert(rng.randrange(len(sessions) + 1), rng.choice(sessions))  # the same object twice
    elif op < 0.9 and sessions:
        sessions.insert(rng.randrange(len(sessions) + 1), replace(rng.choice(sessions)))  # the same id twice
    elif op < 0.95:
        k = rng.randrange(len(workers))
        workers[k] = replace(workers[k], status=rng.choice([WorkerStatus.RUNNING, WorkerStatus.DRAINING,
                                                            WorkerStatus.STARTING]))
        if rng.random() < 0.3:
            workers.append(WorkerView(f"w{len(workers) + rng.randint(0, 3)}", memory_bytes=20, max_batch=4))
        if rng.random() < 0.2 and len(workers) > 1:
            workers.pop(0)
    else:
        rng.shuffle(sessions)


def book_something(rng: random.Random, ledger: CapacityLedger) -> None:
    """What a decision does to its ledger: place, move (and undo), release."""
    loads = list(ledger.loads.values())
    if not loads:
        return
    load = rng.choice(loads)
    kind = rng.random()
    if kind < 0.5 and ledger.pending:
        ledger.book(ledger.pending[0], load, active=True, nbytes=1)
    elif kind < 0.8 and load.active:
        target, s = rng.choice(loads), load.active[0]
        ledger.move(s, load, target)
        if rng.random() < 0.5:
            ledger.undo_move(s, load, target)
    elif load.active:
        ledger.release_compute(load.active[0], load)


def test_the_cached_ledger_counts_what_a_full_build_counts_whatever_changed_in_between():
    checked = 0
    for seed in range(120):
        rng = random.Random(seed)
        workers = [WorkerView(f"w{i}", memory_bytes=20, max_batch=4) for i in range(rng.randint(1, 5))]
        names = iter(f"s{i}" for i in range(10**6))
        sessions = [a_session(rng, next(names), [w.address for w in workers]) for _ in range(rng.randint(0, 12))]
        cache = LedgerCache()
        for step in range(40):
            for _ in range(rng.randint(0, 4)):
                change(rng, sessions, workers, lambda: next(names))
            slo = rng.choice([0.9, 0.9, 0.5, 2.0])
            snap = Snapshot(now_s=float(step), workers=tuple(workers), sessions=tuple(sessions), latency=LATENCY,
                            slo_s=slo)
            new_bytes = rng.choice([None, 2])
            cached = cache.ledger(snap, new_bytes)
            assert counts(cached) == counts(CapacityLedger(snap, new_bytes)), (seed, step)
            for _ in range(rng.randint(0, 3)):
                book_something(rng, cached)
                for limit in (slo, 0.7):
                    full_scan = all(cached.latency(ld) <= limit for ld in cached.loads.values() if ld.n_active)
                    assert cached.latency_within(limit) == full_scan, (seed, step)
            checked += 1
    assert checked == 120 * 40
