"""Model pools in the policies: a worker serves the models of ``WorkerView.models`` only.

A session goes, moves or comes back only to a worker that serves its model; a worker
with ``models=None`` serves any model (the behaviour before pools, which every other
test and the golden logs keep).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.admission import CapacityLedger
from policies.combined import Combined
from policies.registry import make
from policies.types import (
    BatchLatencyModel,
    GiB,
    Migrate,
    Place,
    Reject,
    Resume,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

PENDING, ACTIVE, IDLE, SUSPENDED = (SessionStatus.PENDING, SessionStatus.ACTIVE, SessionStatus.IDLE,
                                    SessionStatus.SUSPENDED)
A, B = "tiny", "tiny-b"
ONLY_A, ONLY_B = frozenset({A}), frozenset({B})
PLACEMENTS = [
    ("round-robin", {}),
    ("least-loaded", {}),
    ("migration-aware", {}),
    ("migration-aware", {"keep_idle_slots": True, "min_gain": 0.0}),
]
LATENCY = BatchLatencyModel((1, 8), (0.1, 0.8))


def placement(name: str, kw: dict, **extra):
    return make("placement", name, **kw, **extra)


def decide(policy, snap: Snapshot):
    actions, _ = policy.decide(snap, policy.initial_state())
    return actions


@pytest.mark.parametrize("name,kw", PLACEMENTS)
def test_a_pending_session_of_model_b_goes_only_to_a_worker_serving_b(name, kw):
    # w1 (serving A only) is empty and would win on every ranking; w2 serves B and is busier.
    snap = Snapshot(
        now_s=10.0,
        workers=(WorkerView("w1", models=ONLY_A), WorkerView("w2", models=ONLY_B)),
        sessions=(
            SessionView("b-busy", ACTIVE, "w2", state_bytes=GiB, model=B),
            SessionView("b-new", PENDING, model=B),
        ),
        latency=LATENCY,
    )
    places = [a for a in decide(placement(name, kw), snap) if isinstance(a, Place)]
    assert [(a.session_id, a.worker) for a in places] == [("b-new", "w2")]


@pytest.mark.parametrize("name,kw", PLACEMENTS)
def test_a_session_no_worker_serves_stays_pending_or_is_refused_naming_its_model(name, kw):
    snap = Snapshot(now_s=0.0, workers=(WorkerView("w1", models=ONLY_A),),
                    sessions=(SessionView("b-new", PENDING, model=B),), latency=LATENCY)
    assert decide(placement(name, kw), snap) == []
    (reject,) = decide(placement(name, kw, on_full="refuse"), snap)
    assert isinstance(reject, Reject) and reject.session_id == "b-new" and repr(B) in reject.cause


@pytest.mark.parametrize("name,kw", PLACEMENTS)
def test_a_full_pool_does_not_hide_another_pools_room(name, kw):
    # The B pool is full; an A session after a B one must still find the A worker (misses
    # are remembered per model, not for the whole cluster).
    snap = Snapshot(
        now_s=10.0,
        workers=(WorkerView("wa", models=ONLY_A, max_batch=2), WorkerView("wb", models=ONLY_B, max_batch=1)),
        sessions=(
            SessionView("b-busy", ACTIVE, "wb", state_bytes=GiB, model=B),
            SessionView("b-new", PENDING, model=B, since_s=1.0),
            SessionView("a-new", PENDING, model=A, since_s=2.0),
        ),
        latency=LATENCY,
    )
    places = {a.session_id: a.worker for a in decide(placement(name, kw), snap) if isinstance(a, Place)}
    assert places == {"a-new": "wa"}


@pytest.mark.parametrize("name,kw", PLACEMENTS)
def test_draining_moves_a_session_only_into_its_own_pool(name, kw):
    snap = Snapshot(
        now_s=10.0,
        workers=(
            WorkerView("old", WorkerStatus.DRAINING, models=frozenset({A, B})),
            WorkerView("wa", models=ONLY_A),
            WorkerView("wb", models=ONLY_B),
        ),
        sessions=(
            SessionView("a1", ACTIVE, "old", state_bytes=GiB, model=A),
            SessionView("b1", ACTIVE, "old", state_bytes=GiB, model=B),
        ),
        latency=LATENCY,
    )
    moves = {a.session_id: a.target for a in decide(placement(name, kw), snap) if isinstance(a, Migrate)}
    assert moves == {"a1": "wa", "b1": "wb"}


def test_rebalancing_never_moves_a_session_into_a_pool_that_does_not_serve_it():
    # w1 holds 6 A sessions and is by far the slowest; the only idle worker serves B.
    sessions = tuple(SessionView(f"a{i}", ACTIVE, "w1", state_bytes=GiB, model=A) for i in range(6))
    snap = Snapshot(now_s=10.0, workers=(WorkerView("w1", models=ONLY_A), WorkerView("w2", models=ONLY_B)),
                    sessions=sessions, latency=LATENCY, migrate_bytes_per_s=1e12)
    assert decide(make("placement", "migration-aware", min_gain=0.0), snap) == []
    # The same cluster without pools does rebalance (so the test above can fail).
    open_snap = Snapshot(now_s=10.0, workers=(WorkerView("w1"), WorkerView("w2")), sessions=sessions,
                         latency=LATENCY, migrate_bytes_per_s=1e12)
    moves = [a for a in decide(make("placement", "migration-aware", min_gain=0.0), open_snap) if isinstance(a, Migrate)]
    assert moves and all(a.target == "w2" for a in moves)


def test_a_prefetched_resume_goes_back_only_into_the_sessions_pool():
    snap = Snapshot(
        now_s=100.0,
        workers=(WorkerView("wa", models=ONLY_A), WorkerView("wb", models=ONLY_B)),
        sessions=(
            SessionView("a-busy", ACTIVE, "wa", state_bytes=GiB, model=A),
            SessionView("b-away", SUSPENDED, None, state_bytes=GiB, model=B, next_active_s=105.0),
        ),
        latency=LATENCY,
    )
    resumes = [a for a in decide(make("offload", "idle-timeout", prefetch_s=10.0), snap) if isinstance(a, Resume)]
    assert [(a.session_id, a.worker) for a in resumes] == [("b-away", "wb")]


def test_the_ledger_fits_only_sessions_of_a_served_model():
    snap = Snapshot(now_s=0.0, workers=(WorkerView("w1", models=ONLY_A), WorkerView("w2")), sessions=())
    ledger = CapacityLedger(snap)
    assert ledger.loads["w1"].fits(GiB, active=True, model=A)
    assert not ledger.loads["w1"].fits(GiB, active=True, model=B)
    assert ledger.loads["w1"].fits(GiB, active=True)  # no model named: the pool is not asked
    assert ledger.loads["w2"].fits(GiB, active=True, model=B)  # models=None serves any


# ---------------------------------------------------------------- properties

MODELS = (A, B, "wan-1.3b")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pooled_snapshots(draw) -> Snapshot:
    """Workers with random pools (or None); sessions on a device sit in a pool that serves them."""
    workers = []
    for i in range(draw(st.integers(1, 6))):
        models = draw(st.none() | st.frozensets(st.sampled_from(MODELS), min_size=1))
        status = draw(st.sampled_from([WorkerStatus.RUNNING, WorkerStatus.RUNNING, WorkerStatus.DRAINING]))
        workers.append(WorkerView(f"w{i}", status, memory_bytes=draw(st.integers(2, 8)) * GiB,
                                  max_batch=draw(st.integers(1, 4)), models=models))
    slots = {w.address: 0 for w in workers}
    used = {w.address: 0 for w in workers}
    sessions = []
    for j in range(draw(st.integers(0, 20))):
        model = draw(st.sampled_from(MODELS))
        status = draw(st.sampled_from([PENDING, PENDING, ACTIVE, IDLE, SUSPENDED]))
        nbytes = draw(st.integers(0, 2)) * GiB if status is PENDING else GiB
        worker = None
        if status in (ACTIVE, IDLE):
            w = draw(st.sampled_from(workers))
            ok = w.serves(model) and used[w.address] + nbytes <= w.memory_bytes
            ok = ok and (status is IDLE or slots[w.address] < w.max_batch)
            if ok:
                worker = w.address
                used[worker] += nbytes
                slots[worker] += status is ACTIVE
            else:
                status = SUSPENDED
        sessions.append(SessionView(f"s{j}", status, worker, state_bytes=nbytes, model=model,
                                    since_s=draw(st.floats(0.0, 90.0)),
                                    next_active_s=draw(st.none() | st.floats(95.0, 120.0))))
    return Snapshot(now_s=100.0, workers=tuple(workers), sessions=tuple(sessions), latency=LATENCY,
                    migrate_bytes_per_s=draw(st.sampled_from([1e9, 1e12])))


def target_of(action) -> str | None:
    if isinstance(action, (Place, Resume)):
        return action.worker
    if isinstance(action, Migrate):
        return action.target
    return None


@pytest.mark.parametrize("name,kw", PLACEMENTS)
@SETTINGS
@given(snap=pooled_snapshots())
def test_property_no_action_sends_a_session_to_a_worker_outside_its_pool(name, kw, snap):
    policy = Combined(placement(name, kw), make("autoscaling", "fixed"), make("offload", "idle-timeout"))
    actions, _ = policy.decide(snap, policy.initial_state())
    workers = {w.address: w for w in snap.workers}
    sessions = {s.session_id: s for s in snap.sessions}
    for a in actions:
        target = target_of(a)
        if target is not None:
            assert workers[target].serves(sessions[a.session_id].model), f"{a!r} leaves the pool of its model"


@pytest.mark.parametrize("name,kw", PLACEMENTS)
@SETTINGS
@given(snap=pooled_snapshots())
def test_property_workers_serving_every_model_decide_as_workers_without_pools(name, kw, snap):
    everything = frozenset(MODELS)
    pooled = replace(snap, workers=tuple(replace(w, models=everything) for w in snap.workers))
    unpooled = replace(snap, workers=tuple(replace(w, models=None) for w in snap.workers))
    assert decide(placement(name, kw), pooled) == decide(placement(name, kw), unpooled)
