"""The closed loop end to end: a compressed burst trace replayed on a LocalCluster with
the controller and SessionAdaptive. Workers go up under the burst and back down after
it, the controller migrates sessions onto the new workers, and every session gets every
chunk it asked for, in order."""

from __future__ import annotations

import time

import dask
import pytest

from experiments.results import CHUNK_COLUMNS, INTERVAL_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(burst_replay):
    """The live replay of the burst trace (tests/conftest.py: one replay for this module and test_parity)."""
    return burst_replay[1]


def test_outputs_have_the_contract_columns(run):
    assert tuple(run.chunks.columns) == CHUNK_COLUMNS
    assert tuple(run.intervals.columns) == INTERVAL_COLUMNS
    assert run.summary["backend"] == "live" and run.summary["failed_ticks"] == 0


def test_workers_go_up_under_the_burst_and_back_down_after_it(run):
    n = run.intervals.set_index("time_s")["n_workers"]
    assert n.iloc[0] == 1
    assert n.loc[10:120].max() == 3  # the burst of 3 sessions next to the base one, capped at maximum=3
    assert n.iloc[-1] < 3
    retired = run.decisions[(run.decisions["action"] == "Retire") & run.decisions["accepted"]
                            & ~run.decisions["worker"].str.startswith("starting-")]
    assert len(retired) >= 1
    assert len(run.stats["workers"]) >= 2 and run.stats["workers"]["released_s"].notna().any()


def test_the_controller_migrates_sessions_onto_new_workers(run):
    migrations = run.decisions[(run.decisions["action"] == "Migrate") & run.decisions["accepted"]]
    assert len(migrations) >= 1
    assert run.chunks["migrated"].sum() >= 1
    assert run.intervals["migrations"].sum() >= 1


def test_no_session_is_lost_and_every_chunk_arrives_in_order(run, burst_replay):
    assert run.stats["errors"] == []
    assert set(run.chunks["session_id"]) == set(burst_replay[0]["session_id"])
    for sid, rows in run.chunks.groupby("session_id"):
        rows = rows.sort_values("t_done_s")
        assert list(rows["index"]) == list(range(len(rows))), sid
        assert (rows["latency_s"] >= 0).all()  # 0: made ahead of its request (engine.prearm-chunks)
        assert (rows["latency_s"] > 0).any()
    # the base session streams through the whole trace, over every scale event
    assert run.chunks["session_id"].value_counts()["base0"] >= 10


def test_the_control_loop_refused_nothing_it_should_not(run):
    refused = run.decisions[~run.decisions["accepted"]]
    # the first tick may come before the Adaptive's first poll of the target
    allowed = ("being admitted by the runtime", "being drained by the runtime", "in flight", "no autoscaler attached")
    assert all(any(a in r for a in allowed) for r in refused["reason"]), refused.to_string()


def test_server_local_adaptive_scales_to_the_policy_target():
    from framework import Server

    # load-driven wants 0 workers for no load; the bounds clamp it to minimum=2
    with dask.config.set({"turboserve.autoscale.minimum": 2, "turboserve.autoscale.maximum": 2,
                          "turboserve.control.interval": "200ms", "turboserve.autoscale.wait-count": 1}):
        with Server.local(n_workers=1, model="tiny", adaptive=True, dashboard_address=None) as server:
            deadline = time.monotonic() + 90
            while len(server.workers()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(server.workers()) == 2
            stats = server.client.sync(server.client.scheduler.turboserve_control_stats)
            assert stats["autoscaler_attached"] and stats["target"] == 2
