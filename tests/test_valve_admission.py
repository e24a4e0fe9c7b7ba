"""Admission over b* on the quality valve, and the valve group step (issue 9).

A worker placed over its ``b*`` (a newcomer taking an idle session's kept slot while
capacity starts) runs its sessions as one degraded step within the SLO
(:func:`workers.batching.valve_group_step`), instead of making the newcomer wait a
start-up or stalling an in-stream chunk. Tiers: the pure rules, the placement policy on
hand-made snapshots, the simulator on a hand-made trace.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.sim import PolicySet, SimConfig, simulate
from policies.placement import MigrationAware
from policies.registry import make
from policies.types import BatchLatencyModel, Offload, Place, SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView
from workers.batching import valve_group_step, valve_step

FULL = lambda n: 0.4 * n  # noqa: E731  batching gains nothing: b* = 2 at a 1 s SLO
SLO = 1.0
EFF = valve_step(FULL, SLO, 0.7)  # 3 sessions: 1.2 s full, 0.84 s degraded


# ---------------------------------------------------------------- the pure rules

def test_a_step_over_the_limit_is_predicted_at_the_valves_share():
    assert [round(EFF(n), 3) for n in (1, 2, 3)] == [0.4, 0.8, 0.84]


def test_first_chunks_wait_for_an_in_stream_session_that_becomes_due_during_their_step():
    plan = valve_group_step(0.0, deadlines_s=[5.0], firsts=[True], early_deadlines_s=[], upcoming_s=[0.3, 2.0],
                            max_batch=3, step_s=EFF)
    assert (plan.kind, plan.wake_s) == ("hold", 0.3)
    # due after the step would end: no reason to wait
    plan = valve_group_step(0.0, deadlines_s=[5.0], firsts=[True], early_deadlines_s=[], upcoming_s=[0.5],
                            max_batch=3, step_s=EFF)
    assert plan.kind == "group"


def test_in_stream_chunks_go_first_when_the_group_would_make_one_late():
    plan = valve_group_step(0.0, deadlines_s=[0.5, 0.9, 9.0], firsts=[False, False, True], early_deadlines_s=[],
                            upcoming_s=[], max_batch=3, step_s=EFF)
    assert (plan.kind, plan.due) == ("rules", (0, 1))


@settings(max_examples=200, deadline=None)
@given(
    due=st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), min_size=1, max_size=5),
    early=st.lists(st.floats(0.0, 3.0), max_size=4),
    upcoming=st.lists(st.floats(0.01, 3.0), max_size=3),
    cap=st.integers(1, 6),
)
def test_a_group_step_never_makes_an_in_stream_chunk_late(due, early, upcoming, cap):
    due = sorted(due)
    early = sorted(early)
    deadlines, firsts = [d for d, _ in due], [f for _, f in due]
    plan = valve_group_step(0.0, deadlines_s=deadlines, firsts=firsts, early_deadlines_s=early, upcoming_s=upcoming,
                            max_batch=cap, step_s=EFF)
    if plan.kind == "group":
        n = len(plan.due) + plan.early
        assert 1 <= n <= cap
        hard = [deadlines[i] for i in plan.due if not firsts[i]] + early[:plan.early]
        assert all(EFF(n) <= d + 1e-9 for d in hard)
    elif plan.kind == "rules":
        assert plan.due and (all(not firsts[i] for i in plan.due) or all(firsts))
    else:
        assert plan.kind == "hold" and all(firsts) and plan.wake_s == min(upcoming) < EFF(len(due))


# ---------------------------------------------------------------- the placement policy

def _snap(*, valve_batch: int, max_workers: int = 4, starting: int = 0, idle_on_w1: int = 1) -> Snapshot:
    workers = [WorkerView("w1", max_batch=2, memory_bytes=100, valve_batch=valve_batch)]
    workers += [WorkerView(f"starting-{i}", WorkerStatus.STARTING, 100, 2, 0.0, valve_batch=valve_batch)
                for i in range(starting)]
    sessions = [SessionView("a", SessionStatus.ACTIVE, "w1", 10)]
    sessions += [SessionView(f"i{k}", SessionStatus.IDLE, "w1", 10, since_s=99.0) for k in range(idle_on_w1)]
    sessions.append(SessionView("new", SessionStatus.PENDING, None, 0, since_s=100.0))
    return Snapshot(now_s=100.0, workers=tuple(workers), sessions=tuple(sessions), slo_s=SLO,
                    latency=BatchLatencyModel((1, 2, 3), (0.4, 0.8, 1.2)), max_workers=max_workers,
                    worker_startup_s=10.0, chunks_made=100_000)


def _decide(snap: Snapshot, valve_admission: bool):
    policy = MigrationAware(keep_idle_slots=True, valve_admission=valve_admission, new_session_bytes=10)
    actions, _ = policy.decide(snap, policy.initial_state())
    return actions


def test_a_newcomer_takes_a_kept_slot_on_the_valve_instead_of_waiting_for_a_starting_worker():
    snap = _snap(valve_batch=3, starting=1)
    assert _decide(snap, valve_admission=False) == []  # it waits for the starting worker's slot
    actions = _decide(snap, valve_admission=True)
    assert [type(a) for a in actions] == [Place] and actions[0].worker == "w1"  # no eviction


@pytest.mark.parametrize("why", ["no valve", "valve batch full", "cluster at its maximum"])
def test_no_admission_over_b_star_without_the_valve_its_room_or_capacity_to_come(why):
    snap = {
        "no valve": _snap(valve_batch=0, starting=1),
        "valve batch full": _snap(valve_batch=3, starting=1, idle_on_w1=2),
        "cluster at its maximum": _snap(valve_batch=3, max_workers=1),
    }[why]
    actions = _decide(snap, valve_admission=True)
    assert not any(isinstance(a, Place) and a.session_id == "new" and a.worker == "w1"
                   and not any(isinstance(o, Offload) for o in actions) for a in actions)


def _full_worker_snap(**kw) -> Snapshot:
    """w1 holds b* = 2 active sessions and no idle one; a second worker is starting."""
    from dataclasses import replace
    snap = _snap(valve_batch=3, starting=1, idle_on_w1=0)
    sessions = (SessionView("a2", SessionStatus.ACTIVE, "w1", 10), *snap.sessions)
    return replace(snap, sessions=sessions, **kw)


def _lend_active(snap: Snapshot, on: bool, budget: float | None = None):
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=budget,
                            valve_lend_active=on, new_session_bytes=10)
    return [a for a in policy.decide(snap, None)[0] if isinstance(a, Place) and a.session_id == "new"]


def test_a_full_workers_slot_is_lent_only_with_valve_lend_active_and_capacity_on_its_way():
    assert _lend_active(_full_worker_snap(), on=False) == []  # it waits for the starting worker
    (place,) = _lend_active(_full_worker_snap(), on=True)
    assert place.worker == "w1"
    from dataclasses import replace
    at_max = _full_worker_snap()
    at_max = replace(at_max, workers=at_max.workers[:1], max_workers=1)  # nothing starting, nothing may start
    assert _lend_active(at_max, on=True) == []


def test_a_full_workers_slot_is_priced_as_degrading_for_a_whole_start_up():
    # 3 sessions x 10 s at a chunk a second: 30 chunks, against 1% of what is made by then
    # (chunks made + 10 s of the 2 active sessions' chunks).
    assert _lend_active(_full_worker_snap(chunks_made=3_000), on=True, budget=0.01)
    assert _lend_active(_full_worker_snap(chunks_made=2_900), on=True, budget=0.01) == []


def test_an_idle_residents_slot_is_lent_before_a_full_workers():
    from dataclasses import replace
    snap = _full_worker_snap()
    workers = (*snap.workers, WorkerView("w2", max_batch=2, memory_bytes=100, valve_batch=3))
    sessions = (*snap.sessions, SessionView("b", SessionStatus.ACTIVE, "w2", 10),
                SessionView("j", SessionStatus.IDLE, "w2", 10, since_s=99.0))
    (place,) = _lend_active(replace(snap, workers=workers, sessions=sessions), on=True)
    assert place.worker == "w2"


# ---------------------------------------------------------------- the simulator

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]


def _trace(*events: tuple) -> pd.DataFrame:
    rows = []
    for t, sid, ev in events:  # 16 frames at 16 fps: a chunk a second
        shape = (16, 64, 64, 16) if ev == "open" else (None, None, None, None)
        rows.append((float(t), sid, ev, "c0", "tiny" if ev == "open" else None, *shape))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


def _run(valve_admission: bool):
    # a streams; b streams, pauses at 3 s (its slot kept) and comes back at 6 s; c arrives at
    # 4 s to a full worker while a second one takes 20 s to start.
    df = _trace((0, "a", "open"), (0, "b", "open"), (3, "b", "idle"), (4.3, "c", "open"), (6.6, "b", "active"),
                *[(40, s, "close") for s in "abc"])
    policies = PolicySet.of("migration-aware", "load-driven", "never",
                            placement_params={"keep_idle_slots": True, "valve_admission": valve_admission,
                                              "keep_idle_s": 30.0, "valve_budget": None})  # (the budget: above)
    config = SimConfig(initial_workers=1, max_workers=2, worker_startup_s=20.0, slo_s=SLO, max_batch=3,
                       placement_batch=2, quality_valve=True, valve_step_ratio=0.7, align_phases=True)
    return simulate(df, policies, config, latency=BatchLatencyModel((1, 2, 3), (0.4, 0.8, 1.2)))


def test_on_the_valve_a_newcomer_and_a_returning_session_start_at_once_and_nothing_stalls():
    without, with_valve = _run(False), _run(True)

    def done(r, sid: str, index: int) -> float:
        c = r.chunks
        return c[(c["session_id"] == sid) & (c["index"] == index)]["t_done_s"].iloc[0]

    # Without: the newcomer takes b's kept slot (b offloaded), and b, back at 6 s, waits
    # for the second worker's start-up (its chunk 3 is the first after its return).
    assert done(without, "b", 3) > 20.0
    # On the valve: c's first chunk and b's first after its return come within a step,
    # the three sessions share degraded steps, and no in-stream chunk misses the SLO.
    assert done(with_valve, "c", 0) < 4.3 + 2 * SLO
    assert done(with_valve, "b", 3) < 6.6 + 2 * SLO
    in_stream = with_valve.chunks[~with_valve.burst_first]
    assert in_stream["latency_s"].max() <= SLO + 1e-9
    assert with_valve.counters["degraded_chunks"] > 0
    assert (with_valve.chunks["batch_size"] == 3).any()


def test_no_admission_over_b_star_once_the_valves_budget_is_spent():
    from dataclasses import replace
    snap = _snap(valve_batch=3, starting=1)
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=0.01, new_session_bytes=10)
    assert policy.decide(replace(snap, chunks_made=10_000, degraded_chunks=0), None)[0]  # placed
    assert policy.decide(replace(snap, chunks_made=10_000, degraded_chunks=101), None)[0] == []  # spent: it waits


def _budget_case(*, chunks_made: int, degraded: int = 0, idle_since_s: float = 99.0, lent_elsewhere: bool = False):
    """w1: one active session and one idle since ``idle_since_s`` (now 100 s, start-up 10 s, a chunk a second)."""
    from dataclasses import replace
    snap = _snap(valve_batch=3, starting=1)
    sessions = [replace(s, since_s=idle_since_s) if s.status is SessionStatus.IDLE else s for s in snap.sessions]
    workers = list(snap.workers)
    if lent_elsewhere:  # w2 holds three residents over its b* of 2: a slot lent before
        workers.append(WorkerView("w2", max_batch=2, memory_bytes=100, valve_batch=3))
        sessions += [SessionView("x", SessionStatus.ACTIVE, "w2", 10), SessionView("y", SessionStatus.ACTIVE, "w2", 10),
                     SessionView("z", SessionStatus.IDLE, "w2", 10, since_s=idle_since_s)]
    snap = replace(snap, workers=tuple(workers), sessions=tuple(sessions), chunks_made=chunks_made,
                   degraded_chunks=degraded)
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=0.01, new_session_bytes=10)
    return [a for a in policy.decide(snap, None)[0] if isinstance(a, Place) and a.session_id == "new"]


def test_a_lend_is_priced_by_what_it_is_expected_to_degrade_before_the_capacity_comes():
    from policies.valve_budget import degraded_seconds
    # An idle resident likely back within the start-up (idle for 1 s): about 3 x 9 = 27
    # chunks expected degraded; the budget of 10,000 chunks (+ 10 s of one active
    # session's) is 100: it fits, and does not once 80 are spent.
    cost = 3 * degraded_seconds(10.0, 1.0, 1)
    assert 26 < cost < 28
    assert _budget_case(chunks_made=10_000)
    assert _budget_case(chunks_made=10_000, degraded=80) == []
    # Nothing made yet: nothing to spend on a slot whose holder may be back any moment.
    assert _budget_case(chunks_made=0) == []
    # A holder idle for 100 s is rarely back within 10 s: the same slot costs about 1.5
    # chunks, which 1,000 chunks made cover.
    assert _budget_case(chunks_made=1_000, idle_since_s=0.0)
    assert _budget_case(chunks_made=1_000, idle_since_s=99.0) == []


def test_the_slots_lent_before_count_against_the_budget():
    # w2's lent slot (three residents, one idle for 1 s) is expected to degrade about 27
    # chunks too: with 50 of budget, one lend fits, not two.
    assert _budget_case(chunks_made=5_000)
    assert _budget_case(chunks_made=5_000, lent_elsewhere=True) == []


@settings(max_examples=200, deadline=None)
@given(horizon=st.floats(0.1, 120.0), mean_idle=st.floats(0.01, 3600.0), idle=st.integers(1, 8))
def test_a_lent_slot_degrades_at_most_a_start_up_and_less_the_longer_its_holders_stay_away(horizon, mean_idle, idle):
    from policies.valve_budget import degraded_seconds
    e = degraded_seconds(horizon, mean_idle, idle)
    assert 0.0 <= e <= horizon + 1e-9
    assert degraded_seconds(horizon, mean_idle * 2, idle) <= e + 1e-9  # idle spells twice as long
    assert degraded_seconds(horizon, mean_idle, idle + 1) >= e - 1e-9  # one more holder that may come back


@settings(max_examples=200, deadline=None)
@given(made=st.integers(0, 10**6), degraded=st.integers(0, 10**4), more=st.integers(1, 10**3),
       lent=st.lists(st.tuples(st.integers(3, 9), st.integers(0, 3), st.booleans()), max_size=4))
def test_the_budget_never_admits_more_when_more_is_spent_or_lent(made, degraded, more, lent):
    from dataclasses import replace

    from policies.valve_budget import LentWorker, ValveOutlook, lend_fits
    snap = replace(_snap(valve_batch=3, starting=1), chunks_made=made, degraded_chunks=degraded)
    outlook = ValveOutlook.of(snap)
    workers = [LentWorker(r, i, d, 1.0) for r, i, d in lent]
    fits = lend_fits(snap, outlook, workers, 3, 0.01)
    if not fits:
        assert not lend_fits(replace(snap, degraded_chunks=degraded + more), outlook, workers, 3, 0.01)
        assert not lend_fits(snap, outlook, [*workers, LentWorker(3, 1, False, 1.0)], 3, 0.01)
    if fits:
        assert lend_fits(replace(snap, chunks_made=made + more), outlook, workers, 3, 0.01)


# ---------------------------------------------------------------- lending at the cluster's maximum

def test_the_mean_burst_is_the_exposure_over_the_bursts_that_ended():
    from policies.types import BurstTally
    tally = BurstTally()
    tally.begin(0.0)
    tally.begin(10.0)
    tally.end(0.0, 30.0)  # 30 s
    # At 40 s: 30 s ended, 30 s of the second still going on; one burst ended.
    snap = Snapshot(now_s=40.0, workers=(), sessions=(), bursts_ended=tally.ended,
                    burst_exposure_s=tally.exposure_s(40.0))
    assert snap.mean_burst_s == pytest.approx(60.0)
    assert Snapshot(now_s=0.0, workers=(), sessions=()).mean_burst_s is None


def test_a_lent_slot_at_the_maximum_degrades_for_the_span_left_after_a_holder_comes_back():
    # E[(S - tau)+] by integrating P(S - tau > x) over x, S and tau exponential, independent.
    from policies.valve_budget import degraded_seconds_until_end
    span, mean_idle = 7.0, 3.0
    lam, mu = 1 / span, 1 / mean_idle
    t = np.linspace(0.0, 400.0, 400_001)
    # P(S - tau > x) = E_tau[exp(-lam (tau + x))] = exp(-lam x) mu / (lam + mu)
    survival = np.exp(-lam * t) * mu / (lam + mu)
    assert degraded_seconds_until_end(span, mean_idle, 1) == pytest.approx(np.trapezoid(survival, t), rel=1e-4)
    assert degraded_seconds_until_end(span, mean_idle, 0) == 0.0


def _at_max(*, bursts_ended: int, burst_exposure_s: float, chunks_made: int = 1_000, on: bool = True):
    """w1 alone at max_workers = 1: one active session and one idle for 1 s; nothing starting."""
    from dataclasses import replace
    snap = replace(_snap(valve_batch=3, max_workers=1), chunks_made=chunks_made, bursts_ended=bursts_ended,
                   burst_exposure_s=burst_exposure_s)
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=0.01, valve_lend_at_max=on,
                            new_session_bytes=10)
    return [a for a in policy.decide(snap, None)[0] if isinstance(a, Place) and a.session_id == "new"]


def test_at_the_maximum_a_slot_is_lent_only_when_a_burst_of_its_group_is_expected_to_end_soon():
    # Bursts of 3 s on average: a group of b* + 1 = 3 has one end within 1 s on average,
    # so a lent slot degrades about 0.5 s of 3 sessions' chunks: within 1% of 1,000.
    (place,) = _at_max(bursts_ended=10, burst_exposure_s=30.0)
    assert place.worker == "w1"
    # Bursts of 300 s: a degraded group would stay so for ~100 s (~300 chunks): the newcomer waits.
    assert _at_max(bursts_ended=10, burst_exposure_s=3_000.0) == []
    # No burst ended yet: nothing to price the lend with.
    assert _at_max(bursts_ended=0, burst_exposure_s=500.0) == []
    # The option off: never at the maximum.
    assert _at_max(bursts_ended=10, burst_exposure_s=30.0, on=False) == []


def test_the_simulator_tallies_bursts_from_the_trace_and_the_policies_see_them():
    seen = []

    class Recording(MigrationAware):
        def decide_on(self, ledger, state):
            seen.append(ledger.snap)
            return super().decide_on(ledger, state)

    # a: open at 0, idle at 10 (a 10 s burst), active at 20, closes at 50 (30 s); b: open at 0, closes at 45.
    df = _trace((0, "a", "open"), (0, "b", "open"), (10, "a", "idle"), (20, "a", "active"), (45, "b", "close"),
                (50, "a", "close"))
    policies = PolicySet(Recording(), make("autoscaling", "fixed", n=1), make("offload", "never"))
    simulate(df, policies, SimConfig(initial_workers=1, max_workers=1, slo_s=SLO, max_batch=3),
             latency=BatchLatencyModel((1, 2, 3), (0.4, 0.8, 1.2)))
    last = max(seen, key=lambda s: s.now_s)
    assert last.now_s >= 50.0
    assert last.bursts_ended == 3 and last.burst_exposure_s == pytest.approx(10.0 + 30.0 + 45.0)
    mid = [s for s in seen if 20.0 < s.now_s < 45.0][0]  # a's first burst ended; b's and a's second go on
    assert mid.bursts_ended == 1
    assert mid.burst_exposure_s == pytest.approx(10.0 + mid.now_s + (mid.now_s - 20.0))


def test_the_live_registry_tallies_bursts_as_sessions_go_active_idle_suspended_and_closed():
    from framework.registry import SessionRecord, SessionRegistry
    reg = SessionRegistry()
    rec = SessionRecord("s", "tiny", "p", 0, 64, 64, since_s=0.0)
    reg.add(rec)  # pending: not in a burst yet
    rec.set_status(SessionStatus.ACTIVE, 5.0)
    rec.set_status(SessionStatus.MIGRATING, 8.0)  # a move does not end the burst
    rec.set_status(SessionStatus.ACTIVE, 9.0)
    rec.set_status(SessionStatus.IDLE, 15.0)  # 10 s
    assert (reg.bursts.ended, reg.bursts.exposure_s(20.0)) == (1, 10.0)
    reg.record_chunks([("s", 0, 0.1, 1, 21.0)], 21.0)  # a chunk made after it went idle: active again
    assert rec.status is SessionStatus.ACTIVE and reg.bursts.exposure_s(25.0) == pytest.approx(14.0)
    rec.set_status(SessionStatus.SUSPENDED, 31.0)
    rec.set_status(SessionStatus.CLOSED, 40.0)  # not in a burst: nothing more
    assert (reg.bursts.ended, reg.bursts.exposure_s(50.0)) == (2, 20.0)
    # a record registered already active is in a burst from its since_s on
    reg.add(SessionRecord("t", "tiny", "p", 0, 64, 64, status=SessionStatus.ACTIVE, since_s=45.0))
    assert (reg.bursts.ended, reg.bursts.exposure_s(50.0)) == (2, 25.0)


@pytest.mark.parametrize("case", ["at the maximum", "option off", "capacity starting", "idle for one period", "no valve"])
def test_a_slot_lent_at_the_maximum_is_given_back_once_a_resident_has_been_idle_two_periods(case):
    from dataclasses import replace
    # w1 (b* = 2) holds a lent slot: two active sessions and one idle since 90 s (now 100 s).
    idle_since = 99.0 if case == "idle for one period" else 90.0
    snap = _snap(valve_batch=0 if case == "no valve" else 3, max_workers=1, starting=1 if case == "capacity starting" else 0)
    sessions = tuple(s for s in snap.sessions if s.status is not SessionStatus.PENDING and s.status is not SessionStatus.IDLE)
    sessions += (SessionView("a2", SessionStatus.ACTIVE, "w1", 10), SessionView("i", SessionStatus.IDLE, "w1", 10,
                                                                                  since_s=idle_since))
    snap = replace(snap, sessions=sessions, max_workers=2 if case == "capacity starting" else 1)
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=0.01,
                            valve_lend_at_max=case != "option off", new_session_bytes=10)
    offloads = [a for a in policy.decide(snap, None)[0] if isinstance(a, Offload)]
    if case == "at the maximum":
        assert [o.session_id for o in offloads] == ["i"]
    else:
        assert offloads == []


def test_an_eviction_in_the_same_decision_is_not_given_back_twice():
    # At the maximum, w1 (b* = 2) holds two idle sessions: a newcomer takes the
    # longest-idle one's kept slot (evicting it); the other keeps its slot.
    snap = Snapshot(
        now_s=100.0, workers=(WorkerView("w1", max_batch=2, memory_bytes=100, valve_batch=3),),
        sessions=(SessionView("old", SessionStatus.IDLE, "w1", 10, since_s=10.0),
                  SessionView("recent", SessionStatus.IDLE, "w1", 10, since_s=50.0),
                  SessionView("new", SessionStatus.PENDING, None, 0, since_s=100.0)),
        slo_s=SLO, latency=BatchLatencyModel((1, 2, 3), (0.4, 0.8, 1.2)), max_workers=1, worker_startup_s=10.0,
        chunks_made=1_000)
    policy = MigrationAware(keep_idle_slots=True, valve_admission=True, valve_budget=0.01, valve_lend_at_max=True,
                            new_session_bytes=10)
    actions = policy.decide(snap, None)[0]
    assert [a.session_id for a in actions if isinstance(a, Offload)] == ["old"]
    assert [(a.session_id, a.worker) for a in actions if isinstance(a, Place)] == [("new", "w1")]
