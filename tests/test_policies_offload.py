"""Offload policies and the combined decision on hand-built snapshots."""

from __future__ import annotations

import pytest

from policies.combined import Combined
from policies.registry import make, names
from policies.types import GiB, Offload, Place, Resume, SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView

IDLE, SUSPENDED, ACTIVE = SessionStatus.IDLE, SessionStatus.SUSPENDED, SessionStatus.ACTIVE


def idle(sid, worker="w1", since_s=0.0, nbytes=GiB, **kw):
    return SessionView(sid, IDLE, worker, state_bytes=nbytes, since_s=since_s, **kw)


def suspended(sid, next_active_s=None, nbytes=GiB):
    return SessionView(sid, SUSPENDED, None, state_bytes=nbytes, next_active_s=next_active_s)


def snapshot(sessions, workers=(WorkerView("w1"),), now_s=100.0):
    return Snapshot(now_s=now_s, workers=tuple(workers), sessions=tuple(sessions))


def decide(policy, snap):
    return policy.decide(snap, policy.initial_state())[0]


@pytest.mark.parametrize("name", names("offload"))
def test_no_offload_policy_touches_active_pending_or_closed_sessions(name):
    sessions = [
        SessionView("a", ACTIVE, "w1", state_bytes=GiB, since_s=0.0),
        SessionView("p", SessionStatus.PENDING, since_s=0.0),
        SessionView("c", SessionStatus.CLOSED, since_s=0.0),
    ]
    assert decide(make("offload", name), snapshot(sessions)) == []


def test_never_keeps_idle_sessions_on_the_device():
    assert decide(make("offload", "never"), snapshot([idle("i", since_s=0.0)], now_s=1e6)) == []


def test_idle_timeout_offloads_only_sessions_idle_longer_than_the_timeout():
    policy = make("offload", "idle-timeout", idle_s=30)
    sessions = [idle("old", since_s=50.0), idle("fresh", since_s=80.0), idle("edge", since_s=70.0)]
    actions = decide(policy, snapshot(sessions, now_s=100.0))
    assert [(type(a), a.session_id, a.tier) for a in actions] == [(Offload, "old", "host")]
    assert actions[0].cause == "idle for more than 30s"


def test_idle_timeout_keeps_a_session_that_is_expected_back_soon():
    policy = make("offload", "idle-timeout", idle_s=30, prefetch_s=10)
    sessions = [idle("back-soon", since_s=0.0, next_active_s=105.0), idle("back-later", since_s=0.0, next_active_s=500.0)]
    assert [a.session_id for a in decide(policy, snapshot(sessions))] == ["back-later"]


def test_idle_timeout_offloads_early_above_the_high_water_mark_longest_idle_first():
    policy = make("offload", "idle-timeout", idle_s=1000, high_water=0.5)
    worker = WorkerView("w1", memory_bytes=10 * GiB)
    sessions = [
        SessionView("a", ACTIVE, "w1", state_bytes=3 * GiB),
        idle("newer", since_s=90.0, nbytes=GiB),
        idle("oldest", since_s=10.0, nbytes=GiB),
        idle("older", since_s=20.0, nbytes=GiB),
    ]
    # 6 GiB booked of 10, high water 5 GiB: one idle session must go, the oldest.
    actions = decide(policy, snapshot(sessions, workers=[worker]))
    assert [a.session_id for a in actions] == ["oldest"]
    assert "memory above 50%" in actions[0].cause


def test_idle_timeout_with_a_low_water_mark_keeps_timed_out_sessions_while_memory_is_plentiful():
    policy = make("offload", "idle-timeout", idle_s=30, low_water=0.5)
    worker = WorkerView("w1", memory_bytes=10 * GiB)
    # 3 GiB of 10 booked, all idle for long: at or below 50%, every state stays.
    roomy = [idle(f"i{k}", since_s=float(k), nbytes=GiB) for k in range(3)]
    assert decide(policy, snapshot(roomy, workers=[worker])) == []
    # 7 GiB booked: timed-out sessions go, longest idle first, until back at 5 GiB;
    # the fresh one is never a timeout candidate.
    busy = [SessionView("a", ACTIVE, "w1", state_bytes=2 * GiB)]
    busy += [idle(f"i{k}", since_s=float(k), nbytes=GiB) for k in (3, 1, 2, 0)]
    busy.append(idle("fresh", since_s=95.0, nbytes=GiB))
    actions = decide(policy, snapshot(busy, workers=[worker]))
    assert [a.session_id for a in actions] == ["i0", "i1"]
    assert all(a.cause == "idle for more than 30s" for a in actions)


def test_idle_timeout_without_a_low_water_mark_offloads_on_the_timeout_alone():
    worker = WorkerView("w1", memory_bytes=100 * GiB)
    sessions = [idle("old", since_s=0.0, nbytes=GiB)]
    assert [a.session_id for a in decide(make("offload", "idle-timeout", idle_s=30), snapshot(sessions, workers=[worker]))] == ["old"]


def test_idle_timeout_high_water_still_applies_below_the_timeout_with_a_low_water_mark():
    policy = make("offload", "idle-timeout", idle_s=1000, high_water=0.5, low_water=0.2)
    worker = WorkerView("w1", memory_bytes=10 * GiB)
    sessions = [SessionView("a", ACTIVE, "w1", state_bytes=3 * GiB), idle("n", since_s=90.0), idle("o", since_s=10.0),
                idle("m", since_s=20.0)]
    assert [a.session_id for a in decide(policy, snapshot(sessions, workers=[worker]))] == ["o"]


def test_idle_timeout_prefetches_returning_sessions_onto_a_worker_with_room():
    policy = make("offload", "idle-timeout", prefetch_s=10, high_water=0.9)
    workers = [
        WorkerView("starting", status=WorkerStatus.STARTING),
        WorkerView("full", memory_bytes=2 * GiB),
        WorkerView("roomy", memory_bytes=20 * GiB),
    ]
    sessions = [
        idle("recent", worker="full", since_s=99.0),
        suspended("soon", next_active_s=105.0),
        suspended("later", next_active_s=200.0),
        suspended("unknown"),
    ]
    actions = decide(policy, snapshot(sessions, workers=workers))
    # On "full" it would fill 2 GiB of 2, above the 90% high-water mark.
    assert [(type(a), a.session_id, a.worker) for a in actions] == [(Resume, "soon", "roomy")]
    assert "prefetch" in actions[0].cause
    crowded = [WorkerView("w1", memory_bytes=GiB + GiB // 10)]  # 1 GiB would pass 90%
    assert decide(policy, snapshot(sessions, workers=crowded)) == []


@pytest.mark.parametrize(
    "params, match",
    [
        ({"tier": "tape"}, "tier must be one of"),
        ({"high_water": 0}, "high_water"),
        ({"low_water": 0.95}, "low_water must be in"),
        ({"low_water": -0.1}, "low_water must be in"),
    ],
)
def test_bad_parameters_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        make("offload", "idle-timeout", **params)


def test_combined_never_hands_the_same_memory_to_a_placement_and_a_prefetch():
    worker = WorkerView("w1", memory_bytes=GiB)
    sessions = [
        SessionView("waiting", SessionStatus.PENDING, None, state_bytes=GiB),
        suspended("returning", next_active_s=101.0),
    ]
    snap = snapshot(sessions, workers=[worker])
    placement = make("placement", "least-loaded")
    offload = make("offload", "idle-timeout", high_water=1.0)
    # Separately, each policy gives the one free GiB away.
    assert len(decide(placement, snap)) == len(decide(offload, snap)) == 1
    combined = Combined(placement, make("autoscaling", "fixed", n=1), offload)
    actions, state = combined.decide(snap, combined.initial_state())
    assert [type(a) for a in actions] == [Place]
    assert len(state) == 3


def test_combined_autoscaler_sees_sessions_left_pending():
    worker = WorkerView("w1", max_batch=1)
    sessions = [SessionView(f"p{i}", SessionStatus.PENDING) for i in range(3)]
    snap = Snapshot(now_s=0.0, workers=(worker,), sessions=tuple(sessions), max_workers=10)
    combined = Combined(make("placement", "least-loaded"), make("autoscaling", "load-driven"), make("offload", "never"))
    actions, _ = combined.decide(snap, combined.initial_state())
    # One placed; all three still count as demand at one session per GPU.
    assert [type(a).__name__ for a in actions] == ["Place", "ScaleTo"] and actions[-1].n == 3


def test_combined_checks_the_kinds_it_is_given():
    with pytest.raises(ValueError, match="expected a placement policy"):
        Combined(make("offload", "never"), make("autoscaling", "fixed"), make("offload", "never"))


def test_combined_autoscaler_counts_refused_sessions_as_demand():
    worker = WorkerView("w1", max_batch=2)
    sessions = [SessionView("a", ACTIVE, "w1"), SessionView("b", ACTIVE, "w1")]
    sessions += [SessionView(f"new{i}", SessionStatus.PENDING) for i in range(2)]
    snap = Snapshot(now_s=0.0, workers=(worker,), sessions=tuple(sessions), max_workers=10)
    combined = Combined(
        make("placement", "least-loaded", on_full="refuse"), make("autoscaling", "load-driven"), make("offload", "never")
    )
    actions, _ = combined.decide(snap, combined.initial_state())
    # Both newcomers are refused now, and the cluster grows so the next ones fit.
    assert [type(a).__name__ for a in actions] == ["Reject", "Reject", "ScaleTo"] and actions[-1].n == 2
