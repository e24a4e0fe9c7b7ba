"""The control loop's :class:`~framework.control_actions.ActionRunner` by itself, against
in-memory actuators whose actions finish when the test lets them: what is in flight
while an action runs, the drain that waits for a migration into its worker, failures
counted, and cancellation (a worker that left, the loop stopping)."""

from __future__ import annotations

import asyncio

import pytest

from framework.control_actions import ActionRunner
from framework.fleet import WorkerFleet
from policies.semantics import ActionRefused, Refusal
from policies.types import FormGroup, Migrate, Place, Reject, Retire, ScaleTo


class GatedCluster:
    """:class:`framework.control_actions.ActuatorProtocol` whose ``async`` actions wait for ``release``."""

    def __init__(self, workers: list[str], *, scalable: bool = True) -> None:
        self._workers = list(workers)
        self._scalable = scalable
        self.calls: list[tuple] = []
        self.release = asyncio.Event()
        self.fail: set[str] = set()

    def workers(self) -> list[str]:
        return list(self._workers)

    def scalable(self) -> bool:
        return self._scalable

    def scale(self, n: int) -> None:
        self.calls.append(("scale", n))

    async def _act(self, *call) -> None:
        await self.release.wait()
        self.calls.append(call)
        if call[0] in self.fail:
            raise RuntimeError(f"{call[0]} broke")

    async def place(self, session_id: str, worker: str) -> None:
        await self._act("place", session_id, worker)

    async def migrate(self, session_id: str, target: str) -> None:
        await self._act("migrate", session_id, target)

    async def suspend(self, session_id: str, tier: str) -> None:
        await self._act("suspend", session_id, tier)

    async def resume(self, session_id: str, worker: str) -> None:
        await self._act("resume", session_id, worker)

    async def drain(self, worker: str) -> None:
        self.calls.append(("drain", worker))  # called at once: the runner holds it back, not the fake
        if "drain" in self.fail:
            raise RuntimeError("drain broke")

    def undrain(self, worker: str) -> None:
        self.calls.append(("undrain", worker))


def runner_for(cluster: GatedCluster) -> tuple[ActionRunner, WorkerFleet, list[int]]:
    fleet = WorkerFleet(lambda: 0.0, cluster.workers())
    kicks: list[int] = []
    return ActionRunner(cluster, fleet, on_done=lambda: kicks.append(1)), fleet, kicks


async def settle(runner: ActionRunner) -> None:
    while tasks := runner.tasks():
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_session_action_is_in_flight_until_its_mechanism_returns():
    async def main():
        cluster = GatedCluster(["w1"])
        runner, _, kicks = runner_for(cluster)
        place = Place("a", "w1", cause="pending")
        assert runner.start(place) is None  # the decision's reason: the action's cause
        await asyncio.sleep(0)
        assert runner.busy("a") is place and runner.in_flight() == {"a": place} and runner.busy("b") is None
        assert cluster.calls == [] and kicks == []
        cluster.release.set()
        await settle(runner)
        assert cluster.calls == [("place", "a", "w1")]
        assert runner.busy("a") is None and runner.in_flight() == {} and kicks == [1] and runner.failed == 0

    asyncio.run(main())


def test_a_drain_waits_for_the_migration_into_its_worker():
    async def main():
        cluster = GatedCluster(["w1", "w2"])
        runner, fleet, _ = runner_for(cluster)
        runner.start(Migrate("a", "w1", "w2", cause="rebalance"))
        assert runner.start(Retire("w2", cause="scale in")) is None
        await asyncio.sleep(0.01)
        assert cluster.calls == [] and "w2" in fleet.retiring  # the drain has not begun
        cluster.release.set()
        await settle(runner)
        assert cluster.calls == [("migrate", "a", "w2"), ("drain", "w2")]
        assert fleet.to_close(busy=set()) == ["w2"]

    asyncio.run(main())


def test_failures_are_counted_and_a_failed_drain_puts_the_worker_back():
    async def main():
        cluster = GatedCluster(["w1", "w2"])
        cluster.fail = {"place", "drain"}
        cluster.release.set()
        runner, fleet, kicks = runner_for(cluster)
        runner.start(Place("a", "w1"))
        runner.start(Retire("w2"))
        await settle(runner)
        assert runner.failed == 2 and runner.in_flight() == {} and len(kicks) == 2
        assert ("undrain", "w2") in cluster.calls and "w2" not in fleet.retiring
        assert fleet.to_close(busy=set()) == []

    asyncio.run(main())


def test_what_this_runtime_cannot_do_is_refused_by_category():
    async def main():
        runner, _, _ = runner_for(GatedCluster(["w1"], scalable=False))
        cases = [
            (lambda: runner.start(Reject("a")), Refusal.REJECT_BY_EXECUTOR),
            (lambda: runner.start(Retire("w1")), Refusal.NO_AUTOSCALER),
            (lambda: runner.scale_to(2, ScaleTo(2)), Refusal.NO_AUTOSCALER),
            (lambda: runner.start(FormGroup(("w1", "w2"))), Refusal.UNKNOWN_ACTION),  # no set_parallelism
        ]
        for call, refusal in cases:
            with pytest.raises(ActionRefused) as info:
                call()
            assert info.value.refusal is refusal
        assert runner.tasks() == []

    asyncio.run(main())


def test_retiring_a_starting_placeholder_starts_no_drain():
    async def main():
        cluster = GatedCluster(["w1"])
        runner, fleet, _ = runner_for(cluster)
        assert "cancel a requested worker" in runner.start(Retire("starting-0"))
        assert runner.tasks() == [] and fleet.retiring == set()
        assert runner.scale_to(3, ScaleTo(3, cause="load")) == "load (target 3)"
        assert cluster.calls == [("scale", 3)] and fleet.target == 3

    asyncio.run(main())


def test_a_worker_that_left_and_the_loop_stopping_cancel_what_is_in_flight():
    async def main():
        cluster = GatedCluster(["w1", "w2"])
        runner, fleet, _ = runner_for(cluster)
        runner.start(Migrate("a", "w1", "w2"))
        runner.start(Retire("w2"))
        await asyncio.sleep(0)
        _, drain = runner.tasks()  # the session actions first, then the drains
        runner.cancel_drain("w2")
        await asyncio.sleep(0)
        assert drain.cancelled() and ("drain", "w2") not in cluster.calls
        assert list(runner.in_flight()) == ["a"]
        await runner.stop()
        assert runner.tasks() == [] and runner.in_flight() == {} and cluster.calls == []

    asyncio.run(main())
