"""The control loop against an in-memory fake cluster, without Dask (the tier of dask's
``test_adaptive_core.py``): the real policies, the real loop, the shared action rules;
only the mechanisms are a fake that moves records in memory.

Covered: placement, migration, scale-out, drain-then-retire, refused actions (checked by
``policies.semantics`` and refused by the mechanisms), a failing tick, a failing
mechanism, and admission asking the loop.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from framework.control_settings import ControlSettings
from framework.controller import ControlLoop
from framework.registry import SessionRecord
from policies.combined import Combined
from policies.semantics import Refusal
from policies.types import BurstTally, Migrate, Place, Retire, ScaleTo, SessionStatus, WorkerStatus

ACTIVE, IDLE, PENDING, SUSPENDED = SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.PENDING, SessionStatus.SUSPENDED


class FakeCluster:
    """:class:`framework.controller.Mechanisms` in memory: records move, nothing runs."""

    def __init__(self, workers: list[str], *, scalable: bool = True) -> None:
        self._workers = list(workers)
        self._records: dict[str, SessionRecord] = {}
        self._scalable = scalable
        self.calls: list[tuple] = []
        self.draining: set[str] = set()
        self.target: int | None = None
        self.fail: set[str] = set()  # mechanisms that raise

    def add(self, sid: str, status: SessionStatus, worker: str | None = None, state_bytes: int = 1000) -> SessionRecord:
        rec = SessionRecord(sid, "tiny", "a prompt", 0, 64, 64, status=status, worker=worker,
                            state_bytes=state_bytes, chunk_period_s=1.0)
        self._records[sid] = rec
        return rec

    # -- Mechanisms
    def workers(self) -> list[str]:
        return list(self._workers)

    def records(self) -> list[SessionRecord]:
        return [r for r in self._records.values() if r.status is not SessionStatus.CLOSED]

    def admitting(self, session_id: str) -> bool:
        return False

    def tiers(self) -> tuple[str, ...]:
        return ("host",)

    def scalable(self) -> bool:
        return self._scalable

    def scale(self, n: int) -> None:
        self.calls.append(("scale", n))
        self.target = n

    async def place(self, session_id: str, worker: str) -> None:
        await self._act("place", session_id, worker)
        rec = self._records[session_id]
        rec.worker, rec.status = worker, ACTIVE

    async def migrate(self, session_id: str, target: str) -> None:
        await self._act("migrate", session_id, target)
        rec = self._records[session_id]
        rec.worker = target
        rec.migrations += 1

    async def suspend(self, session_id: str, tier: str) -> None:
        await self._act("suspend", session_id, tier)
        rec = self._records[session_id]
        rec.status, rec.worker, rec.tier = SUSPENDED, None, tier

    async def resume(self, session_id: str, worker: str) -> None:
        await self._act("resume", session_id, worker)
        rec = self._records[session_id]
        rec.status, rec.worker, rec.tier = IDLE, worker, None

    async def drain(self, worker: str) -> None:
        await self._act("drain", worker)
        self.draining.add(worker)
        others = [w for w in self._workers if w != worker and w not in self.draining]
        for rec in self.records():
            if rec.worker == worker:
                rec.worker = others[0]

    def undrain(self, worker: str) -> None:
        self.calls.append(("undrain", worker))
        self.draining.discard(worker)

    async def _act(self, name: str, *args: str) -> None:
        self.calls.append((name, *args))
        await asyncio.sleep(0)
        if name in self.fail:
            raise RuntimeError(f"{name} broke")

    # -- what the scheduler plugin would tell the loop
    def join(self, loop: ControlLoop, worker: str) -> None:
        self._workers.append(worker)
        loop.worker_added(worker)

    def leave(self, loop: ControlLoop, worker: str) -> None:
        self._workers.remove(worker)
        loop.worker_removed(worker)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def settings(**kw) -> ControlSettings:
    base = dict(placement="least-loaded", autoscaling="fixed", autoscaling_params={"n": 2}, offload="never",
                minimum=1, maximum=4, slo_s=1.0, latency_points=((1, 0.1), (8, 0.8)), measure=False)
    base.update(kw)
    return ControlSettings(**base)


async def settle(loop: ControlLoop) -> None:
    """Let the actions and drains in flight finish."""
    for _ in range(100):
        tasks = loop.actions.tasks()
        if not tasks:
            return
        await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("actions still in flight")


def accepted(decisions, action: str) -> list:
    return [d for d in decisions if d.action == action and d.accepted]


def test_a_pending_session_is_placed_on_the_least_loaded_worker():
    async def main():
        cluster = FakeCluster(["w1", "w2"])
        cluster.add("busy", ACTIVE, "w1")
        cluster.add("new", PENDING)
        loop = ControlLoop(settings(), cluster, Clock())
        decisions = await loop.tick()
        (place,) = accepted(decisions, "Place")
        assert (place.session_id, place.worker) == ("new", "w2")
        # in flight: the policies see it as it will be, and the rules refuse a second action
        assert loop.snapshot().session("new").status is ACTIVE
        (again,) = loop.apply(Place("new", "w1", cause="test"))
        assert not again.accepted and loop.refused[Refusal.IN_FLIGHT.value] == 1
        await settle(loop)
        assert cluster.calls == [("place", "new", "w2")]
        assert cluster._records["new"].worker == "w2" and loop.stats()["accepted"]["Place"] == 1

    asyncio.run(main())


def test_a_crowded_worker_sheds_a_session_by_migration():
    async def main():
        cluster = FakeCluster(["w1", "w2"])
        for i in range(4):
            cluster.add(f"s{i}", ACTIVE, "w1")
        loop = ControlLoop(settings(placement="migration-aware", placement_params={"min_gain": 0.01}), cluster, Clock())
        decisions = await loop.tick()
        moves = accepted(decisions, "Migrate")
        assert moves and all(d.worker == "w2" for d in moves)
        await settle(loop)
        on = [r.worker for r in cluster.records()]
        assert on.count("w2") == len(moves) and sum(r.migrations for r in cluster.records()) == len(moves)

    asyncio.run(main())


def test_interval_rows_keep_the_migrations_of_sessions_that_closed_since():
    async def main():
        cluster = FakeCluster(["w1", "w2"])
        for i in range(4):
            cluster.add(f"s{i}", ACTIVE, "w1")
        loop = ControlLoop(settings(placement="migration-aware", placement_params={"min_gain": 0.01}), cluster, Clock())
        moves = accepted(await loop.tick(), "Migrate")
        await settle(loop)
        await loop.tick()  # counts the completed moves
        for r in cluster.records():  # every session closes; the registry forgets them
            r.status = SessionStatus.CLOSED
        await loop.tick()
        column = [row[5] for row in loop.intervals]
        assert min(column) >= 0 and sum(column) == len(moves) >= 1

    asyncio.run(main())


def test_scale_out_asks_the_cluster_manager_and_shows_the_worker_as_starting():
    async def main():
        clock = Clock()
        cluster = FakeCluster(["w1", "w2"])
        loop = ControlLoop(settings(autoscaling_params={"n": 3}), cluster, clock)
        decisions = await loop.tick()
        (scale,) = accepted(decisions, "ScaleTo")
        assert scale.worker == "3" and cluster.target == 3 and loop.fleet.target == 3
        starting = [w for w in loop.snapshot().workers if w.status is WorkerStatus.STARTING]
        assert [w.address for w in starting] == ["starting-0"]
        (refused,) = loop.apply(Place("nobody", "starting-0"))  # a placeholder is no place yet
        assert not refused.accepted
        clock.t += 7.5
        cluster.join(loop, "w3")
        assert loop.fleet.startup_s == [7.5]
        assert not [w for w in loop.snapshot().workers if w.status is WorkerStatus.STARTING]

    asyncio.run(main())


def test_scale_in_drains_the_worker_first_then_offers_it_for_closing():
    async def main():
        cluster = FakeCluster(["w1", "w2"])
        cluster.add("a", ACTIVE, "w1")
        cluster.add("b", IDLE, "w2")
        loop = ControlLoop(settings(autoscaling_params={"n": 1}), cluster, Clock())
        decisions = await loop.tick()
        (retire,) = accepted(decisions, "Retire")
        assert [d.action for d in decisions][-1] == "ScaleTo"  # ScaleTo applied last
        gone = retire.worker
        assert gone in loop.fleet.retiring and loop.fleet.to_close(busy=set()) == []  # still draining
        snap = loop.snapshot()
        assert snap.worker(gone).status is WorkerStatus.DRAINING
        await settle(loop)
        assert ("drain", gone) in cluster.calls
        assert all(r.worker != gone for r in cluster.records())
        assert loop.fleet.to_close(busy={r.worker for r in cluster.records()}) == [gone]
        cluster.leave(loop, gone)
        assert loop.fleet.to_close(busy=set()) == [] and gone not in loop.fleet.retiring
        assert loop.log()["workers"][0]["released_s"] is not None or loop.log()["workers"][1]["released_s"] is not None

    asyncio.run(main())


def test_impossible_actions_are_refused_by_category_and_touch_nothing():
    async def main():
        cluster = FakeCluster(["w1", "w2"], scalable=False)
        cluster.add("a", ACTIVE, "w1")
        loop = ControlLoop(settings(minimum=2), cluster, Clock())
        cases = [
            (Migrate("a", "w1", "gone"), Refusal.NO_SUCH_WORKER),
            (Migrate("a", "w2", "w1"), Refusal.MIGRATE_BAD_SOURCE),
            (Migrate("a", "w1", "w1"), Refusal.MIGRATE_SAME_WORKER),
            (Place("a", "w2"), Refusal.SESSION_NOT_PLACEABLE),
            (Retire("w9"), Refusal.RETIRE_BAD_WORKER),
            (ScaleTo(3), Refusal.NO_AUTOSCALER),
        ]
        for action, refusal in cases:
            (decision,) = loop.apply(action)
            assert not decision.accepted, action
            assert loop.refused[refusal.value] >= 1, (action, dict(loop.refused))
        assert cluster.calls == []
        cluster._scalable = True
        (decision,) = loop.apply(Retire("w2"))
        assert not decision.accepted and "below min_workers=2" in decision.reason
        clipped, applied = loop.apply(ScaleTo(9))
        assert (clipped.accepted, applied.accepted, applied.worker) == (False, True, "4")
        assert loop.refused[Refusal.SCALE_OUT_OF_BOUNDS.value] == 1 and cluster.target == 4

    asyncio.run(main())


def test_a_drain_move_off_a_worker_the_loop_drains_itself_is_refused():
    async def main():
        cluster = FakeCluster(["w1", "w2"])
        cluster.add("a", ACTIVE, "w1")
        loop = ControlLoop(settings(), cluster, Clock())
        loop.fleet.retiring.add("w1")
        (drain_move,) = loop.apply(Migrate("a", "w1", "w2", cause="drain", drain=True))
        assert not drain_move.accepted and loop.refused[Refusal.DRAINED_BY_EXECUTOR.value] == 1
        (balance,) = loop.apply(Migrate("a", "w1", "w2", cause="balance"))
        assert balance.accepted
        await settle(loop)

    asyncio.run(main())


class Exploding:
    kind, name = "placement", "exploding"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        raise RuntimeError("boom")


def test_a_failing_tick_is_logged_and_the_loop_goes_on(caplog):
    async def main():
        cluster = FakeCluster(["w1"])
        loop = ControlLoop(settings(interval_s=0.01, autoscaling_params={"n": 1}), cluster)
        saved = loop.policy
        loop.policy = Combined(Exploding(), saved.autoscaling, saved.offload)
        loop.state = loop.policy.initial_state()
        loop.start()
        for _ in range(500):
            if loop.counters["failed_ticks"] >= 2:
                break
            await asyncio.sleep(0.01)
        loop.policy, loop.state = saved, saved.initial_state()
        ticks = loop.counters["ticks"]
        for _ in range(500):
            if loop.counters["ticks"] >= ticks + 2:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
        assert loop.counters["failed_ticks"] >= 2 and loop.counters["ticks"] >= ticks + 2
        assert not loop.running

    with caplog.at_level(logging.WARNING, logger="framework.controller"):
        asyncio.run(main())
    assert any("control tick failed" in r.message and r.exc_info for r in caplog.records)


def test_a_failing_mechanism_is_counted_and_the_next_tick_sees_the_real_state():
    async def main():
        cluster = FakeCluster(["w1"])
        cluster.add("new", PENDING)
        cluster.fail.add("place")
        loop = ControlLoop(settings(autoscaling_params={"n": 1}), cluster, Clock())
        assert accepted(await loop.tick(), "Place")
        await settle(loop)
        assert loop.stats()["failed_actions"] == 1 and cluster._records["new"].status is PENDING
        cluster.fail.clear()
        assert accepted(await loop.tick(), "Place")  # tried again
        await settle(loop)
        assert cluster._records["new"].status is ACTIVE

    asyncio.run(main())


@pytest.mark.parametrize("cap, expected", [(None, "w2"), (1, None)])
def test_admission_asks_the_loop_and_its_placement_policy(cap, expected):
    cluster = FakeCluster(["w1", "w2"])
    cluster.add("old", ACTIVE, "w1")
    cluster.add("new", PENDING)
    loop = ControlLoop(settings(), cluster, Clock())
    exclude = {"w2"} if cap == 1 else set()
    assert loop.choose("new", exclude=exclude, max_sessions=cap) == expected


class BurstyCluster(FakeCluster):
    """A fake cluster that also tallies bursts, as the scheduler plugin's registry does."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.tally = BurstTally()

    def bursts(self) -> BurstTally:
        return self.tally


def test_the_snapshot_carries_the_runtime_s_bursts_in_trace_seconds():
    cluster, clock = BurstyCluster(["w1"]), Clock()
    cluster.tally.begin(990.0)
    cluster.tally.begin(994.0)
    cluster.tally.end(990.0, 996.0)  # 6 s ended; at 1000 s, 6 s of the second going on
    snap = ControlLoop(settings(time_scale=2.0), cluster, clock).snapshot()
    assert (snap.bursts_ended, snap.burst_exposure_s) == (1, 24.0)  # 12 wall seconds, twice as long in the trace
    assert ControlLoop(settings(), FakeCluster(["w1"]), clock).snapshot().mean_burst_s is None  # a runtime without them


def test_at_the_maximum_the_loop_lends_a_valve_slot_with_the_default_settings_and_gives_it_back():
    from framework.control_settings import default_policy_params

    params = default_policy_params("migration-aware", "fixed", "never", max_batch=2, worker_memory=10**9)
    assert params["placement"]["valve_lend_at_max"]  # on in TurboServe's configuration

    async def main():
        clock = Clock()
        cluster = BurstyCluster(["w1"], scalable=False)
        for k in range(10):  # ten bursts of 3 s ended
            cluster.tally.begin(900.0 + k)
            cluster.tally.end(900.0 + k, 903.0 + k)
        cluster.add("a", ACTIVE, "w1")
        cluster.add("i", IDLE, "w1").since_s = clock.t - 1.0  # its slot is kept; it may be back soon
        cluster.add("new", PENDING)
        # b* = 2 (the valve's batch: the engine runs up to 3 in a degraded step); one worker, the maximum
        s = settings(placement="migration-aware", placement_params=params["placement"], autoscaling_params={"n": 1},
                     minimum=1, maximum=1, max_batch=3, valve_batch=2,
                     latency_points=((1, 0.4), (2, 0.8), (3, 1.2)))
        loop = ControlLoop(s, cluster, clock)
        loop.counters["chunks"] = 100_000  # a budget of 1,000 degraded chunks
        (place,) = accepted(await loop.tick(), "Place")
        assert (place.session_id, place.worker) == ("new", "w1")
        await settle(loop)
        # w1 now holds b* + 1 residents; once "i" has been idle two chunk periods its slot goes back
        clock.t += 5.0
        (offload,) = accepted(await loop.tick(), "Offload")
        assert offload.session_id == "i"
        await settle(loop)
        assert ("suspend", "i", "host") in cluster.calls

    asyncio.run(main())
