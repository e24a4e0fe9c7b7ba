"""Decision time of every policy on a large snapshot (default 10k sessions x 1024 GPUs).

Usage::

    python -m experiments.bench_policies [--sessions 10000] [--workers 1024] [--repeats 21]

Two snapshots, built with a seeded generator: ``steady`` (sessions spread at random
over the workers, 5% pending) and ``scale-out`` (the same, plus 10% new empty
workers and a fast GPU-GPU link, so migration-aware placement has a large
rebalancing plan to find). For each
policy it prints the median and the minimum wall time of ``decide`` over
``--repeats`` runs (on a shared machine the minimum is the cleaner number), the median
process CPU time (``cpu ms``: what other jobs on the machine do not stretch), the
number of actions, the median as a multiple of one pass over the snapshot (building
the :class:`~policies.admission.CapacityLedger`, the floor every policy pays), and the
median as a share of the 10 ms target for "placement of the pending sessions +
autoscaling" (the ``migration-aware+load-driven+never`` combined row: one ledger
shared by both; the ``sum`` row is the two policies called apart, two ledgers).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any, Callable

from policies.admission import CapacityLedger
from policies.combined import Combined
from policies.registry import make, names
from policies.types import GiB, BatchLatencyModel, Migrate, SessionStatus, SessionView, Snapshot, WorkerView

TARGET_MS = 10.0
# A Wan-1.3B-like step-time curve on one H100 (seconds per coalesced chunk step).
LATENCY = BatchLatencyModel((1, 2, 4, 8, 16, 32), (0.25, 0.30, 0.40, 0.60, 1.00, 1.80), context_slope_s=0.0005)


def build_snapshot(
    n_sessions: int, n_workers: int, *, new_workers: int = 0, migrate_bytes_per_s: float = 25e9, seed: int = 0
) -> Snapshot:
    """A random but plausible cluster: 60% active, 20% idle, 15% suspended, 5% pending."""
    rng = random.Random(seed)
    workers = [WorkerView(f"gpu-{i:04d}", memory_bytes=80 * GiB, max_batch=8) for i in range(n_workers + new_workers)]
    room = {w.address: [w.memory_bytes, w.max_batch] for w in workers[:n_workers]}
    addresses = list(room)
    sessions = []
    for j in range(n_sessions):
        u = rng.random()
        nbytes = rng.choice((1, 2, 3)) * GiB
        status = (
            SessionStatus.ACTIVE if u < 0.6 else SessionStatus.IDLE if u < 0.8 else SessionStatus.SUSPENDED if u < 0.95 else SessionStatus.PENDING
        )
        worker = None
        if status.on_device:
            worker = rng.choice(addresses)
            mem, slots = room[worker]
            active = status is SessionStatus.ACTIVE
            if mem < nbytes or (active and slots == 0):
                status, worker = SessionStatus.SUSPENDED, None
            else:
                room[worker] = [mem - nbytes, slots - active]
        sessions.append(
            SessionView(
                f"s{j:05d}",
                status,
                worker,
                state_bytes=0 if status is SessionStatus.PENDING and rng.random() < 0.5 else nbytes,
                since_s=rng.uniform(0, 600),
                context_frames=rng.uniform(0, 21),
                next_active_s=rng.uniform(600, 700) if rng.random() < 0.3 else None,
            )
        )
    return Snapshot(
        now_s=600.0, workers=tuple(workers), sessions=tuple(sessions), latency=LATENCY, slo_s=0.75,
        min_workers=1, max_workers=4096, migrate_bytes_per_s=migrate_bytes_per_s,
    )


def time_call(fn: Callable[[], Any], repeats: int) -> tuple[float, float, float, Any]:
    """(median wall ms, min wall ms, median CPU ms, last result) of ``fn()`` over ``repeats`` calls."""
    times, cpu = [], []
    result = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(times), min(times), statistics.median(cpu), result


def main(argv: list[str] | None = None) -> None:
    """Print the decision-time table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)

    scenarios = {
        "steady": build_snapshot(args.sessions, args.workers),
        # NVLink-class copies (200 GB/s), so that moving sessions onto the new workers pays.
        "scale-out": build_snapshot(args.sessions, args.workers, new_workers=args.workers // 10, migrate_bytes_per_s=200e9),
    }
    policies = [(kind, name) for kind in ("placement", "autoscaling", "offload") for name in names(kind)]
    print(f"decide() wall time, {args.sessions} sessions x {args.workers} workers, median of {args.repeats}")
    print(f"{'scenario':<10} {'kind':<12} {'policy':<40} {'median ms':>10} {'min ms':>8} {'cpu ms':>8} {'actions':>8} {'migr':>5} {'x ledger':>9} {'/10ms':>6}")
    for label, snap in scenarios.items():
        n_pending = sum(s.status is SessionStatus.PENDING for s in snap.sessions)
        floor, floor_min, floor_cpu, _ = time_call(lambda: CapacityLedger(snap), args.repeats)
        print(
            f"{label:<10} {'-':<12} {'(ledger: one pass over the snapshot)':<40} {floor:>10.2f} {floor_min:>8.2f} "
            f"{floor_cpu:>8.2f} {'':>14} {1:>9.2f} {floor / TARGET_MS:>6.2f}"
        )
        n_running = len(snap.workers)
        rows = [(kind, name, make(kind, name, **({"n": n_running} if name == "fixed" else {}))) for kind, name in policies]
        for offload in ("never", "idle-timeout"):
            combined = Combined(make("placement", "migration-aware"), make("autoscaling", "load-driven"), make("offload", offload))
            rows.append(("combined", combined.name, combined))
        medians = {}
        for kind, name, policy in rows:
            med, fastest, cpu, (actions, _) = time_call(lambda: policy.decide(snap, policy.initial_state()), args.repeats)
            medians[name] = (med, fastest, cpu)
            print(
                f"{label:<10} {kind:<12} {name:<40} {med:>10.2f} {fastest:>8.2f} {cpu:>8.2f} {len(actions):>8} {sum(isinstance(a, Migrate) for a in actions):>5} "
                f"{med / floor:>9.2f} {med / TARGET_MS:>6.2f}"
            )
        pair = [a + b for a, b in zip(medians["migration-aware"], medians["load-driven"])]
        print(
            f"{label:<10} {'sum':<12} {'migration-aware, load-driven apart':<40} {pair[0]:>10.2f} {pair[1]:>8.2f} {pair[2]:>8.2f} {'':>14} "
            f"{pair[0] / floor:>9.2f} {pair[0] / TARGET_MS:>6.2f}   ({n_pending} pending, {len(snap.workers)} workers)"
        )


if __name__ == "__main__":
    main()
