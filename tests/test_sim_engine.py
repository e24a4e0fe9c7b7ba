"""The simulator, specified by small hand-checked cases and invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from experiments.sim import PolicySet, SimConfig, model_cost, simulate
from policies.registry import names
from policies.types import BatchLatencyModel, Migrate, Place, ScaleTo, SessionStatus

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]
LATENCY = BatchLatencyModel((1, 2, 8), (0.25, 0.4, 1.0))
TINY_BYTES = model_cost("tiny").state_bytes(64, 64)


def trace(*events: tuple) -> pd.DataFrame:
    """Rows ``(time, session, event)``; open rows get 16 frames at 16 fps (a 1 s period)."""
    rows = []
    for t, sid, ev in events:
        shape = (16, 64, 64, 16) if ev == "open" else (None, None, None, None)
        rows.append((float(t), sid, ev, "c0", "tiny" if ev == "open" else None, *shape))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


def random_trace(seed: int, n_sessions: int = 30, horizon: float = 300.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n_sessions):
        t = rng.uniform(0, horizon / 2)
        events.append((t, f"s{i:03d}", "open"))
        for _ in range(rng.integers(0, 3)):
            t += rng.exponential(20)
            events.append((t, f"s{i:03d}", "idle"))
            t += rng.exponential(20)
            events.append((t, f"s{i:03d}", "active"))
        events.append((t + rng.exponential(30), f"s{i:03d}", "close"))
    return trace(*events)


class FirstFree:
    """Test placement: each pending session to the running worker with the fewest sessions."""

    kind, name = "placement", "first-free"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        counts = {w.address: 0 for w in snap.running_workers()}
        for s in snap.sessions:
            if s.worker in counts:
                counts[s.worker] += 1
        actions = []
        for s in snap.sessions:
            if s.status is SessionStatus.PENDING and counts:
                w = min(counts, key=lambda a: (counts[a], a))
                counts[w] += 1
                actions.append(Place(s.session_id, w))
        return actions, state


class Scripted:
    """Test placement: FirstFree, plus fixed actions at given times."""

    kind, name = "placement", "scripted"

    def __init__(self, script: dict[float, list]):
        self.script, self.inner = script, FirstFree()

    def initial_state(self):
        return None

    def decide(self, snap, state):
        actions, _ = self.inner.decide(snap, None)
        return actions + list(self.script.get(snap.now_s, [])), state


class Fixed:
    kind, name = "autoscaling", "fixed-test"

    def __init__(self, n: int):
        self.n = n

    def initial_state(self):
        return None

    def decide(self, snap, state):
        return [ScaleTo(self.n)], state


class Never:
    kind, name = "offload", "never-test"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        return [], state


def run(df, placement=None, n_workers=1, **cfg):
    config = SimConfig(initial_workers=n_workers, **cfg)
    policies = PolicySet(placement or FirstFree(), Fixed(n_workers), Never())
    return simulate(df, policies, config, latency=LATENCY)


def test_one_session_alone_gets_predict_1_for_every_chunk():
    result = run(trace((0, "a", "open"), (10, "a", "close")))
    chunks = result.chunks
    assert list(chunks["index"]) == list(range(10))  # requests at 0, 1, ..., 9
    np.testing.assert_allclose(chunks["t_request_s"], np.arange(10.0))
    np.testing.assert_allclose(chunks["latency_s"], LATENCY.predict(1))
    assert set(chunks["batch_size"]) == {1}
    assert not chunks["migrated"].any()


def test_two_sessions_on_one_worker_share_each_step():
    result = run(trace((0, "a", "open"), (0, "b", "open"), (5, "a", "close"), (5, "b", "close")))
    chunks = result.chunks
    assert len(chunks) == 10
    assert set(chunks["batch_size"]) == {2}
    np.testing.assert_allclose(chunks["latency_s"], LATENCY.predict(2))
    by_step = chunks.groupby("t_start_s")["session_id"].apply(sorted)
    assert all(ids == ["a", "b"] for ids in by_step)


def test_max_batch_caps_a_step_and_the_rest_waits_for_the_next():
    df = trace(*[(0, s, "open") for s in "abc"], *[(3, s, "close") for s in "abc"])
    chunks = run(df, max_batch=2).chunks
    first = chunks[chunks["index"] == 0].set_index("session_id")
    assert list(first.loc[["a", "b"], "t_start_s"]) == [0.0, 0.0]  # oldest requests, then session order
    assert list(first.loc[["a", "b"], "batch_size"]) == [2, 2]
    assert first.loc["c", "t_start_s"] == pytest.approx(LATENCY.predict(2))  # waited for that step
    assert first.loc["c", "latency_s"] == pytest.approx(LATENCY.predict(2) + LATENCY.predict(1))
    assert chunks["batch_size"].max() == 2


def test_migration_delays_exactly_one_chunk_by_bytes_over_bandwidth():
    copy_s = 0.5
    bandwidth = TINY_BYTES / copy_s
    placement = Scripted({4.0: [Migrate("a", "sim-w0", "sim-w1")]})
    df = trace((0, "a", "open"), (10, "a", "close"))
    result = run(df, placement, n_workers=2, migrate_bytes_per_s=bandwidth)
    chunks = result.chunks.set_index("index")
    assert list(chunks.index) == list(range(10))
    delayed = chunks.loc[4]
    assert delayed["migrated"]
    assert delayed["latency_s"] == pytest.approx(LATENCY.predict(1) + copy_s)
    others = chunks.drop(index=4)
    np.testing.assert_allclose(others["latency_s"], LATENCY.predict(1))
    assert set(chunks.loc[:3, "worker"]) == {"sim-w0"} and set(chunks.loc[4:, "worker"]) == {"sim-w1"}
    assert result.counters["migrations"] == 1


def test_migration_delays_exactly_one_chunk_by_fixed_cost_plus_bytes_over_bandwidth():
    copy_s, fixed_s = 0.5, 0.3
    placement = Scripted({4.0: [Migrate("a", "sim-w0", "sim-w1")]})
    df = trace((0, "a", "open"), (10, "a", "close"))
    result = run(df, placement, n_workers=2, migrate_bytes_per_s=TINY_BYTES / copy_s, migration_fixed_s=fixed_s)
    chunks = result.chunks.set_index("index")
    # the copy starts at 4.0 (no chunk in flight); chunk 4, requested at 4.0, starts after both costs
    assert chunks.loc[4, "migrated"]
    assert chunks.loc[4, "t_start_s"] == pytest.approx(4.0 + fixed_s + copy_s)
    assert chunks.loc[4, "latency_s"] == pytest.approx(LATENCY.predict(1) + fixed_s + copy_s)
    np.testing.assert_allclose(chunks.drop(index=4)["latency_s"], LATENCY.predict(1))


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan")])
def test_a_negative_or_infinite_migration_fixed_cost_is_rejected(bad):
    with pytest.raises(ValueError, match="migration_fixed_s"):
        SimConfig(migration_fixed_s=bad)


def test_migration_fixed_cost_is_read_from_the_turboserve_config():
    import dask.config

    assert SimConfig.from_config().migration_fixed_s == 0.0
    with dask.config.set({"turboserve.simulator.migration-fixed-s": "1500ms"}):
        assert SimConfig.from_config().migration_fixed_s == pytest.approx(1.5)


def test_impossible_actions_are_refused_and_counted():
    placement = Scripted({2.0: [Migrate("a", "sim-w0", "sim-w9"), Place("a", "sim-w0"), Migrate("a", "sim-w5", "sim-w0")]})
    result = run(trace((0, "a", "open"), (5, "a", "close")), placement)
    refused = result.decisions[~result.decisions["accepted"]]
    assert len(refused) == 3 == result.counters["refused"]
    assert set(result.counters["refused_by_reason"]) == {"no-such-worker", "session-not-placeable", "migrate-bad-source"}
    assert list(result.chunks["index"]) == list(range(5))  # the session went on undisturbed


class Nowhere:
    kind, name = "placement", "nowhere"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        return [], state


def test_requests_never_served_are_counted_as_abandoned_with_their_wait():
    result = run(trace((0, "a", "open"), (1, "b", "open"), (5, "a", "idle"), (7, "b", "close"), (9, "a", "close")),
                 Nowhere())
    assert result.chunks.empty
    assert result.counters["abandoned_requests"] == 2  # a at its idle (5 s), b at its close (6 s)
    assert result.counters["max_abandoned_wait_s"] == pytest.approx(6.0)
    assert result.counters["never_served"] == 2


def test_place_beyond_device_memory_is_refused():
    config_memory = model_cost("tiny").weights_bytes + 1.5 * TINY_BYTES  # room for one session
    result = run(trace((0, "a", "open"), (0, "b", "open"), (3, "a", "close"), (3, "b", "close")),
                 gpu_memory_bytes=config_memory)
    assert result.counters["refused_by_reason"] == {"no-memory": 3}  # b retried on ticks 0, 1, 2
    assert set(result.chunks["session_id"]) == {"a"}


def test_new_workers_start_late_and_are_paid_from_the_request():
    # Workers 1 and 2 are requested at t=0 and usable at t=20: b (t=5) can only go to w0,
    # c (t=30) goes to a new, empty one.
    df = trace((0, "a", "open"), (5, "b", "open"), (30, "c", "open"), *[(100, s, "close") for s in "abc"])
    policies = PolicySet(FirstFree(), Fixed(3), Never())
    result = simulate(df, policies, SimConfig(initial_workers=1, worker_startup_s=20), latency=LATENCY)
    assert result.gpu_seconds == pytest.approx(3 * 100.0)
    assert list(result.workers["started_s"]) == [0.0, 0.0, 0.0]
    worker_of = result.chunks.groupby("session_id")["worker"].agg(set)
    assert worker_of["a"] == worker_of["b"] == {"sim-w0"}
    assert worker_of["c"] <= {"sim-w1", "sim-w2"}


@pytest.mark.parametrize(
    "policies",
    [
        PolicySet.of("least-loaded", "hpa", "never", autoscaling_params={"downscale_stabilisation_s": 20}),
        PolicySet.of("migration-aware", "load-driven", "idle-timeout",
                     autoscaling_params={"downscale_delay_s": 10}, offload_params={"idle_s": 5}),
    ],
    ids=lambda p: p.label,
)
def test_cost_is_the_sum_of_worker_lifetimes(policies):
    result = simulate(random_trace(1), policies, SimConfig(initial_workers=1, max_workers=8, worker_startup_s=15,
                                                          max_batch=2), latency=LATENCY)
    lifetimes = (result.workers["released_s"] - result.workers["started_s"]).sum()
    assert len(result.workers) > 1, "the autoscaler should have started workers"
    assert (result.workers["released_s"] < result.end_s).any(), "and released some"
    assert result.gpu_seconds == pytest.approx(lifetimes)
    assert result.intervals["cost_gpu_s"].sum() == pytest.approx(lifetimes)


def test_same_trace_and_seed_give_the_same_event_log():
    policies = PolicySet.of("migration-aware", "load-driven", "idle-timeout", offload_params={"idle_s": 5})
    config = SimConfig(initial_workers=1, max_workers=6, worker_startup_s=10, max_batch=2)
    a = simulate(random_trace(7), policies, config, latency=LATENCY)
    b = simulate(random_trace(7), policies, config, latency=LATENCY)
    pd.testing.assert_frame_equal(a.chunks, b.chunks)
    pd.testing.assert_frame_equal(a.decisions, b.decisions)
    pd.testing.assert_frame_equal(a.intervals, b.intervals)
    c = simulate(random_trace(8), policies, config, latency=LATENCY)
    assert not a.chunks["t_done_s"].equals(c.chunks["t_done_s"])


@pytest.mark.parametrize(
    "placement,autoscaling,offload",
    list(itertools.product(names("placement"), names("autoscaling"), names("offload"))),
)
def test_every_chunk_of_every_session_arrives_once_and_in_order(placement, autoscaling, offload):
    params = {"fixed": {"n": 6}, "hpa": {"downscale_stabilisation_s": 20}, "load-driven": {"downscale_delay_s": 10},
              "ray-serve": {"downscale_delay_s": 20}, "predictive": {"adjustment_interval_s": 20}}
    policies = PolicySet.of(placement, autoscaling, offload, autoscaling_params=params.get(autoscaling, {}),
                            offload_params={"idle_s": 5} if offload == "idle-timeout" else {})
    # Steps take only due chunks (no phase alignment, which makes chunks ahead of their request).
    config = SimConfig(initial_workers=2, max_workers=8, worker_startup_s=10, max_batch=3, align_phases=False)
    result = simulate(random_trace(3, n_sessions=20), policies, config, latency=LATENCY)
    chunks = result.chunks
    assert result.counters["never_served"] == 0
    for sid, group in chunks.groupby("session_id"):
        in_time = group.sort_values("t_done_s", kind="stable")
        assert list(in_time["index"]) == list(range(len(group))), sid
        assert (np.diff(in_time["t_request_s"]) > 0).all(), sid
    assert (chunks["t_start_s"] >= chunks["t_request_s"] - 1e-9).all()
    expected = [LATENCY.predict(int(b)) for b in chunks["batch_size"]]
    np.testing.assert_allclose(chunks["t_done_s"] - chunks["t_start_s"], expected)
    assert (chunks["batch_size"] <= 3).all()


def test_a_scale_up_takes_a_draining_worker_back_before_starting_a_new_one():
    # w0 is retired at t=2 while the target stays 2: as live (framework.control_actions.ActionRunner._keep_drained),
    # the next ScaleTo(2) puts the draining w0 back in service instead of starting a
    # third worker (which a 2-GPU cluster could not hold anyway).
    from policies.types import Retire

    placement = Scripted({2.0: [Retire("sim-w0"), Migrate("a", "sim-w0", "sim-w1")]})
    result = run(trace((0, "a", "open"), (10, "a", "close")), placement, n_workers=2, max_workers=2)
    assert result.intervals["n_workers"].max() == 2
    assert result.counters["refused_by_reason"].get("cluster-full", 0) == 0
    assert len(result.workers) == 2  # no third worker was ever started
    assert (result.workers["released_s"] == result.end_s).all()  # w0 is serving again, not released
    assert list(result.chunks["index"]) == list(range(10))


@pytest.mark.parametrize("enabled", [True, False])
def test_a_run_leaves_the_garbage_collector_as_it_found_it(enabled):
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        run(random_trace(1, n_sessions=5, horizon=30.0))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


@pytest.mark.parametrize("on_arrival", [True, False])
def test_a_session_arriving_between_ticks_is_placed_at_once_as_live_admission_does(on_arrival):
    result = run(trace((0.4, "a", "open"), (5, "a", "close")), place_on_arrival=on_arrival)
    first = result.chunks.sort_values("index").iloc[0]
    # With admission on arrival its first chunk starts at 0.4 s; otherwise at the next tick (1 s).
    assert first["t_start_s"] == pytest.approx(0.4 if on_arrival else 1.0)
    assert first["latency_s"] == pytest.approx(LATENCY.predict(1) + (0.0 if on_arrival else 0.6))


class OneEach:
    """Test placement: a pending session goes to a running worker that holds none."""

    kind, name = "placement", "one-each"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        free = sorted(w.address for w in snap.running_workers())
        for s in snap.sessions:
            if s.worker in free:
                free.remove(s.worker)
        pending = [s for s in snap.sessions if s.status is SessionStatus.PENDING]
        return [Place(s.session_id, w) for s, w in zip(pending, free)], state


def test_a_waiting_session_takes_the_slot_a_closing_session_frees_at_that_instant():
    # b waits for a's worker; a closes at 3.3 s, between ticks: b starts then, as a live
    # request waiting for capacity wakes when a session changes (Admission.changed).
    df = trace((0, "a", "open"), (0.2, "b", "open"), (3.3, "a", "close"), (8, "b", "close"))
    first = run(df, placement=OneEach()).chunks.query("session_id == 'b' and index == 0").iloc[0]
    assert first["t_start_s"] == pytest.approx(3.3)


def test_a_waiting_session_starts_on_a_new_worker_the_moment_it_is_ready():
    df = trace((0, "a", "open"), (0.2, "b", "open"), (8, "a", "close"), (8, "b", "close"))
    policies = PolicySet(OneEach(), Fixed(2), Never())
    result = simulate(df, policies, SimConfig(initial_workers=1, worker_startup_s=2.5), latency=LATENCY)
    first = result.chunks.query("session_id == 'b' and index == 0").iloc[0]
    assert first["t_start_s"] == pytest.approx(2.5) and first["worker"] == "sim-w1"


@pytest.mark.parametrize("status", list(SessionStatus))
def test_a_session_view_is_the_view_the_dataclass_makes_of_the_same_fields(status):
    """The simulator sets a view's slots directly (speed): the object is the one ``SessionView(...)`` makes."""
    import dataclasses

    from experiments.sim.snapshot import session_view
    from experiments.sim.state import _Session, _Worker
    from policies.types import SessionView, WorkerStatus

    for on_host, placed in itertools.product((False, True), (False, True)):
        s = _Session(3, "s3", 1234, 0.75, 12)
        s.status, s.since, s.ctx, s.recent, s.on_host = status, 4.5, 24.0, 0.31, on_host
        if placed:
            s.worker = s.target = _Worker(7, 0.0, WorkerStatus.RUNNING, 10**9, 4)
        view = session_view(s, "wan-1.3b", 9.0)
        where = s.target if status is SessionStatus.MIGRATING else s.worker
        want = SessionView("s3", status, where.address if where else None, 0 if where is None and not on_host else 1234,
                           "wan-1.3b", 4.5, 0.75, 24.0, 0.31, 9.0)
        assert type(view) is SessionView
        assert view == want and hash(view) == hash(want) and repr(view) == repr(want)
        with pytest.raises(dataclasses.FrozenInstanceError):
            view.worker = "elsewhere"  # type: ignore[misc]
