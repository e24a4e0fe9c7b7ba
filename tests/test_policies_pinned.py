"""The TurboServe policy set decides exactly as pinned on large random snapshots.

The hashes were computed before the decision-time optimisations of the placement
chooser, migration planner and idle-timeout offload; any change to a decision (an
action, its order, its cause, or the next state) changes a hash. A deliberate change of
behaviour must recompute them (and say why in its commit).

Recomputed once, on purpose: the load-driven autoscaler now sizes a GPU by the batch
that meets the SLO (and the memory), fills ``target_utilisation`` of it, measures its
headroom over the start-up horizon, scales in after a start-up time, and retires the
workers with the fewest active sessions (issue 9).
"""

from __future__ import annotations

import hashlib

import pytest

from experiments.bench_policies import build_snapshot
from policies.combined import Combined
from policies.registry import make

# (sessions, workers, new workers, migrate bytes/s, seed), offload kwargs -> (actions, next state, n actions)
PINNED = {
    ((10_000, 1024, 0, 25e9, 0), ()): ("e4b85923e04e5ec8", "2c70b7476965f7fc", 2452),
    ((10_000, 1024, 102, 200e9, 0), ()): ("6303236c5df7f1c9", "2c70b7476965f7fc", 2452),
    ((3000, 300, 30, 200e9, 1), ()): ("3714b713ab41c64c", "a0ea8fd9c378b9c8", 693),
    ((5000, 256, 64, 200e9, 3), ()): ("f13d9305d0ebf9d8", "bfb63b1ccc494fce", 1186),
    ((5000, 256, 64, 200e9, 3), (("low_water", 0.3), ("high_water", 0.5))): ("c168aa9fdc558f07", "bfb63b1ccc494fce", 537),
    ((2000, 100, 0, 25e9, 2), (("idle_s", 300.0), ("high_water", 0.2))): ("259409ba0c4285b4", "0ef787f7e82e8b12", 363),
}


def _digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def decide_once(sizes: tuple, offload_kwargs: tuple) -> tuple[str, str, int]:
    """Hashes of the actions and next state of one migration-aware + load-driven + idle-timeout decision."""
    n_sessions, n_workers, new_workers, bandwidth, seed = sizes
    snap = build_snapshot(n_sessions, n_workers, new_workers=new_workers, migrate_bytes_per_s=bandwidth, seed=seed)
    combined = Combined(
        make("placement", "migration-aware"), make("autoscaling", "load-driven"), make("offload", "idle-timeout", **dict(offload_kwargs))
    )
    actions, state = combined.decide(snap, combined.initial_state())
    return _digest(actions), _digest(state), len(actions)


@pytest.mark.parametrize(("case", "expected"), list(PINNED.items()), ids=[f"{k[0][0]}x{k[0][1]}-{dict(k[1])}" for k in PINNED])
def test_combined_decisions_are_unchanged(case: tuple, expected: tuple[str, str, int]) -> None:
    assert decide_once(*case) == expected


def test_ledger_counts_every_on_device_session_once() -> None:
    from policies.admission import CapacityLedger
    from policies.types import SessionStatus, SessionView, Snapshot, WorkerView

    A, I, M, S = SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.MIGRATING, SessionStatus.SUSPENDED
    sessions = (
        SessionView("a1", A, "w1", state_bytes=1, context_frames=0.1),
        SessionView("m1", M, "w1", state_bytes=2, context_frames=0.2),
        SessionView("i1", I, "w1", state_bytes=4, context_frames=9.0),
        SessionView("a2", A, "w1", state_bytes=8, context_frames=0.3),
        SessionView("i2", I, "w2", state_bytes=16),
        SessionView("gone", A, "w-unknown", state_bytes=32),
        SessionView("s1", S, None, state_bytes=64),
    )
    ledger = CapacityLedger(Snapshot(now_s=0.0, workers=(WorkerView("w1"), WorkerView("w2")), sessions=sessions))
    w1, w2 = ledger.loads["w1"], ledger.loads["w2"]
    assert (w1.n_active, w1.n_sessions, w1.mem_used) == (3, 4, 15)
    assert w1.ctx_sum == 0.1 + 0.2 + 0.3  # the running total, in snapshot order
    assert [s.session_id for s in w1.active] == ["a1", "a2"] and [s.session_id for s in w1.idle] == ["i1"]
    assert (w2.n_active, w2.n_sessions, w2.mem_used, w2.ctx_sum) == (0, 1, 16, 0.0)
    assert [s.session_id for s in ledger.suspended] == ["s1"]
