"""The parallelism policies, specified on literal snapshots (pure: no Dask, no simulator).

A group of k workers steps its sessions together at ``step(b, k)``; a model whose
batch-1 step misses the deadline at degree 1 needs a group; the other policies see a
group as one unit and never put a session on a follower or on a unit of too low a degree.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.combined import Combined
from policies.parallelism import (
    Adaptive,
    FixedDegree,
    best_degree,
    needed_degree,
    slots,
    step_s,
    unit_view,
)
from policies.registry import make, names
from policies.semantics import ActionRefused, Refusal, SessionFacts, WorkerFacts, check
from policies.types import (
    BatchLatencyModel,
    FormGroup,
    GiB,
    Migrate,
    ParallelGroup,
    ParallelStepModel,
    Place,
    Resume,
    Retire,
    SessionStatus,
    SessionView,
    Snapshot,
    SplitGroup,
    WorkerStatus,
    WorkerView,
)

PENDING, ACTIVE, IDLE = SessionStatus.PENDING, SessionStatus.ACTIVE, SessionStatus.IDLE
#: A model too slow for its deadline alone: 2 s a chunk against 0.75 s (the shape of wan-14b).
SLOW = BatchLatencyModel((1, 2), (2.0, 3.8))
#: A model that meets it alone and batches well (the shape of wan-1.3b at a small batch cost).
FAST = BatchLatencyModel((1, 2), (0.3, 0.33))
PAR = ParallelStepModel(efficiency=0.9, comm_latency_s=0.01, comm_bytes_per_session=4e9, link_bytes_per_s=4e11)


def workers(n: int, *, memory: int = 40 * GiB, max_batch: int = 8) -> tuple[WorkerView, ...]:
    return tuple(WorkerView(f"w{i}", memory_bytes=memory, max_batch=max_batch) for i in range(n))


def snap(latency=SLOW, n=4, sessions=(), groups=(), slo=0.75, parallel=PAR, **kw) -> Snapshot:
    return Snapshot(now_s=0.0, workers=kw.pop("ws", None) or workers(n), sessions=tuple(sessions), slo_s=slo,
                    latency=latency, groups=tuple(groups), parallel=parallel, **kw)


def session(sid, status=PENDING, worker=None, nbytes=10 * GiB, model="m"):
    return SessionView(sid, status, worker, nbytes if status is not PENDING else 0, model, chunk_period_s=0.75)


# ---------------------------------------------------------------- the step model


def test_step_at_degree_one_is_the_profile_and_communication_costs_nothing():
    assert PAR.predict(SLOW, 3, 1) == SLOW.predict(3)
    assert PAR.comm_s(3, 1) == 0.0


def test_step_at_degree_k_divides_the_compute_and_adds_the_all_to_all_share_of_each_rank():
    k, b = 4, 2
    comm = PAR.comm_latency_s + b * PAR.comm_bytes_per_session * (k - 1) / k**2 / PAR.link_bytes_per_s
    assert PAR.predict(SLOW, b, k) == pytest.approx(SLOW.predict(b) / (k * PAR.efficiency) + comm)


def test_the_tabulated_curve_of_a_degree_predicts_what_the_model_does():
    curve = PAR.curve(SLOW, 4, 8)
    assert [curve.predict(b) for b in range(1, 9)] == pytest.approx([PAR.predict(SLOW, b, 4) for b in range(1, 9)])


def test_a_group_takes_one_engines_batch_unless_the_batch_scales_with_the_degree():
    assert PAR.group_max_batch(8, 4) == 8
    assert ParallelStepModel(batch_scales_with_degree=True).group_max_batch(8, 4) == 32


def test_a_group_needs_at_least_two_distinct_workers_and_its_degree_is_their_count():
    with pytest.raises(ValueError, match="degree 2"):
        ParallelGroup("g", ("a",), 2)
    with pytest.raises(ValueError):
        ParallelGroup("g", ("a", "a"), 2)
    assert ParallelGroup("g", ("a", "b"), 2).leader == "a"


# ---------------------------------------------------------------- deciding the degree


def test_a_model_that_misses_its_deadline_alone_needs_the_smallest_degree_that_meets_it():
    s = snap(SLOW)
    assert step_s(s, 1, 2) > s.slo_s >= step_s(s, 1, 4)
    assert needed_degree(s) == 4


def test_a_model_that_meets_its_deadline_alone_needs_no_group():
    assert needed_degree(snap(FAST)) == 1


def test_no_degree_is_enough_when_even_the_largest_misses():
    assert needed_degree(snap(BatchLatencyModel((1,), (10.0,)))) is None


def test_slots_stop_at_the_slo_the_group_cap_and_the_group_memory():
    s = snap(FAST)
    assert slots(s, 1, max_batch=8, memory_bytes=1e12, state_bytes=1) == max(
        b for b in range(1, 9) if step_s(s, b, 1) <= s.slo_s)
    assert slots(s, 1, max_batch=8, memory_bytes=25, state_bytes=10) == 2
    assert slots(s, 2, max_batch=8, memory_bytes=25, state_bytes=10) == 5  # two GPUs of memory
    assert slots(snap(SLOW), 1, max_batch=8, memory_bytes=1e12, state_bytes=1) == 0


def test_by_load_degree_one_wins_when_it_meets_the_deadline_and_a_group_takes_one_engines_batch():
    assert best_degree(snap(FAST), max_batch=8, memory_bytes=1e12, state_bytes=1) == 1


def test_by_load_the_fewest_gpus_that_meet_the_deadline_win_for_a_slow_model():
    assert best_degree(snap(SLOW), max_batch=8, memory_bytes=1e12, state_bytes=1) == 4


# ---------------------------------------------------------------- forming and splitting


def test_adaptive_forms_free_workers_into_groups_of_the_needed_degree_and_leaves_the_rest_alone():
    actions, _ = Adaptive().decide(snap(SLOW, n=6), None)
    assert actions == [FormGroup(("w0", "w1", "w2", "w3"), cause=actions[0].cause)]


def test_adaptive_forms_nothing_for_a_model_served_best_alone():
    assert Adaptive().decide(snap(FAST, n=6), None)[0] == []


def test_adaptive_splits_an_empty_group_of_a_degree_the_model_does_not_need():
    g = ParallelGroup("g", ("w0", "w1"), 2)
    actions, _ = Adaptive().decide(snap(FAST, n=2, groups=[g]), None)
    assert actions == [SplitGroup(("w0", "w1"), cause=actions[0].cause)]


def test_adaptive_keeps_a_group_whose_sessions_stream():
    g = ParallelGroup("g", ("w0", "w1"), 2)
    s = snap(FAST, n=2, groups=[g], sessions=[session("a", ACTIVE, "w0")])
    assert Adaptive().decide(s, None)[0] == []


def test_adaptive_reshards_a_worker_whose_sessions_miss_the_deadline_with_free_workers():
    s = snap(SLOW, n=5, sessions=[session("late", ACTIVE, "w2")])
    actions, _ = Adaptive().decide(s, None)
    assert [a.workers for a in actions] == [("w2", "w0", "w1", "w3")]
    assert "deadline" in actions[0].cause


def test_adaptive_does_not_reshard_streaming_sessions_that_meet_the_deadline_when_nobody_waits():
    s = snap(FAST, n=4, sessions=[session("ok", ACTIVE, "w0")], parallel=PAR)
    assert Adaptive().decide(s, None)[0] == []


#: A model that meets the deadline alone but batches far more per GPU in a group whose batch scales.
MID = BatchLatencyModel((1, 2), (0.7, 0.75))
SCALING = ParallelStepModel(efficiency=0.9, batch_scales_with_degree=True)


def test_by_transformation_cost_streaming_sessions_are_resharded_for_waiting_ones_only_if_the_pause_is_short():
    s = snap(MID, n=4, parallel=SCALING, sessions=[session("streams", ACTIVE, "w0"), session("waits")])
    assert Adaptive().target(s) == 2 and needed_degree(s) == 1  # pairs double the sessions per GPU
    actions, _ = Adaptive().decide(s, None)
    assert [a.workers for a in actions] == [("w0", "w1"), ("w2", "w3")]
    assert "wait" in actions[0].cause
    # no pause allowed, or nobody waiting: the streaming worker stays alone, the free ones pair up
    assert [a.workers for a in Adaptive(max_pause_s=0.0).decide(s, None)[0]] == [("w1", "w2")]
    nobody_waits = snap(MID, n=4, parallel=SCALING, sessions=[session("streams", ACTIVE, "w0")])
    assert [a.workers for a in Adaptive().decide(nobody_waits, None)[0]] == [("w1", "w2")]


def test_fixed_degree_forms_groups_of_its_degree_out_of_free_workers_only():
    s = snap(FAST, n=5, sessions=[session("a", ACTIVE, "w0")])
    actions, _ = FixedDegree(degree=2).decide(s, None)
    assert [a.workers for a in actions] == [("w1", "w2"), ("w3", "w4")]


def test_fixed_degree_one_splits_empty_groups():
    g = ParallelGroup("g", ("w0", "w1", "w2", "w3"), 4)
    actions, _ = FixedDegree(degree=1).decide(snap(SLOW, groups=[g]), None)
    assert [type(a) for a in actions] == [SplitGroup]


def test_the_policies_are_registered_under_the_parallelism_kind():
    assert names("parallelism") == ["adaptive", "fixed"]
    assert make("parallelism", "fixed", degree=4).min_degree(snap()) == 4
    with pytest.raises(ValueError, match="positive integer degree"):
        make("parallelism", "fixed", degree=0)
    with pytest.raises(ValueError, match=r"degree 3 is not one the model allows \(1, 2, 4, 5, 8\)"):
        make("parallelism", "fixed", degree=3, degrees=(1, 2, 4, 5, 8))  # 40 heads: 3 does not divide them
    assert make("parallelism", "fixed", degree=8, degrees=(1, 2, 4, 5, 8)).min_degree(snap()) == 8


# ---------------------------------------------------------------- what the other policies see


def test_a_group_is_one_unit_with_the_memory_of_all_its_workers_and_followers_take_nothing():
    g = ParallelGroup("g", ("w0", "w1"), 2)
    view = unit_view(snap(FAST, n=3, groups=[g]))
    by = {w.address: w for w in view.workers}
    assert by["w0"].memory_bytes == 80 * GiB and by["w0"].max_batch == 8
    assert by["w1"].memory_bytes == 0 and by["w1"].max_batch == 0
    assert by["w2"].memory_bytes == 40 * GiB


def test_units_below_the_needed_degree_and_workers_in_transformation_take_nothing():
    g = ParallelGroup("g", ("w0", "w1", "w2", "w3"), 4)
    view = unit_view(snap(SLOW, n=6, groups=[g]), min_degree=4, busy=frozenset({"w0"}))
    assert all(w.memory_bytes == 0 for w in view.workers)


def test_the_unit_view_predicts_steps_at_the_degree_of_the_units_that_serve():
    g = ParallelGroup("g", ("w0", "w1", "w2", "w3"), 4)
    view = unit_view(snap(SLOW, n=4, groups=[g]), min_degree=4)
    assert view.latency.predict(1) == pytest.approx(PAR.predict(SLOW, 1, 4))


def combined(parallelism, n=8):
    return Combined(make("placement", "least-loaded"), make("autoscaling", "fixed", n=n),
                    make("offload", "never"), parallelism)


def test_combined_places_a_session_that_needs_degree_four_only_on_a_group_of_four():
    g = ParallelGroup("g", ("w4", "w5", "w6", "w7"), 4)
    s = snap(SLOW, n=8, groups=[g], sessions=[session("new"), session("old", ACTIVE, "w0")])
    policy = combined(Adaptive())
    actions, _ = policy.decide(s, policy.initial_state())
    places = [a for a in actions if isinstance(a, Place)]
    assert [(a.session_id, a.worker) for a in places] == [("new", "w4")]


def test_combined_places_nothing_on_workers_it_is_transforming_in_the_same_decision():
    s = snap(SLOW, n=4, sessions=[session("new")])
    policy = combined(Adaptive(), n=4)
    actions, _ = policy.decide(s, policy.initial_state())
    assert [type(a) for a in actions] == [FormGroup]


def test_combined_without_parallelism_keeps_its_three_states_and_decisions():
    policy = Combined(make("placement", "least-loaded"), make("autoscaling", "fixed", n=1), make("offload", "never"))
    assert len(policy.initial_state()) == 3
    assert len(combined(Adaptive()).initial_state()) == 4
    assert combined(Adaptive()).name.endswith("+adaptive")


# ---------------------------------------------------------------- the rules an executor checks


class Facts:
    min_workers = 0

    def __init__(self, workers: dict[str, WorkerFacts]):
        self.ws = workers

    def session(self, sid):
        return SessionFacts(SessionStatus.PENDING, state_bytes=1)

    def worker(self, address):
        return self.ws.get(address)

    def serving(self):
        return len(self.ws)

    def tiers(self):
        return ("host",)


GROUPED = Facts({
    "a": WorkerFacts(WorkerStatus.RUNNING, group=("a", "b")), "b": WorkerFacts(WorkerStatus.RUNNING, group=("a", "b")),
    "c": WorkerFacts(WorkerStatus.RUNNING), "d": WorkerFacts(WorkerStatus.STARTING),
})


@pytest.mark.parametrize("action, refusal", [
    (FormGroup(("c", "a")), Refusal.GROUP_BAD_WORKERS),  # a is in a group already
    (FormGroup(("c", "x")), Refusal.GROUP_BAD_WORKERS),  # x does not exist
    (FormGroup(("c", "c")), Refusal.GROUP_BAD_WORKERS),  # the same worker twice
    (FormGroup(("c",)), Refusal.GROUP_BAD_WORKERS),  # a group of one
    (FormGroup(("c", "d")), Refusal.GROUP_BAD_WORKERS),  # d is still starting
    (SplitGroup(("a", "c")), Refusal.GROUP_NOT_FOUND),
    (SplitGroup(("b", "a")), Refusal.GROUP_NOT_FOUND),  # the leader comes first
    (Place("s", "b"), Refusal.GROUP_MEMBER),  # a follower takes no session
    (Retire("a"), Refusal.GROUP_MEMBER),  # split first
])
def test_bad_parallelism_actions_are_refused_with_their_category(action, refusal):
    with pytest.raises(ActionRefused) as exc:
        check(action, GROUPED)
    assert exc.value.refusal is refusal


def test_good_parallelism_actions_pass():
    check(SplitGroup(("a", "b")), GROUPED)
    check(Place("s", "a"), GROUPED)


# ---------------------------------------------------------------- property: no unit over-committed


@st.composite
def grouped_snapshots(draw):
    n = draw(st.integers(1, 10))
    ws = workers(n, memory=draw(st.sampled_from([30, 45, 80])) * GiB, max_batch=draw(st.integers(1, 4)))
    addresses = [w.address for w in ws]
    groups, i = [], 0
    while i < n:
        k = draw(st.sampled_from([1, 2, 4]))
        if k > 1 and i + k <= n:
            groups.append(ParallelGroup(f"g{i}", tuple(addresses[i:i + k]), k))
            i += k
        else:
            i += 1
    leaders = {g.leader: g for g in groups}
    followers = {a for g in groups for a in g.workers[1:]}
    hosts = [a for a in addresses if a not in followers]
    sessions = []
    for j in range(draw(st.integers(0, 14))):
        status = draw(st.sampled_from([PENDING, PENDING, ACTIVE, IDLE]))
        where = draw(st.sampled_from(hosts)) if status is not PENDING else None
        sessions.append(session(f"s{j}", status, where, nbytes=draw(st.sampled_from([10, 20])) * GiB))
    latency = draw(st.sampled_from([SLOW, FAST]))
    return snap(latency, ws=ws, sessions=sessions, groups=groups), leaders, followers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grouped_snapshots(), st.sampled_from(["adaptive", "fixed-1", "fixed-2", "fixed-4"]),
       st.sampled_from(["least-loaded", "round-robin", "migration-aware"]))
def test_the_shared_ledger_never_over_commits_a_group_nor_uses_a_follower(case, which, placement):
    s, leaders, followers = case
    par = make("parallelism", "adaptive") if which == "adaptive" else make("parallelism", "fixed",
                                                                            degree=int(which[-1]))
    policy = Combined(make("placement", placement), make("autoscaling", "fixed", n=len(s.workers)),
                      make("offload", "never"), par)
    actions, _ = policy.decide(s, policy.initial_state())
    named = [a.session_id for a in actions if hasattr(a, "session_id")]
    assert len(named) == len(set(named))
    transformed = {w for a in actions if isinstance(a, (FormGroup, SplitGroup)) for w in a.workers}
    degree = {a: leaders[a].degree if a in leaders else 1 for a in (w.address for w in s.workers)}
    memory = {w.address: w.memory_bytes for w in s.workers}
    unit_memory = {a: memory[a] * degree[a] for a in degree}
    cap = {w.address: s.parallel.group_max_batch(w.max_batch, degree[w.address]) for w in s.workers}
    reserve = max((x.state_bytes for x in s.sessions), default=0)  # a new session's, as the ledger books it
    used = {a: 0 for a in degree}
    active = {a: 0 for a in degree}
    for x in s.sessions:
        if x.worker is not None:
            used[x.worker] += x.state_bytes
            active[x.worker] += x.status is ACTIVE
    need = par.min_degree(s)
    for a in actions:
        target = a.worker if isinstance(a, (Place, Resume)) else a.target if isinstance(a, Migrate) else None
        if target is None:
            continue
        assert target not in followers and target not in transformed
        assert degree[target] >= need
        x = s.session(a.session_id)
        used[target] += x.state_bytes or reserve
        active[target] += 1
        assert used[target] <= unit_memory[target]
        assert active[target] <= cap[target]


def test_the_module_examples_run():
    import doctest

    import policies.parallelism
    import policies.types

    for module in (policies.parallelism, policies.types):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
