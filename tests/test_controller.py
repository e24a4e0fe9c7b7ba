"""The control loop on a real LocalCluster (tiny model on CPU): the scheduler plugin's loop
applies the policies' actions with the plugin's mechanisms, refuses impossible ones with a
reason (the shared rules of ``policies.semantics``), and keeps ticking when a tick fails.
The same loop against an in-memory fake, without a cluster: ``tests/test_control_loop.py``."""

from __future__ import annotations

import time

import dask
import pytest

from framework import Server
from framework.control_settings import ControlSettings
from framework.control_snapshot import LatencyEstimator
from framework.registry import PLUGIN_NAME
from policies.registry import make
from policies.semantics import Decision
from policies.types import Migrate, Offload, Reject, Retire, ScaleTo


def wait_for(predicate, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def on_controller(server, fn):
    """Run ``fn(loop)`` with the plugin's control loop on the scheduler's event loop; return its result."""
    return server.client.run_on_scheduler(lambda dask_scheduler: fn(dask_scheduler.plugins[PLUGIN_NAME].loop))


def apply(server, action) -> Decision:
    """The (last) decision the loop takes on ``action``."""
    return on_controller(server, lambda c: c.apply(action))[-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("state"))
    with dask.config.set({"turboserve.control.interval": "200ms"}):
        srv = Server.local(n_workers=2, model="tiny", store=store, dashboard_address=None)
    try:
        srv.start_control(minimum=2, maximum=3, placement="least-loaded", autoscaling="fixed",
                          autoscaling_params={"n": 2}, offload="idle-timeout", offload_params={"idle_s": 0.5},
                          interval_s=0.2)
        yield srv
    finally:
        srv.close()


def test_settings_come_from_the_dask_config():
    with dask.config.set({"turboserve.policies.placement": "round-robin", "turboserve.control.interval": "250ms",
                          "turboserve.control.idle-offload-s": 7, "turboserve.autoscale.maximum": 5}):
        s = ControlSettings.from_config()
    assert (s.placement, s.interval_s, s.offload_params["idle_s"], s.maximum) == ("round-robin", 0.25, 7.0, 5)
    with pytest.raises(ValueError, match="time_scale"):
        ControlSettings(time_scale=0)


def test_kept_slots_are_left_to_returning_sessions_for_the_configured_time():
    from framework.control_settings import default_policy_params

    def keep_s(**cfg):
        with dask.config.set({f"turboserve.{k}": v for k, v in cfg.items()}):
            return default_policy_params("migration-aware", "load-driven", "idle-timeout",
                                         max_batch=2, worker_memory=2**30)["placement"]["keep_idle_s"]

    assert keep_s() is None  # null: the autoscaler's provision-idle-s, itself null: the start-up time
    assert keep_s(**{"autoscale.provision-idle-s": "20s"}) == 20.0
    assert keep_s(**{"autoscale.provision-idle-s": "20s", "control.keep-idle-from-newcomers-s": 0}) == 0.0


def test_the_admission_wait_share_reaches_the_load_driven_autoscaler_from_the_config():
    from framework.control_settings import default_policy_params

    def share(**cfg):
        with dask.config.set({f"turboserve.{k}": v for k, v in cfg.items()}):
            params = default_policy_params("migration-aware", "load-driven", "idle-timeout",
                                           max_batch=2, worker_memory=2**30)["autoscaling"]
        return make("autoscaling", "load-driven", **params).admission_wait_share

    assert share() is None  # off by default: the 0.8 quantile of the swing
    assert share(**{"autoscale.admission-wait-share": 0.01}) == 0.01


def test_latency_estimator_takes_the_fastest_recent_chunk_per_batch_and_stays_monotone():
    est = LatencyEstimator(((1, 1.0), (8, 4.0)))
    for lat in (0.5, 0.3, 0.9):
        est.add(2, lat)
    est.add(4, 0.2)  # faster than batch 2: the curve is kept non-decreasing
    model = est.model()
    assert model.batch_sizes == (2, 4, 8)
    assert model.step_s == (0.3, 0.3, 4.0)
    assert est.model(scale=10).step_s == (3.0, 3.0, 40.0)


def test_an_idle_session_is_offloaded_by_the_loop_and_resumes_when_streamed(server):
    s = server.open_session("a red fox running through snow", seed=1, session_id="offloaded")
    assert [c.index for c in s.stream(2)] == [0, 1]
    s.pause()
    wait_for(lambda: s.status == "suspended", timeout=30)
    decisions = on_controller(server, lambda c: [d for d in c.decisions if d.session_id == "offloaded"])
    assert any(d.action == "Offload" and d.accepted for d in decisions)
    assert [c.index for c in s.stream(1)] == [2]  # streaming again resumes it, without a gap
    s.close()


def test_migration_to_a_worker_that_just_left_is_refused(server):
    s = server.open_session("a lighthouse at dusk", seed=2, session_id="stays")
    next(iter(s.stream(1)))
    server.cluster.scale(3)
    wait_for(lambda: len(server.workers()) == 3, timeout=90)
    before = set(server.workers())
    server.cluster.scale(2)
    wait_for(lambda: len(server.workers()) == 2, timeout=60)
    (gone,) = before - set(server.workers())
    decision = apply(server, Migrate("stays", s.worker, gone, cause="test"))
    assert not decision.accepted
    assert "does not exist" in decision.reason
    assert on_controller(server, lambda c: c.refused["no-such-worker"]) >= 1
    assert [c.index for c in s.stream(1)] == [1]  # the session was left alone
    s.close()


def test_scale_in_below_the_minimum_is_refused(server):
    on_controller(server, lambda c: c.mechanisms.adaptive_target())  # as an attached Adaptive would poll
    workers = server.workers()
    retire = apply(server, Retire(workers[0], cause="test"))
    assert not retire.accepted and "below min_workers=2" in retire.reason
    clipped, scaled = on_controller(server, lambda c: c.apply(ScaleTo(1, cause="test")))
    assert not clipped.accepted and "clipped to 2" in clipped.reason
    assert scaled.accepted and scaled.worker == "2"  # the clipped target applies
    assert on_controller(server, lambda c: c.fleet.target) == 2
    assert server.workers() == workers


def test_actions_on_unknown_or_closed_sessions_are_refused(server):
    s = server.open_session("a paper boat", seed=3, session_id="closed-one")
    s.close()
    # a closed session is no longer among the loop's records: unknown, like one never opened
    assert "it is unknown, not idle" in apply(server, Offload("nope", cause="test")).reason
    assert "it is unknown, not idle" in apply(server, Offload("closed-one", cause="test")).reason
    assert not apply(server, Reject("closed-one", cause="test")).accepted
    stats = server.client.sync(server.client.scheduler.turboserve_control_stats)
    assert stats["refused"]["offload-not-idle"] >= 2 and stats["refused"]["reject-not-pending"] >= 1


class Exploding:
    """A placement policy that fails on every decision."""

    kind, name = "placement", "exploding"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        raise RuntimeError("boom")


def test_a_failing_tick_is_logged_and_the_loop_goes_on(server, caplog):
    def swap(c):
        from policies.combined import Combined

        c._saved = (c.policy, c.state)
        c.policy = Combined(Exploding(), c.policy.autoscaling, c.policy.offload)
        c.state = c.policy.initial_state()
        return c.counters["failed_ticks"]

    failed0 = on_controller(server, swap)
    with caplog.at_level("WARNING", logger="framework.controller"):
        wait_for(lambda: on_controller(server, lambda c: c.counters["failed_ticks"]) >= failed0 + 2, timeout=30)
    assert any("control tick failed" in r.message and r.exc_info for r in caplog.records)

    def restore(c):
        c.policy, c.state = c._saved
        return c.counters["ticks"]

    ticks = on_controller(server, restore)
    wait_for(lambda: on_controller(server, lambda c: c.counters["ticks"]) > ticks + 1, timeout=30)
    stats = server.client.sync(server.client.scheduler.turboserve_control_stats)
    assert stats["decide_ms_mean"] is not None and stats["decide_ms_max"] >= 0


def test_an_accepted_migration_moves_the_session_and_shows_as_migrating_meanwhile(server):
    s = server.open_session("a kite over the dunes", seed=4, session_id="mover")
    assert [c.index for c in s.stream(1)] == [0]
    source = s.worker
    (target,) = [w for w in server.workers() if w != source]

    def migrate_and_look(c):
        (decision,) = c.apply(Migrate("mover", source, target, cause="test"))
        view = c.snapshot().session("mover")
        return decision, view.status.value, view.worker

    decision, status, where = on_controller(server, migrate_and_look)
    assert decision.accepted
    assert (status, where) == ("migrating", target)  # the policies see the move in flight
    wait_for(lambda: server.session("mover").worker == target, timeout=60)
    chunk = next(iter(s.stream(1)))
    assert (chunk.index, chunk.worker, chunk.migrated) == (1, target, True)
    s.close()


def test_profile_points_take_the_median_step_per_batch_at_the_shortest_context(tmp_path):
    from framework.control_settings import profile_points

    (tmp_path / "tiny-cpu.csv").write_text(
        "# measured on a test machine\n"
        "batch_size,step_s,context_frames\n"
        "1,0.10,0\n1,0.30,0\n1,0.20,0\n4,0.50,0\n4,0.90,24\n"
    )
    assert profile_points("tiny", tmp_path) == ((1, 0.2), (4, 0.5))
    assert profile_points("wan-1.3b", tmp_path) == ()


def test_a_scale_out_puts_a_drained_worker_back_in_service_before_asking_for_new_ones(server):
    on_controller(server, lambda c: c.mechanisms.adaptive_target())
    worker = server.workers()[-1]

    def drained_then_scale_out(c):
        c.fleet.retiring.add(worker)
        c.fleet.drained.add(worker)
        c.mechanisms.admission.draining.add(worker)  # as the runtime's drain(retire=False) leaves it
        (decision,) = c.apply(ScaleTo(3, cause="test"))
        return decision, worker in c.fleet.retiring, worker in c.mechanisms.admission.draining

    decision, retiring, draining = on_controller(server, drained_then_scale_out)
    assert decision.accepted and f"kept drained ['{worker}'] in service" in decision.reason
    assert not retiring and not draining


def test_the_snapshot_counts_the_chunks_made_and_shows_the_valves_batch(server):
    session = server.open_session("a red fox running through snow", seed=0)
    try:
        for _ in range(2):
            session.submit().result(timeout=60)
    finally:
        session.close()
    snap = wait_for(lambda: (lambda sn: sn if sn.chunks_made >= 2 else None)(on_controller(server, lambda c: c.snapshot())))
    assert snap.degraded_chunks == 0  # the valve is off here
    # the session's burst (from its first chunk to its close) ended: the registry tallied it
    assert snap.bursts_ended >= 1 and snap.mean_burst_s > 0

    def views_with_a_valve(c):  # engine.quality-valve.batch 1 of engine.max-batch 4
        from dataclasses import replace

        settings = c.settings
        c.settings = replace(settings, valve_batch=1, max_batch=4)
        try:
            return {(w.max_batch, w.valve_batch) for w in c.snapshot().workers}
        finally:
            c.settings = settings

    # the policies place for b* and see the engine's cap as the valve's batch, as simulated
    assert on_controller(server, views_with_a_valve) == {(1, 4)}
    cap = on_controller(server, lambda c: c.settings.max_batch)
    assert {(w.max_batch, w.valve_batch) for w in on_controller(server, lambda c: c.snapshot()).workers} == {(cap, 0)}
