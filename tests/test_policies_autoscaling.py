"""Autoscaling policies on hand-built snapshots: targets, bounds, delays, what to retire."""

from __future__ import annotations

import pytest

from policies.admission import CapacityLedger
from policies.autoscaling import HpaState, sessions_per_gpu
from policies.load_driven import LoadDrivenState
from policies.registry import make, names
from policies.types import (
    GiB,
    BatchLatencyModel,
    Retire,
    ScaleTo,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

LINEAR = BatchLatencyModel(batch_sizes=(1, 8), step_s=(0.1, 0.8))  # 0.1 s per session


def cluster(n_running, n_active, *, now_s=0.0, max_batch=10, starting=0, draining=0, idle_bytes=0, **kw):
    """``n_active`` active sessions spread round-robin over ``n_running`` workers."""
    workers = [WorkerView(f"w{i}", max_batch=max_batch) for i in range(n_running)]
    workers += [WorkerView(f"s{i}", status=WorkerStatus.STARTING, max_batch=max_batch) for i in range(starting)]
    workers += [WorkerView(f"d{i}", status=WorkerStatus.DRAINING, max_batch=max_batch) for i in range(draining)]
    sessions = [
        SessionView(f"a{i}", SessionStatus.ACTIVE, f"w{i % n_running}", state_bytes=GiB) for i in range(n_active)
    ]
    if idle_bytes:
        sessions.append(SessionView("idle", SessionStatus.IDLE, "w0", state_bytes=idle_bytes))
    kw.setdefault("latency", LINEAR)
    kw.setdefault("max_workers", 100)
    return Snapshot(now_s=now_s, workers=tuple(workers), sessions=tuple(sessions), **kw)


def scale_target(actions) -> int | None:
    targets = [a.n for a in actions if isinstance(a, ScaleTo)]
    assert len(targets) <= 1
    return targets[0] if targets else None


@pytest.mark.parametrize("name", names("autoscaling"))
@pytest.mark.parametrize("n_running, n_active", [(0, 0), (1, 60), (8, 0), (3, 3)])
def test_every_autoscaler_stays_within_the_snapshot_bounds(name, n_running, n_active):
    snap = cluster(n_running, n_active, min_workers=2, max_workers=4)
    policy = make("autoscaling", name)
    actions, _ = policy.decide(snap, policy.initial_state())
    target = scale_target(actions)
    assert target is None or 2 <= target <= 4
    if target is None:
        assert 2 <= n_running <= 4
    retired = [a.worker for a in actions if isinstance(a, Retire)]
    assert len(retired) == (n_running - target if target is not None and target < n_running else 0)


@pytest.mark.parametrize("name", names("autoscaling"))
def test_every_autoscaler_counts_starting_workers_as_capacity_on_the_way(name):
    # Ray Serve waits 30 s before a scale-up by design: here it acts at once.
    params = {"fixed": {"n": 4}, "ray-serve": {"upscale_delay_s": 0.0}}.get(name, {})
    policy = make("autoscaling", name, **params)
    state = policy.initial_state()
    first, state = policy.decide(cluster(1, 30, now_s=0.0), state)
    target = scale_target(first)
    assert target is not None and target > 1
    # The next tick sees the requested workers as STARTING: no second request.
    again, _ = policy.decide(cluster(1, 30, now_s=1.0, starting=target - 1), state)
    assert scale_target(again) is None


def test_fixed_provisions_n_workers_and_retires_the_emptiest():
    policy = make("autoscaling", "fixed", n=2)
    assert policy.decide(cluster(2, 5), None)[0] == []
    actions, _ = policy.decide(cluster(4, 2), None)  # sessions on w0 and w1
    assert scale_target(actions) == 2
    assert sorted(a.worker for a in actions if isinstance(a, Retire)) == ["w2", "w3"]


def test_scale_in_retires_starting_workers_first_then_fewest_sessions():
    actions, _ = make("autoscaling", "fixed", n=2).decide(cluster(3, 4, starting=1), None)
    # w0 holds 2 sessions, w1 and w2 one each; the starting one holds none.
    assert scale_target(actions) == 2
    assert sorted(a.worker for a in actions if isinstance(a, Retire)) == ["s0", "w1"]


def test_draining_workers_do_not_count_and_are_not_retired_twice():
    actions, _ = make("autoscaling", "fixed", n=2).decide(cluster(3, 0, draining=2), None)
    assert scale_target(actions) == 2
    assert [a.worker for a in actions if isinstance(a, Retire)] == ["w0"]


def test_hpa_applies_the_kubernetes_formula_on_batch_slot_utilisation():
    policy = make("autoscaling", "hpa", target_utilisation=0.8)
    # 4 workers x 10 slots, 48 sessions: utilisation 1.2, ratio 1.5 -> 6 workers.
    actions, _ = policy.decide(cluster(4, 48), policy.initial_state())
    assert scale_target(actions) == 6
    # Pending sessions are demand too: 40 active + 8 waiting is the same load.
    snap = cluster(4, 40)
    waiting = tuple(SessionView(f"p{i}", SessionStatus.PENDING) for i in range(8))
    snap = Snapshot(now_s=0.0, workers=snap.workers, sessions=snap.sessions + waiting, latency=LINEAR, max_workers=100)
    assert scale_target(policy.decide(snap, policy.initial_state())[0]) == 6


def test_hpa_does_nothing_within_its_tolerance():
    policy = make("autoscaling", "hpa", target_utilisation=0.8, tolerance=0.1)
    # utilisation 0.85 / 0.8 = 1.0625 -> within 10%.
    assert policy.decide(cluster(10, 85), policy.initial_state())[0] == []
    # 0.4 / 0.8 = 0.5: outside; scale-down is only stabilised, not blocked, at first.
    assert scale_target(policy.decide(cluster(10, 40, now_s=0.0), policy.initial_state())[0]) == 5


def test_hpa_scale_down_uses_the_highest_recommendation_of_its_window():
    policy = make("autoscaling", "hpa", downscale_stabilisation_s=300)
    state = policy.initial_state()
    _, state = policy.decide(cluster(6, 48, now_s=0.0), state)  # recommends 6: stays
    low = []
    for t in (60.0, 200.0, 299.0, 301.0):
        actions, state = policy.decide(cluster(6, 8, now_s=t), state)
        low.append(scale_target(actions))
    assert low == [None, None, None, 1]
    assert isinstance(state, HpaState) and all(t > 301.0 - 300 for t, _ in state.history)


def test_hpa_upscale_delay_waits_before_growing():
    policy = make("autoscaling", "hpa", upscale_delay_s=30)
    state = policy.initial_state()
    seen = []
    for t in (0.0, 10.0, 30.0):
        actions, state = policy.decide(cluster(2, 40, now_s=t), state)
        seen.append(scale_target(actions))
    assert seen == [None, None, 5]


def test_hpa_asks_for_a_first_worker_when_sessions_wait_and_none_runs():
    snap = Snapshot(now_s=0.0, workers=(), sessions=(SessionView("p", SessionStatus.PENDING),), max_workers=4)
    policy = make("autoscaling", "hpa")
    assert scale_target(policy.decide(snap, policy.initial_state())[0]) == 1


def test_load_driven_sizes_by_the_largest_batch_within_the_slo():
    policy = make("autoscaling", "load-driven", target_utilisation=0.8)
    snap = cluster(1, 20, slo_s=1.0)
    # predict(b) = 0.1 b <= 1.0 s -> b* = 10; filled to 0.8: 20 sessions / 8 -> 3 GPUs.
    assert policy.budget(CapacityLedger(snap)) == (3, 10)
    assert scale_target(policy.decide(snap, policy.initial_state())[0]) == 3
    # b* is also capped by the worker's batch slots: 20 / (0.8 * 4) -> 7 GPUs.
    small = cluster(1, 20, slo_s=1.0, max_batch=4)
    assert scale_target(policy.decide(small, policy.initial_state())[0]) == 7


def test_an_slo_below_one_step_sizes_by_what_placement_would_gain_not_a_gpu_a_session():
    """No batch meets an SLO below one session's step; a GPU a session is bought only where running alone is faster.

    On a nearly flat curve (batch 4 within 10% of batch 1) a GPU runs four sessions, so
    20 sessions need 5 GPUs; on a steep one each session still gets a GPU of its own.
    Every autoscaler reads its per-GPU capacity from :func:`sessions_per_gpu`.
    """
    flat = BatchLatencyModel(batch_sizes=(1, 4, 8), step_s=(0.100, 0.109, 0.150))
    policy = make("autoscaling", "load-driven")
    for model, slo, b_star, gpus in ((flat, 0.01, 4, 5), (LINEAR, 0.01, 1, 20), (flat, 0.15, 8, 3)):
        snap = cluster(1, 20, slo_s=slo, latency=model)
        assert sessions_per_gpu(CapacityLedger(snap), max_batch=10) == b_star
        assert scale_target(policy.decide(snap, policy.initial_state())[0]) == gpus


def test_load_driven_counts_the_memory_of_on_device_sessions():
    policy = make("autoscaling", "load-driven")
    # 2 active sessions need 1 GPU of compute, but 150 GiB of idle state needs 2 GPUs.
    snap = cluster(1, 2, idle_bytes=150 * GiB)
    assert scale_target(policy.decide(snap, policy.initial_state())[0]) == 2


def test_load_driven_keeps_its_spare_workers_while_sessions_are_open_and_none_without():
    policy = make("autoscaling", "load-driven", target_utilisation=0.8, spare_workers=2)
    # 20 sessions at b* = 10 filled to 0.8 need 3 GPUs; two more are kept warm for a worker's loss
    actions, _ = policy.decide(cluster(1, 20, slo_s=1.0), policy.initial_state())
    assert scale_target(actions) == 5 and "+ 2 spare" in actions[0].cause
    idle_only = cluster(1, 0, idle_bytes=GiB)  # an idle session's state on a device still counts
    assert scale_target(policy.decide(idle_only, policy.initial_state())[0]) == 3
    assert policy.budget(CapacityLedger(cluster(3, 0)))[0] == 0  # nothing open: none kept
    with pytest.raises(ValueError, match="spare_workers"):
        make("autoscaling", "load-driven", spare_workers=-1)


def test_load_driven_scales_in_only_after_the_budget_stayed_low():
    policy = make("autoscaling", "load-driven", downscale_delay_s=60, headroom_quantile=0)
    state = policy.initial_state()
    results = []
    for t, n_active in ((0.0, 8), (30.0, 16), (50.0, 8), (70.0, 8), (90.0, 8)):
        actions, state = policy.decide(cluster(4, n_active, now_s=t), state)
        results.append(scale_target(actions))
    # Below from t=0; at t=60+ it scales in to the highest budget seen meanwhile (2).
    assert results == [None, None, None, 2, None]
    # The snapshot still shows 4 workers at t=90: a new period below starts.
    assert (state.below_since_s, state.window_max) == (90.0, 1)


def test_load_driven_resets_its_patience_when_the_load_returns():
    policy = make("autoscaling", "load-driven", downscale_delay_s=60, headroom_quantile=0)
    state = policy.initial_state()
    results = []
    for t, n_active in ((0.0, 8), (40.0, 32), (70.0, 8), (120.0, 8), (131.0, 8)):
        actions, state = policy.decide(cluster(4, n_active, now_s=t), state)
        results.append(scale_target(actions))
    assert results == [None, None, None, None, 1]


def one_per_gpu(n_running, n_active, now_s, **kw):
    """A cluster where the SLO admits one active session per GPU (b* = 1)."""
    return cluster(n_running, n_active, now_s=now_s, slo_s=0.15, **kw)


def feed(policy, demands, *, start_workers, dt=1.0, **kw):
    """Decide once per ``dt`` on the given active counts; return the targets and the last state."""
    state, targets, n = policy.initial_state(), [], start_workers
    for k, d in enumerate(demands):
        actions, state = policy.decide(one_per_gpu(n, d, k * dt, **kw), state)
        target = scale_target(actions)
        n = target if target is not None else n
        targets.append(n)
    return targets, state


def test_load_driven_without_churn_keeps_no_headroom():
    policy = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9)
    targets, state = feed(policy, [10] * 30, start_workers=10)
    assert targets[-1] == 10
    assert state.variance_per_s == 0.0


def test_load_driven_keeps_headroom_for_the_demand_swing_over_the_startup_time():
    # The demand alternates 10, 12, 10, 12: (+-2)^2 per second, a variance rate of 4/s.
    policy = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9, downscale_delay_s=1e9)
    demands = [10, 12] * 20
    targets, state = feed(policy, demands, start_workers=12, worker_startup_s=60.0, max_workers=200)
    assert state.variance_per_s == pytest.approx(4.0)
    # headroom = floor(z_0.9 * sqrt(4/s * 60 s)) = floor(1.2816 * 15.49) = 19 sessions on top of the demand
    assert targets[-1] == 12 + 19
    # a shorter start-up needs less headroom: floor(1.2816 * sqrt(4 * 15)) = 9
    short, _ = feed(policy, demands, start_workers=12, worker_startup_s=15.0, max_workers=200)
    assert short[-1] == 12 + 9


def test_load_driven_headroom_grows_with_the_quantile_and_is_off_at_zero():
    demands = [10, 12] * 20
    sizes = []
    for q in (0.0, 0.5, 0.75, 0.9, 0.99):
        policy = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=q, downscale_delay_s=1e9)
        targets, _ = feed(policy, demands, start_workers=12, max_workers=200)
        sizes.append(targets[-1])
    assert sizes[0] == sizes[1] == 12  # no headroom at or below the median
    assert sizes == sorted(sizes) and sizes[2] < sizes[3] < sizes[4]


def test_load_driven_headroom_decays_when_the_churn_stops():
    policy = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9, rate_window_s=30.0, downscale_delay_s=0.0)
    busy, state = feed(policy, [10, 14] * 30 + [10] * 300, start_workers=14, max_workers=200)
    assert max(busy[:60]) > 20  # churn: headroom on top of the 14 sessions
    assert busy[-1] == 10  # quiet for 10 time constants: back to the demand


def test_load_driven_headroom_is_a_smaller_share_of_a_larger_cluster():
    # Four times the churn variance (a four times larger independent population) needs
    # only twice the headroom.
    small = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9, downscale_delay_s=1e9)
    t_small, _ = feed(small, [100, 102] * 20, start_workers=102, max_workers=1000)
    t_large, _ = feed(small, [400, 404] * 20, start_workers=404, max_workers=1000)
    spare_small, spare_large = t_small[-1] - 102, t_large[-1] - 404
    assert spare_large == pytest.approx(2 * spare_small, abs=1)
    assert spare_large / 404 < spare_small / 102


def test_load_driven_warmup_discounts_the_first_changes():
    # One early jump of 4 sessions: taken at face value it buys a large headroom; with a
    # warm-up of 60 s of assumed calm history it buys little.
    demands = [10, 14, 14]
    eager = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9, downscale_delay_s=1e9)
    calm = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9, downscale_delay_s=1e9, warmup_s=60.0)
    eager_sizes, _ = feed(eager, demands, start_workers=10, max_workers=200)
    calm_sizes, _ = feed(calm, demands, start_workers=10, max_workers=200)
    # face value: v = 16/s, headroom = floor(1.2816 * sqrt(16 * 60)) = 39
    assert eager_sizes[1] == 14 + 39
    assert 14 <= calm_sizes[1] < 14 + 10


def test_load_driven_keeps_no_headroom_without_demand():
    policy = make("autoscaling", "load-driven", headroom_model="random-walk", headroom_quantile=0.9)
    state = policy.initial_state()
    for t, d in ((0.0, 5), (1.0, 0), (2.0, 5), (3.0, 0)):
        _, state = policy.decide(one_per_gpu(2, d, t, min_workers=0), state)
    actions, _ = policy.decide(one_per_gpu(2, 0, 4.0, min_workers=0), state.__class__(
        below_since_s=-1e9, window_max=0, last_s=state.last_s, last_demand=0,
        var_rate=state.var_rate, weight=state.weight))
    assert scale_target(actions) == 0


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("fixed", {"n": -1}, "n >= 0"),
        ("hpa", {"tolerance": 1.5}, "tolerance must be in"),
        ("hpa", {"target_utilisation": 0}, "target_utilisation must be > 0"),
        ("load-driven", {"downscale_delay_s": -1}, "downscale_delay_s must be >= 0"),
        ("load-driven", {"headroom_quantile": 1.0}, "headroom_quantile must be in"),
        ("load-driven", {"headroom_horizon_s": -5}, "headroom_horizon_s must be >= 0"),
        ("load-driven", {"rate_window_s": 0}, "rate_window_s must be > 0"),
        ("load-driven", {"warmup_s": -1}, "warmup_s must be >= 0"),
    ],
)
def test_bad_parameters_are_named(name, params, match):
    with pytest.raises(ValueError, match=match):
        make("autoscaling", name, **params)


def test_inverted_bounds_in_a_snapshot_are_reported():
    with pytest.raises(ValueError, match="min_workers=5 > max_workers=2"):
        make("autoscaling", "fixed").decide(cluster(1, 0, min_workers=5, max_workers=2), None)


def test_ray_serve_scales_up_only_after_the_upscale_delay_and_down_after_the_downscale_delay():
    policy = make("autoscaling", "ray-serve", upscale_delay_s=30.0, downscale_delay_s=600.0, look_back_period_s=1.0)
    state = policy.initial_state()
    for t in (0.0, 10.0, 29.0):
        actions, state = policy.decide(cluster(1, 30, now_s=t), state)
        assert scale_target(actions) is None
    actions, state = policy.decide(cluster(1, 30, now_s=30.0), state)
    assert scale_target(actions) > 1
    # the load is gone: nothing for 600 s, then the scale-in
    state = policy.initial_state()
    for t in (0.0, 300.0, 599.0):
        actions, state = policy.decide(cluster(4, 0, now_s=t), state)
        assert scale_target(actions) is None
    actions, _ = policy.decide(cluster(4, 0, now_s=600.0), state)
    assert scale_target(actions) == 0


def test_predictive_adjusts_once_per_interval_for_the_forecast_peak():
    policy = make("autoscaling", "predictive", adjustment_interval_s=180.0, target_utilisation=1.0)
    state = policy.initial_state()
    actions, state = policy.decide(cluster(1, 30, now_s=0.0), state)
    first = scale_target(actions)
    assert first is not None and first > 1
    # a burst in between changes nothing until the next adjustment...
    actions, state = policy.decide(cluster(first, 120, now_s=60.0), state)
    assert scale_target(actions) is None
    # ...which sizes for a forecast that has seen the burst's peak
    actions, state = policy.decide(cluster(first, 30, now_s=180.0), state)
    assert scale_target(actions) > first


def test_turboserve_ref_budget_and_hold():
    policy = make("autoscaling", "turboserve-ref", rho=0.8, hold_s=5.0, tick_s=5.0)
    state = policy.initial_state()
    snap = cluster(1, 30, now_s=0.0)
    actions, state = policy.decide(snap, state)
    target = scale_target(actions)
    assert target is not None and target > 1
    # below the size: held 5 s before the scale-in
    actions, state = policy.decide(cluster(target, 0, now_s=5.0), state)
    assert scale_target(actions) is None
    actions, state = policy.decide(cluster(target, 0, now_s=10.0), state)
    assert scale_target(actions) == 0


def test_hpa_evaluates_only_every_sync_period():
    policy = make("autoscaling", "hpa", sync_period_s=15.0)
    state = policy.initial_state()
    actions, state = policy.decide(cluster(1, 30, now_s=0.0), state)
    target = scale_target(actions)
    assert target is not None
    actions, state = policy.decide(cluster(target, 90, now_s=10.0), state)
    assert scale_target(actions) is None  # between syncs
    actions, state = policy.decide(cluster(target, 90, now_s=15.0), state)
    assert scale_target(actions) > target


def test_load_driven_horizon_headroom_measures_the_swing_over_the_startup_time():
    """A load that swings back and forth every tick has a large one-tick variance but no
    swing over a minute: the horizon estimate keeps no headroom for it, the random-walk
    extrapolation keeps a lot."""
    sizes = {}
    for model in ("horizon", "random-walk"):
        policy = make("autoscaling", "load-driven", headroom_quantile=0.9, downscale_delay_s=1e9,
                      headroom_model=model)
        state = policy.initial_state()
        for t in range(200):
            n = 20 + (4 if t % 2 else 0)
            actions, state = policy.decide(cluster(30, n, now_s=float(t), max_batch=1), state)
        sizes[model] = policy.budget(CapacityLedger(cluster(30, 20, max_batch=1)), headroom=policy.headroom(
            cluster(30, 20, max_batch=1), state))[0]
    assert sizes["horizon"] <= 25 < sizes["random-walk"]
    # a steady climb is a swing over the horizon: the horizon estimate sees it
    policy = make("autoscaling", "load-driven", headroom_quantile=0.9, downscale_delay_s=1e9)
    state = policy.initial_state()
    for t in range(200):
        _, state = policy.decide(cluster(60, 10 + t // 4, now_s=float(t), max_batch=1), state)
    assert policy.headroom(cluster(60, 60, max_batch=1), state) >= 10


def test_load_driven_with_provision_idle_counts_idle_resident_sessions_as_demand():
    # 20 active + 10 idle sessions resident on the workers; b* = 10 (0.1 s a session, SLO 1 s).
    workers = tuple(WorkerView(f"w{i}", max_batch=10) for i in range(2))
    sessions = tuple(SessionView(f"a{i}", SessionStatus.ACTIVE, f"w{i % 2}", state_bytes=GiB) for i in range(20))
    sessions += tuple(SessionView(f"i{i}", SessionStatus.IDLE, f"w{i % 2}", state_bytes=GiB) for i in range(10))
    snap = Snapshot(now_s=0.0, workers=workers, sessions=sessions, slo_s=1.0, latency=LINEAR, max_workers=100)
    plain = make("autoscaling", "load-driven", headroom_quantile=0)
    kept = make("autoscaling", "load-driven", headroom_quantile=0, provision_idle=True)
    assert scale_target(plain.decide(snap, plain.initial_state())[0]) is None  # 20 / 10 = 2 GPUs: as is
    assert scale_target(kept.decide(snap, kept.initial_state())[0]) == 3  # (20 + 10) / 10


def test_load_driven_pays_for_an_idle_slot_only_for_the_first_start_up_time_of_the_idle_spell():
    # 20 active sessions; 15 idle ones, 5 idle for 4 s and 10 for 30 s; worker start-up 10 s.
    workers = tuple(WorkerView(f"w{i}", max_batch=10) for i in range(2))
    sessions = tuple(SessionView(f"a{i}", SessionStatus.ACTIVE, f"w{i % 2}", state_bytes=GiB) for i in range(20))
    sessions += tuple(SessionView(f"i{i}", SessionStatus.IDLE, f"w{i % 2}", state_bytes=GiB,
                                  since_s=100.0 - (4.0 if i < 5 else 30.0)) for i in range(15))
    snap = Snapshot(now_s=100.0, workers=workers, sessions=sessions, slo_s=1.0, latency=LINEAR, max_workers=100,
                    worker_startup_s=10.0)

    def target(**params):
        policy = make("autoscaling", "load-driven", headroom_quantile=0, provision_idle=True, **params)
        return scale_target(policy.decide(snap, policy.initial_state())[0])

    assert target() == 3  # (20 + 5 recent) / 10: the default keeps a slot paid for one start-up time
    assert target(provision_idle_s=60.0) == 4  # (20 + 15) / 10
    assert target(provision_idle_s=0.0) is None  # 20 / 10 = 2 GPUs: as is
    with pytest.raises(ValueError, match="provision_idle_s"):
        make("autoscaling", "load-driven", provision_idle_s=-1.0)


def test_load_driven_with_provision_returns_counts_the_suspended_sessions_expected_back():
    # 20 active sessions and 10 suspended ones on 3 workers (b* = 10); 2 suspended ones
    # came back within 10 s (0.02 returns per suspended session-second); start-up 60 s,
    # so of the 8 still suspended 8 x 0.02 x 60 = 9.6 -> 10 are expected back.
    workers = tuple(WorkerView(f"w{i}", max_batch=10) for i in range(3))
    active = tuple(SessionView(f"a{i}", SessionStatus.ACTIVE, f"w{i % 2}", state_bytes=GiB) for i in range(20))

    def snap(now, back):
        sessions = active + tuple(
            SessionView(f"s{i}", SessionStatus.ACTIVE if i < back else SessionStatus.SUSPENDED,
                        "w2" if i < back else None, state_bytes=GiB) for i in range(10))
        return Snapshot(now_s=now, workers=workers, sessions=sessions, slo_s=1.0, latency=LINEAR,
                        max_workers=100, worker_startup_s=60.0)

    def targets(**params):
        policy = make("autoscaling", "load-driven", headroom_quantile=0, downscale_delay_s=1e9, **params)
        state = policy.initial_state()
        _, state = policy.decide(snap(0.0, 0), state)
        actions, state = policy.decide(snap(10.0, 2), state)
        return scale_target(actions), state

    target, state = targets(provision_returns=True)
    assert state.return_rate_per_s == pytest.approx(0.02)
    assert target == 4  # (22 active + 10 expected back) / 10
    assert targets()[0] is None  # 22 / 10 -> 3 GPUs: as is


def expected_overflow(headroom: float, sigma: float) -> float:
    """Sessions a normal swing of ``sigma`` leaves without a slot, on average, past ``headroom``."""
    from statistics import NormalDist

    k, nd = headroom / sigma, NormalDist()
    return sigma * (nd.pdf(k) - k * (1.0 - nd.cdf(k)))


def swing_state(sigma: float, entering_per_s: float) -> LoadDrivenState:
    """A learnt swing of ``sigma`` sessions over the horizon and a learnt entry rate."""
    return LoadDrivenState(var_horizon=sigma**2, weight_horizon=1.0, arrivals=entering_per_s * 10.0, arrival_s=10.0)


def test_admission_wait_share_keeps_the_expected_overflow_within_that_share_of_the_entering_sessions():
    # a swing of 10 sessions over the 60 s start-up; 50 sessions enter in that time, so at
    # most 0.5 of them may find no slot: the smallest such headroom is kept
    policy = make("autoscaling", "load-driven", admission_wait_share=0.01)
    snap = cluster(10, 50, worker_startup_s=60.0)
    spare = policy.headroom(snap, swing_state(10.0, 50 / 60))
    assert expected_overflow(spare, 10.0) <= 0.5 < expected_overflow(spare - 1, 10.0)
    assert spare > make("autoscaling", "load-driven").headroom(snap, swing_state(10.0, 50 / 60))  # the 0.8 quantile: 8


def test_admission_wait_share_headroom_falls_as_more_sessions_enter_but_not_below_the_quantile():
    # the same overflow is a smaller share of more entering sessions
    policy = make("autoscaling", "load-driven", admission_wait_share=0.01)
    snap = cluster(10, 50, worker_startup_s=60.0)
    spares = [policy.headroom(snap, swing_state(10.0, rate)) for rate in (0.1, 1.0, 10.0, 1000.0)]
    assert spares == sorted(spares, reverse=True) and spares[0] > spares[-1]
    assert spares[-1] == 8  # floor(z_0.8 * 10): the quantile headroom stays the floor
    # before any entry is seen: the swing's 0.99 quantile, 2.326 * 10 rounded up
    assert policy.headroom(snap, swing_state(10.0, 0.0)) == 24
    assert policy.headroom(snap, swing_state(0.0, 1.0)) == 0  # no swing, nothing to cover


def test_load_driven_learns_the_rate_of_sessions_entering_the_demand():
    # 10 s apart: three new sessions wait, one comes back from host memory, one active
    # session goes idle (it leaves the demand) and one idle session becomes active: 5 entered
    workers = tuple(WorkerView(f"w{i}", max_batch=10) for i in range(3))
    before = tuple(SessionView(f"a{i}", SessionStatus.ACTIVE, f"w{i % 3}", state_bytes=GiB) for i in range(10)) + (
        SessionView("back", SessionStatus.SUSPENDED), SessionView("wakes", SessionStatus.IDLE, "w2", state_bytes=GiB))
    after = tuple(SessionView(f"a{i}", SessionStatus.IDLE if i == 0 else SessionStatus.ACTIVE, f"w{i % 3}",
                              state_bytes=GiB, since_s=0.0) for i in range(10)) + (
        SessionView("back", SessionStatus.ACTIVE, "w2", state_bytes=GiB),
        SessionView("wakes", SessionStatus.ACTIVE, "w2", state_bytes=GiB),
    ) + tuple(SessionView(f"new{i}", SessionStatus.PENDING) for i in range(3))
    policy = make("autoscaling", "load-driven", admission_wait_share=0.01)
    state = policy.initial_state()
    for now, sessions in ((0.0, before), (10.0, after)):
        snap = Snapshot(now_s=now, workers=workers, sessions=sessions, slo_s=1.0, latency=LINEAR, max_workers=100)
        _, state = policy.decide(snap, state)
    assert state.arrival_rate_per_s == pytest.approx(0.5)
    assert make("autoscaling", "load-driven").decide(snap, LoadDrivenState())[1].arrival_rate_per_s == 0.0  # off: not learnt
    with pytest.raises(ValueError, match="admission_wait_share"):
        make("autoscaling", "load-driven", admission_wait_share=0.0)
