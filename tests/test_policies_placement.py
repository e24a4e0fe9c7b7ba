"""Placement policies on hand-built snapshots: where sessions go and when they move."""

from __future__ import annotations

from collections import Counter

import pytest

from policies.admission import CapacityLedger
from policies.autoscaling import Census
from policies.registry import make, names
from policies.types import (
    GiB,
    BatchLatencyModel,
    Migrate,
    Offload,
    Place,
    Reject,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

ACTIVE, IDLE, PENDING = SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.PENDING
LINEAR = BatchLatencyModel(batch_sizes=(1, 8), step_s=(0.1, 0.8))  # 0.1 s per session


def active(sid: str, worker: str, nbytes: int = GiB, **kw) -> SessionView:
    return SessionView(sid, ACTIVE, worker, state_bytes=nbytes, **kw)


def pending(sid: str, nbytes: int = 0, since_s: float = 0.0) -> SessionView:
    return SessionView(sid, PENDING, None, state_bytes=nbytes, since_s=since_s)


def snapshot(workers, sessions, **kw) -> Snapshot:
    kw.setdefault("latency", LINEAR)
    return Snapshot(now_s=kw.pop("now_s", 100.0), workers=tuple(workers), sessions=tuple(sessions), **kw)


def decide(policy, snap, state=None):
    return policy.decide(snap, policy.initial_state() if state is None else state)


def max_predicted_latency(snap: Snapshot, actions) -> float:
    """Max over workers of the predicted step time once ``actions`` took effect."""
    where = {s.session_id: s.worker for s in snap.sessions if s.status in (ACTIVE, SessionStatus.MIGRATING)}
    for a in actions:
        if isinstance(a, Place):
            where[a.session_id] = a.worker
        elif isinstance(a, Migrate):
            where[a.session_id] = a.target
    counts: dict[str, int] = {}
    for w in where.values():
        counts[w] = counts.get(w, 0) + 1
    return max((snap.latency.predict(n) for n in counts.values()), default=0.0)


@pytest.mark.parametrize("name", names("placement"))
def test_every_placement_policy_places_pending_sessions_on_running_workers_only(name):
    workers = [
        WorkerView("starting", status=WorkerStatus.STARTING),
        WorkerView("draining", status=WorkerStatus.DRAINING),
        WorkerView("w1"),
        WorkerView("w2"),
    ]
    snap = snapshot(workers, [pending(f"p{i}") for i in range(5)])
    actions, _ = decide(make("placement", name), snap)
    assert sorted(a.session_id for a in actions) == [f"p{i}" for i in range(5)]
    assert all(isinstance(a, Place) and a.worker in ("w1", "w2") for a in actions)
    assert all(a.cause for a in actions)


@pytest.mark.parametrize("name", names("placement"))
def test_every_placement_policy_leaves_sessions_pending_when_full_or_rejects_if_asked(name):
    snap = snapshot(
        [WorkerView("w1", max_batch=1)],
        [active("a", "w1"), pending("new"), pending("resumed", nbytes=GiB)],
    )
    queued, _ = decide(make("placement", name), snap)
    assert queued == []
    refused, _ = decide(make("placement", name, on_full="refuse"), snap)
    # Only the new session is refused: a resumed one keeps its place in the queue.
    assert [(type(a), a.session_id) for a in refused] == [(Reject, "new")]
    assert "bytes" in refused[0].cause


@pytest.mark.parametrize("name", names("placement"))
def test_every_placement_policy_respects_memory(name):
    workers = [WorkerView("small", memory_bytes=2 * GiB), WorkerView("big", memory_bytes=10 * GiB)]
    sessions = [active("a", "small", GiB), pending("p", nbytes=4 * GiB)]
    actions, _ = decide(make("placement", name), snapshot(workers, sessions))
    assert actions == [Place("p", "big", cause=actions[0].cause)]


@pytest.mark.parametrize("name", names("placement"))
def test_new_sessions_reserve_the_largest_state_of_their_model(name):
    # The largest state of the model is 2 GiB, so a new session reserves 2 GiB:
    # neither w1 (1 GiB free) nor w2 (1.5 GiB) can take it, unless told it is smaller.
    workers = [WorkerView("w1", memory_bytes=4 * GiB), WorkerView("w2", memory_bytes=GiB + GiB // 2)]
    sessions = [SessionView("old", IDLE, "w1", state_bytes=GiB), active("big", "w1", 2 * GiB), pending("new")]
    snap = snapshot(workers, sessions)
    assert decide(make("placement", name), snap)[0] == []
    explicit, _ = decide(make("placement", name, new_session_bytes=GiB), snap)
    assert [a.session_id for a in explicit] == ["new"]


@pytest.mark.parametrize("name", names("placement"))
def test_every_placement_policy_empties_draining_workers(name):
    workers = [WorkerView("old", status=WorkerStatus.DRAINING), WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a", "old"), active("b", "old"), SessionView("i", IDLE, "old", state_bytes=GiB)]
    actions, _ = decide(make("placement", name), snapshot(workers, sessions))
    moves = {a.session_id: a for a in actions}
    assert set(moves) == {"a", "b", "i"}
    assert all(isinstance(moves[s], Migrate) and moves[s].source == "old" for s in "ab")
    assert {moves["a"].target, moves["b"].target} <= {"w1", "w2"}
    assert isinstance(moves["i"], Offload) and moves["i"].cause == "drain"


@pytest.mark.parametrize("name", names("placement"))
def test_a_duplicated_pending_session_is_placed_once(name):
    snap = snapshot([WorkerView("w1"), WorkerView("w2")], [pending("p"), pending("p")])
    actions, _ = decide(make("placement", name), snap)
    assert [a.session_id for a in actions] == ["p"]


def test_paper_scenario_migration_aware_rebalances_after_sessions_close():
    # Both workers held 4 active sessions; 3 of w1's closed. w2 is now the straggler.
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a0", "w1")] + [active(f"b{i}", "w2") for i in range(4)]
    sessions += [SessionView(f"a{i}", SessionStatus.CLOSED, None) for i in range(1, 4)]
    snap = snapshot(workers, sessions)
    before = max_predicted_latency(snap, [])

    actions, _ = decide(make("placement", "migration-aware"), snap)
    assert [type(a) for a in actions] == [Migrate]
    assert (actions[0].source, actions[0].target) == ("w2", "w1")
    assert max_predicted_latency(snap, actions) == pytest.approx(before - 0.1)
    assert "rebalance" in actions[0].cause

    for other in ("least-loaded", "round-robin"):
        assert decide(make("placement", other), snap)[0] == []


def test_migration_aware_lowers_tied_worst_workers_in_turn():
    workers = [WorkerView("w1"), WorkerView("w2"), WorkerView("new")]
    sessions = [active(f"a{i}", "w1") for i in range(4)] + [active(f"b{i}", "w2") for i in range(4)]
    snap = snapshot(workers, sessions)
    actions, _ = decide(make("placement", "migration-aware"), snap)
    assert all(isinstance(a, Migrate) and a.target == "new" for a in actions)
    assert {a.source for a in actions} == {"w1", "w2"}
    assert max_predicted_latency(snap, actions) == pytest.approx(0.3)


def test_migration_aware_does_not_migrate_when_the_copy_costs_more_than_the_gain():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a0", "w1")] + [active(f"b{i}", "w2") for i in range(4)]
    # 1 GiB over a 1 GB/s link costs ~1.07 s, more than the 0.1 s gained per chunk.
    slow = snapshot(workers, sessions, migrate_bytes_per_s=1e9)
    assert decide(make("placement", "migration-aware"), slow)[0] == []


def test_migration_aware_counts_the_gain_over_its_horizon_of_chunks_against_the_copy():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a0", "w1")] + [active(f"b{i}", "w2") for i in range(4)]
    # 1 GiB at 4.3 GB/s costs 0.25 s once; the move gains 0.1 s on every chunk.
    snap = snapshot(workers, sessions, migrate_bytes_per_s=4.3e9)
    assert decide(make("placement", "migration-aware", horizon_chunks=1), snap)[0] == []  # 0.1 s < 0.25 s
    assert decide(make("placement", "migration-aware", horizon_chunks=2), snap)[0] == []  # 0.2 s < 0.25 s
    actions, _ = decide(make("placement", "migration-aware", horizon_chunks=3), snap)  # 0.3 s > 0.25 s
    assert [(a.session_id, a.source, a.target) for a in actions] == [("b0", "w2", "w1")]


def test_a_session_back_from_idle_beside_an_active_one_moves_to_a_free_slot():
    # One session per GPU (max_batch=1): "back" returned from idle on w1, where "a" is
    # active, so both would take turns at half speed; w2 has a free slot.
    workers = [WorkerView("w1", max_batch=1), WorkerView("w2", max_batch=1), WorkerView("w3", max_batch=1)]
    sessions = [active("a", "w1"), active("back", "w1", context_frames=0.0), active("c", "w3")]
    actions, _ = decide(make("placement", "migration-aware"), snapshot(workers, sessions))
    assert [(type(a), a.source, a.target) for a in actions] == [(Migrate, "w1", "w2")]


def test_migration_aware_respects_the_relative_gain_threshold():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a0", "w1")] + [active(f"b{i}", "w2") for i in range(4)]
    snap = snapshot(workers, sessions)
    # Gain 0.1 s of 0.4 s = 25%: below a 30% threshold, above a 20% one.
    assert decide(make("placement", "migration-aware", min_gain=0.3), snap)[0] == []
    assert len(decide(make("placement", "migration-aware", min_gain=0.2), snap)[0]) == 1


def test_migration_aware_bounds_migrations_per_decision():
    workers = [WorkerView("hot", max_batch=64)] + [WorkerView(f"w{i}") for i in range(8)]
    sessions = [active(f"s{i}", "hot") for i in range(40)]
    snap = snapshot(workers, sessions)
    for bound in (0, 3, 8):
        actions, _ = decide(make("placement", "migration-aware", max_migrations=bound), snap)
        assert len(actions) == bound
        assert len({a.session_id for a in actions}) == bound


def test_migration_aware_moves_the_cheapest_session():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("small", "w2", GiB), active("large", "w2", 4 * GiB), active("mid", "w2", 2 * GiB)]
    actions, _ = decide(make("placement", "migration-aware"), snapshot(workers, sessions))
    assert actions[0].session_id == "small"


def test_migration_aware_places_where_the_max_latency_grows_least():
    workers = [WorkerView("w1"), WorkerView("w2"), WorkerView("w3")]
    sessions = [active("a", "w1"), active("b", "w1"), active("c", "w2", context_frames=30)]
    sessions += [active("d", "w3")]
    # w2 and w3 both hold one session, but w2's long context makes its step slower.
    ctx = BatchLatencyModel(batch_sizes=(1, 8), step_s=(0.1, 0.8), context_slope_s=0.01)
    snap = snapshot(workers, sessions + [pending("p")], latency=ctx)
    actions, _ = decide(make("placement", "migration-aware", max_migrations=0), snap)
    assert actions == [Place("p", "w3", cause=actions[0].cause)]


def test_least_loaded_breaks_ties_by_memory_used():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a", "w1", GiB), active("b", "w2", GiB), SessionView("i", IDLE, "w1", state_bytes=GiB)]
    actions, _ = decide(make("placement", "least-loaded"), snapshot(workers, sessions + [pending("p")]))
    assert actions == [Place("p", "w2", cause=actions[0].cause)]


def test_round_robin_continues_where_the_last_decision_stopped():
    policy = make("placement", "round-robin")
    workers = [WorkerView("w1"), WorkerView("w2"), WorkerView("w3")]
    state = policy.initial_state()
    order = []
    for i in range(4):
        actions, state = policy.decide(snapshot(workers, [pending(f"p{i}")]), state)
        order.append(actions[0].worker)
    assert order == ["w1", "w2", "w3", "w1"]


def test_pending_sessions_are_served_resumed_first_then_in_arrival_order():
    snap = snapshot(
        [WorkerView("w1", max_batch=2)],
        [pending("late", since_s=5.0), pending("early", since_s=1.0), pending("resumed", nbytes=GiB, since_s=9.0)],
    )
    actions, _ = decide(make("placement", "least-loaded"), snap)
    assert [a.session_id for a in actions] == ["resumed", "early"]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"on_full": "drop"}, "on_full must be one of"),
        ({"min_gain": -0.5}, "min_gain must be >= 0"),
        ({"max_migrations": -1}, "max_migrations must be >= 0"),
        ({"horizon_chunks": 0.5}, "horizon_chunks must be >= 1"),
    ],
)
def test_bad_parameters_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        make("placement", "migration-aware", **params)


def loads_summary(ledger):
    return {a: (ld.n_active, ld.mem_used, ld.n_sessions, round(ld.ctx_sum, 9), len(ld.active)) for a, ld in ledger.loads.items()}


def test_a_migration_plan_that_does_not_pay_leaves_the_ledger_as_it_was():
    workers = [WorkerView("w1"), WorkerView("w2")]
    sessions = [active("a0", "w1", context_frames=3.0)] + [active(f"b{i}", "w2", context_frames=i) for i in range(4)]
    snap = snapshot(workers, sessions)
    ledger = CapacityLedger(snap)
    actions, _ = make("placement", "migration-aware", min_gain=0.5).decide_on(ledger, None)
    assert actions == []
    assert loads_summary(ledger) == loads_summary(CapacityLedger(snap))
    assert ledger.acted == set() and ledger.in_flight_bytes == 0


def test_kept_migrations_stay_booked_on_both_ends_and_are_counted_once_as_demand():
    workers = [WorkerView("hot", max_batch=64)] + [WorkerView(f"w{i}") for i in range(3)]
    sessions = [active(f"s{i}", "hot") for i in range(12)]
    snap = snapshot(workers, sessions)
    ledger = CapacityLedger(snap)
    actions, _ = make("placement", "migration-aware", max_migrations=2).decide_on(ledger, None)
    assert len(actions) == 2
    assert ledger.loads["hot"].mem_used == 12 * GiB  # copies in flight
    assert ledger.in_flight_bytes == 2 * GiB
    census = Census.of(ledger)
    assert (census.demand, census.device_bytes) == (12, 12 * GiB)


def test_rebalancing_continues_over_decisions_until_it_no_longer_pays():
    policy = make("placement", "migration-aware", max_migrations=2)
    where = {f"s{i}": "hot" for i in range(12)}
    workers = [WorkerView("hot", max_batch=64)] + [WorkerView(f"w{i}") for i in range(3)]
    for _ in range(10):
        snap = snapshot(workers, [active(sid, w) for sid, w in sorted(where.items())])
        actions, _ = policy.decide(snap, None)
        if not actions:
            break
        where.update({a.session_id: a.target for a in actions})
    counts = sorted(Counter(where.values()).values())
    assert counts == [3, 3, 3, 3]


def test_plan_limit_must_cover_the_migrations_per_decision():
    with pytest.raises(ValueError, match="plan_limit must be >= max_migrations=8"):
        make("placement", "migration-aware", plan_limit=4)


@pytest.mark.parametrize("context_slope_s", [0.0, 0.003])
def test_the_ledgers_cached_step_time_is_the_latency_models_prediction(context_slope_s):
    model = BatchLatencyModel((1, 2, 4, 8, 16), (0.2, 0.25, 0.4, 0.6, 1.1), context_slope_s=context_slope_s)
    ledger = CapacityLedger(snapshot([], [], latency=model))
    for n in (1, 3, 8, 20, 40):
        for mean_context in (0.0, 7.5, 21.0):
            assert ledger.step_s(n, mean_context * n) == pytest.approx(model.predict(n, mean_context))
    assert ledger.step_s(0, 0.0) == 0.0


@pytest.mark.parametrize("name", names("placement"))
def test_a_session_too_large_for_any_worker_does_not_block_smaller_ones(name):
    workers = [WorkerView("w1", memory_bytes=2 * GiB), WorkerView("w2", memory_bytes=2 * GiB)]
    sessions = [pending("huge", nbytes=4 * GiB, since_s=0.0), pending("small", nbytes=GiB, since_s=1.0)]
    sessions.append(pending("huge-too", nbytes=3 * GiB, since_s=2.0))
    actions, _ = decide(make("placement", name), snapshot(workers, sessions))
    assert [a.session_id for a in actions] == ["small"]


@pytest.mark.parametrize("name", names("placement"))
def test_drain_migrations_per_decision_are_bounded(name):
    workers = [WorkerView("old", status=WorkerStatus.DRAINING, max_batch=64), WorkerView("w1", max_batch=64)]
    sessions = [active(f"s{i}", "old") for i in range(10)]
    actions, _ = decide(make("placement", name, max_drain_migrations=4), snapshot(workers, sessions))
    assert all(isinstance(a, Migrate) and a.source == "old" for a in actions)
    assert sum(a.cause == "drain" for a in actions) == 4
    # migration-aware may also relieve the draining worker as the slowest one (a rebalance move).
    assert len(actions) == 4 or name == "migration-aware"


# --- keep_idle_slots: an idle session resident on its worker keeps its batch slot ---------


def idle(sid: str, worker: str, since_s: float, nbytes: int = GiB) -> SessionView:
    return SessionView(sid, IDLE, worker, state_bytes=nbytes, since_s=since_s, chunk_period_s=1.0)


def test_a_kept_slot_is_not_given_to_a_newcomer_while_another_worker_has_a_free_one():
    # w1 holds one active and one idle session (batch 2): its second slot is kept for
    # the idle one; the newcomer goes to w2, although w1 alone predicts the same step.
    workers = [WorkerView("w1", max_batch=2), WorkerView("w2", max_batch=2)]
    sessions = [active("a", "w1"), idle("i", "w1", since_s=90.0), active("b", "w2"), pending("new")]
    plain, keeping = make("placement", "migration-aware"), make("placement", "migration-aware", keep_idle_slots=True)
    snap = snapshot(workers, [s for s in sessions if s.session_id != "b"] + [active("b", "w2", context_frames=0.0)])
    assert [(a.session_id, a.worker) for a in decide(keeping, snap)[0]] == [("new", "w2")]
    # Without kept slots w1 is as good as w2 by predicted latency; the tie goes by memory, so
    # give w2 more memory used to show that only the kept slot sends the newcomer there.
    heavier = snapshot(workers, [active("a", "w1"), idle("i", "w1", since_s=90.0), active("b", "w2", nbytes=4 * GiB),
                                 pending("new")])
    assert [(a.session_id, a.worker) for a in decide(plain, heavier)[0]] == [("new", "w1")]
    assert [(a.session_id, a.worker) for a in decide(keeping, heavier)[0]] == [("new", "w2")]


def test_when_every_free_slot_is_kept_the_longest_idle_holder_is_offloaded_for_the_newcomer():
    workers = [WorkerView("w1", max_batch=1), WorkerView("w2", max_batch=1)]
    snap = snapshot(workers, [idle("old", "w1", since_s=50.0), idle("older", "w2", since_s=40.0), pending("new")])
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert len(actions) == 2
    evict, place = actions
    assert isinstance(evict, Offload) and evict.session_id == "older" and evict.tier == "host"
    assert "evict" in evict.cause
    assert isinstance(place, Place) and (place.session_id, place.worker) == ("new", "w2")


def test_a_session_idle_for_less_than_two_chunk_periods_is_not_evicted():
    # Its last chunk may still be in flight: an offload would be refused, and the
    # newcomer would share the worker with it. The newcomer waits instead.
    workers = [WorkerView("w1", max_batch=1)]
    snap = snapshot(workers, [idle("recent", "w1", since_s=99.0), pending("new")], now_s=100.0)
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert actions == []


# A kept slot is the idle session's for one start-up time (keep_idle_s, by default the
# snapshot's worker start-up: the time the load-driven autoscaler pays for it). While a
# starting worker has a slot for it, a newcomer waits for that slot instead of evicting
# a session likely to come back; a returning session (it has state) is present demand
# and takes a kept slot at once.


def _full_cluster_with_a_starting_worker(slots_coming: int = 1) -> list[WorkerView]:
    return [WorkerView("w1", max_batch=1), WorkerView("new", status=WorkerStatus.STARTING, max_batch=slots_coming)]


def test_a_newcomer_waits_for_a_starting_worker_rather_than_evict_a_recently_idle_session():
    snap = snapshot(_full_cluster_with_a_starting_worker(), [idle("back-soon", "w1", since_s=90.0), pending("new")],
                    now_s=100.0, worker_startup_s=60.0)
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert actions == []


def test_with_no_capacity_on_its_way_the_newcomer_takes_the_kept_slot():
    snap = snapshot([WorkerView("w1", max_batch=1)], [idle("back-soon", "w1", since_s=90.0), pending("new")],
                    now_s=100.0, worker_startup_s=60.0)
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert [(type(a).__name__, a.session_id) for a in actions] == [("Offload", "back-soon"), ("Place", "new")]


def test_a_slot_idle_for_longer_than_keep_idle_s_goes_to_a_newcomer_even_with_capacity_coming():
    snap = snapshot(_full_cluster_with_a_starting_worker(), [idle("gone", "w1", since_s=30.0), pending("new")],
                    now_s=100.0, worker_startup_s=60.0)
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert [(type(a).__name__, a.session_id) for a in actions] == [("Offload", "gone"), ("Place", "new")]
    # keep_idle_s overrides the start-up time
    keep = make("placement", "migration-aware", keep_idle_slots=True, keep_idle_s=120.0)
    assert decide(keep, snap)[0] == []


def test_a_returning_session_takes_a_recently_kept_slot_at_once():
    snap = snapshot(_full_cluster_with_a_starting_worker(),
                    [idle("back-soon", "w1", since_s=90.0), pending("returning", nbytes=GiB)],
                    now_s=100.0, worker_startup_s=60.0)
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True), snap)
    assert [(type(a).__name__, a.session_id) for a in actions] == [("Offload", "back-soon"), ("Place", "returning")]


def test_only_as_many_newcomers_wait_as_starting_slots_are_coming():
    workers = [WorkerView("w1", max_batch=1), WorkerView("w2", max_batch=1),
               WorkerView("new", status=WorkerStatus.STARTING, max_batch=1)]
    sessions = [idle("a", "w1", since_s=90.0), idle("b", "w2", since_s=95.0),
                pending("first", since_s=1.0), pending("second", since_s=2.0)]
    actions, _ = decide(make("placement", "migration-aware", keep_idle_slots=True),
                        snapshot(workers, sessions, now_s=100.0, worker_startup_s=60.0))
    # the first newcomer is counted against the starting worker's one slot; the second
    # finds none coming and takes the longest-idle kept slot
    assert [(type(a).__name__, a.session_id) for a in actions] == [("Offload", "a"), ("Place", "second")]


def test_keep_idle_s_must_not_be_negative():
    with pytest.raises(ValueError, match="keep_idle_s"):
        make("placement", "migration-aware", keep_idle_slots=True, keep_idle_s=-1.0)


def test_kept_slots_never_leave_a_worker_with_more_resident_sessions_than_batch_slots():
    # After one decision, no worker has more active + kept-idle sessions than max_batch,
    # whatever mix of idle, active and pending sessions it started from (when it started within it).
    import random

    rng = random.Random(7)
    policy = make("placement", "migration-aware", keep_idle_slots=True)
    for trial in range(200):
        n_workers = rng.randint(1, 4)
        workers = [WorkerView(f"w{k}", max_batch=rng.randint(1, 3)) for k in range(n_workers)]
        sessions, n = [], 0
        for w in workers:
            for _ in range(rng.randint(0, w.max_batch)):
                n += 1
                if rng.random() < 0.5:
                    sessions.append(active(f"s{n}", w.address))
                else:
                    sessions.append(idle(f"s{n}", w.address, since_s=rng.choice([10.0, 99.5])))
        sessions += [pending(f"p{k}", since_s=float(k)) for k in range(rng.randint(0, 4))]
        snap = snapshot(workers, sessions, now_s=100.0)
        actions, _ = decide(policy, snap)
        resident = Counter(s.worker for s in sessions if s.worker is not None)
        for a in actions:
            if isinstance(a, Offload):
                resident[next(s.worker for s in sessions if s.session_id == a.session_id)] -= 1
            elif isinstance(a, Place):
                resident[a.worker] += 1
        for w in workers:
            assert resident[w.address] <= w.max_batch, (trial, snap, actions)
