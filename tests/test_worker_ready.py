"""A worker that joined takes sessions only once its model is loaded.

Dask counts a worker as running when it registers with the scheduler; its ModelHost then
still loads the model. The scheduler plugin keeps it out of placement, migration and
admission (the control loop's snapshot shows it STARTING) until the host reports its
model loaded, or until ``turboserve.control.worker-ready-timeout`` has passed.

In memory: :class:`framework.warmup.Warmup`, the snapshot's status mapping and the loop
against the fake cluster of ``test_control_loop.py``. Live (slow): a second LocalCluster
worker joins with a slowed model load while sessions stream; the loop migrates onto it
only after it reported ready, and the moved session does not stall for the load.
"""

from __future__ import annotations

import asyncio
import time

import dask
import pytest

from framework import Server
from framework.control_snapshot import build_snapshot
from framework.controller import ControlLoop
from framework.warmup import Warmup
from policies.semantics import Refusal
from policies.types import BatchLatencyModel, Migrate, SessionStatus, WorkerStatus
from workers.plugin import READY_TOPIC
from test_control_loop import ACTIVE, Clock, FakeCluster, accepted, settings, settle

STARTING, RUNNING, DRAINING = WorkerStatus.STARTING, WorkerStatus.RUNNING, WorkerStatus.DRAINING


class WarmingCluster(FakeCluster):
    """The fake cluster with the scheduler plugin's warm-up: workers join cold and report ready."""

    def __init__(self, workers: list[str]) -> None:
        super().__init__(workers)
        self.warm = Warmup(60.0, clock=lambda: 0.0)

    def warming(self) -> frozenset[str]:
        return self.warm.cold()

    def join(self, loop: ControlLoop, worker: str) -> None:
        self._workers.append(worker)
        self.warm.joined(worker)
        loop.worker_added(worker, ready=False)

    def ready(self, loop: ControlLoop, worker: str) -> None:
        assert self.warm.ready(worker)
        loop.worker_ready(worker)


# ---------------------------------------------------------------- Warmup


def test_a_worker_is_cold_from_joining_until_it_reports_or_leaves():
    now = [0.0]
    w = Warmup(30.0, clock=lambda: now[0])
    w.joined("a")
    w.joined("b")
    assert w.cold() == {"a", "b"}
    assert w.ready("a") and not w.ready("a")  # a second report changes nothing
    w.left("b")
    assert w.cold() == frozenset()


def test_a_silent_worker_is_offered_once_the_timeout_has_passed():
    now = [0.0]
    w = Warmup(30.0, clock=lambda: now[0])
    w.joined("a")
    now[0] = 10.0
    w.joined("b")
    now[0] = 29.9
    assert w.overdue() == [] and w.cold() == {"a", "b"}
    now[0] = 30.0
    assert w.overdue() == ["a"] and w.cold() == {"b"}


def test_a_zero_timeout_offers_workers_as_soon_as_they_join():
    w = Warmup(0.0)
    w.joined("a")
    assert w.cold() == frozenset() and not w.ready("a")


def test_a_negative_timeout_is_refused_with_the_key_to_fix():
    with pytest.raises(ValueError, match="worker-ready-timeout"):
        Warmup(-1.0)


# ---------------------------------------------------------------- the snapshot's statuses


def _snapshot(workers, *, warming=(), retiring=(), records=()):
    return build_snapshot(
        now_s=0.0, workers=[(w, 0.0) for w in workers], retiring=set(retiring), starting=0, records=records,
        admitting=lambda sid: False, in_flight={}, clock=lambda t: t, time_scale=1.0, slo_s=1.0,
        latency=BatchLatencyModel((1,), (0.1,)), max_batch=4, memory_bytes=10**9, min_workers=1,
        max_workers=4, worker_startup_s=5.0, warming=warming,
    )


def test_the_snapshot_shows_a_warming_worker_starting_under_its_own_address():
    snap = _snapshot(["a", "b"], warming={"b"})
    assert {w.address: w.status for w in snap.workers} == {"a": RUNNING, "b": STARTING}


def test_a_warming_worker_being_retired_shows_draining():
    snap = _snapshot(["a", "b"], warming={"b"}, retiring={"b"})
    assert {w.address: w.status for w in snap.workers}["b"] is DRAINING


def test_a_warming_worker_that_already_holds_a_session_shows_running():
    # a session opened there by name waited for the load: the model is there now
    cluster = FakeCluster(["a", "b"])
    rec = cluster.add("s", ACTIVE, "b")
    snap = _snapshot(["a", "b"], warming={"b"}, records=[rec])
    assert {w.address: w.status for w in snap.workers}["b"] is RUNNING
    assert snap.session("s").worker == "b"


# ---------------------------------------------------------------- the loop


def test_the_loop_does_not_migrate_onto_a_worker_until_it_reports_ready():
    async def main():
        cluster = WarmingCluster(["w1"])
        for i in range(4):
            cluster.add(f"s{i}", ACTIVE, "w1")
        loop = ControlLoop(settings(placement="migration-aware", placement_params={"min_gain": 0.01}), cluster, Clock())
        cluster.join(loop, "w2")
        assert accepted(await loop.tick(), "Migrate") == []
        assert {w.address: w.status for w in loop.snapshot().workers}["w2"] is STARTING
        # a move asked for all the same is refused by the shared rules
        (forced,) = loop.apply(Migrate("s0", "w1", "w2", cause="test"))
        assert not forced.accepted and loop.refused[Refusal.WORKER_STARTING.value] == 1
        cluster.ready(loop, "w2")
        moves = accepted(await loop.tick(), "Migrate")
        assert moves and all(d.worker == "w2" for d in moves)
        await settle(loop)

    asyncio.run(main())


def test_admission_picks_a_warm_worker_over_a_cold_one_and_waits_for_a_lone_cold_one():
    async def main():
        cluster = WarmingCluster(["w1"])
        loop = ControlLoop(settings(), cluster, Clock())
        cluster.join(loop, "w2")  # empty, but still loading: the least-loaded rule would pick it
        cluster.add("busy", ACTIVE, "w1")
        cluster.add("new", SessionStatus.PENDING)
        assert loop.choose("new") == "w1"
        # only a cold worker left (w1 excluded, e.g. full): nothing yet; the runtime waits
        assert loop.choose("new", exclude={"w1"}) is None
        cluster.ready(loop, "w2")
        assert loop.choose("new", exclude={"w1"}) == "w2"

    asyncio.run(main())


def test_the_measured_start_up_time_runs_until_the_worker_is_ready():
    async def main():
        clock = Clock()
        cluster = WarmingCluster(["w1"])
        cluster.add("a", ACTIVE, "w1")
        cluster.add("b", ACTIVE, "w1")
        loop = ControlLoop(settings(autoscaling="fixed", autoscaling_params={"n": 2}), cluster, clock)
        assert accepted(await loop.tick(), "ScaleTo")  # asks for the second worker at t=1000
        clock.t += 4.0
        cluster.join(loop, "w2")
        assert loop.fleet.startup_s == []  # joined, model still loading
        clock.t += 11.0
        cluster.ready(loop, "w2")
        assert loop.fleet.startup_s == [15.0]

    asyncio.run(main())


# ---------------------------------------------------------------- live


@pytest.mark.slow
def test_a_joining_worker_takes_a_migration_only_when_warm_and_the_moved_session_does_not_stall():
    from experiments.bench_warm_join import run

    delay = 8.0
    r = run(load_delay_s=delay, ready_timeout="120s", n_sessions=2, settle_s=delay + 90.0)
    assert r["errors"] == []
    assert r["starting_seen"], "the new worker was never STARTING in the loop's snapshot"
    assert r["ready_s"] is not None and r["ready_s"] >= delay  # the slowed load was reported
    assert r["migrations"], f"the loop never moved a session onto the new worker: {r['decisions']}"
    assert r["first_migrate_s"] >= r["ready_s"]  # never before it was warm
    # the moved session waited for a move, not for the model load
    assert r["worst_gap_s"] < 0.5 * r["ready_s"], r


@pytest.mark.slow
def test_an_open_that_only_a_loading_worker_can_take_waits_for_it_instead_of_refusing(tmp_path):
    delay = 6.0
    admission = {"turboserve.admission.max-sessions-per-worker": 1, "turboserve.admission.on-full": "refuse"}
    with dask.config.set(admission), Server.local(n_workers=1, model="tiny", store=str(tmp_path), adaptive=False,
                                                  dashboard_address=None) as server:
        (first,) = server.workers()
        server.open_session("a kite over the dunes", seed=1)  # the first worker is full now
        with dask.config.set({"turboserve.engine.model-load-delay": delay}):
            server.cluster.scale(2)
            while len(server.workers()) < 2:
                time.sleep(0.05)
        (new,) = [w for w in server.workers() if w != first]
        # only the loading worker has room, and placement does not see it yet: the open
        # waits for it (bounded by worker-ready-timeout) instead of refusing (on-full: refuse)
        s = server.open_session("a lighthouse at night", seed=2)
        opened = time.time()
        (ready,) = [t for t, msg in server.client.get_events(READY_TOPIC) if msg.get("worker") == new]
        assert s.worker == new and ready <= opened
        t0 = time.monotonic()
        assert [c.index for c in s.stream(1)] == [0]
        assert time.monotonic() - t0 < delay / 2  # its model was already there
