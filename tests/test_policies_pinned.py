"""The TurboServe policy set decides as its golden decision log says, on random snapshots.

``tests/golden/policies_decisions.json`` holds, for a few random but plausible
snapshots (``experiments.bench_policies.build_snapshot``), every action one
migration-aware + load-driven + idle-timeout decision takes (type, session, worker or
target, cause) and the autoscaler's next state, one action a line: a reviewer reads
*what* changed in a diff. Regenerate with ``TURBOSERVE_REGOLD=1`` after a deliberate
change of behaviour, and say why in the commit. The hypothesis invariants
(``tests/test_policies_properties.py``) say what must hold whatever the decisions; the
decision-time benchmark (``experiments.bench_policies``) keeps the large sizes.

History: hashes of decisions at 10,000 sessions x 1,024 workers pinned the policies
through their speed work; the load-driven redesign of issue 9 changed them on purpose,
and this log replaced them.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from experiments.bench_policies import build_snapshot
from policies.combined import Combined
from policies.registry import make
from policies.types import Migrate, Place, Resume, Retire, ScaleTo

GOLDEN = pathlib.Path(__file__).parent / "golden" / "policies_decisions.json"
# name -> (sessions, workers, new workers, migrate bytes/s, seed, offload kwargs)
CASES = {
    "steady-60x8": (60, 8, 0, 25e9, 0, {}),
    "scale-out-80x8": (80, 8, 2, 200e9, 1, {}),
    "crowded-120x10": (120, 10, 0, 25e9, 3, {"low_water": 0.3, "high_water": 0.5}),
    "long-idle-40x4": (40, 4, 0, 25e9, 2, {"idle_s": 300.0, "high_water": 0.2}),
}


def _row(action) -> list:
    where = {Place: "worker", Resume: "worker", Migrate: "target", Retire: "worker"}.get(type(action))
    return [type(action).__name__, getattr(action, "session_id", ""),
            getattr(action, where) if where else (str(action.n) if isinstance(action, ScaleTo) else ""),
            action.cause]


def decide_once(case: tuple) -> dict:
    """Every action of one decision, and the autoscaler's next state, as plain data."""
    n_sessions, n_workers, new_workers, bandwidth, seed, offload_kwargs = case
    snap = build_snapshot(n_sessions, n_workers, new_workers=new_workers, migrate_bytes_per_s=bandwidth, seed=seed)
    combined = Combined(make("placement", "migration-aware"), make("autoscaling", "load-driven"),
                        make("offload", "idle-timeout", **offload_kwargs))
    actions, state = combined.decide(snap, combined.initial_state())
    return {"actions": [_row(a) for a in actions], "autoscaler_state": repr(state[1])}


@pytest.mark.parametrize("name", list(CASES))
def test_combined_decisions_follow_the_golden_log(name: str) -> None:
    log = decide_once(CASES[name])
    if os.environ.get("TURBOSERVE_REGOLD"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = log
        lines = ["{"]
        for k, key in enumerate(sorted(golden)):
            entry = golden[key]
            lines.append(f' "{key}": {{')
            lines.append(f'  "autoscaler_state": {json.dumps(entry["autoscaler_state"])},')
            lines.append('  "actions": [')
            rows = entry["actions"]
            lines += ["   " + json.dumps(r) + ("," if j < len(rows) - 1 else "") for j, r in enumerate(rows)]
            lines.append("  ]")
            lines.append(" }" + ("," if k < len(golden) - 1 else ""))
        lines.append("}")
        GOLDEN.write_text("\n".join(lines) + "\n")
    golden = json.loads(GOLDEN.read_text())[name]
    assert log["autoscaler_state"] == golden["autoscaler_state"]
    assert log["actions"] == golden["actions"]


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
