"""The adaptive parallelism policy decides in the live control loop, end to end.

The loop's snapshot carries the step model of parallel groups (``Snapshot.parallel``)
from the same source as the simulator (:func:`framework.control_settings.parallel_step_model`
of the served preset and ``turboserve.simulator.parallel.*``), so the policy that chose
the degrees in ``turboserve experiment parallelism`` chooses them live. An in-memory
cluster (as ``tests/test_control_loop.py``) with the groups of ``tests/test_parallel_loop.py``:
the real settings, loop, policies and action rules.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import dask
import pytest

from framework.control_settings import ControlSettings, parallel_step_model
from framework.controller import ControlLoop
from policies.types import BatchLatencyModel, ParallelGroup, SessionStatus
from test_control_loop import Clock, FakeCluster, accepted, settle

PENDING = SessionStatus.PENDING
#: A batch-1 step that misses 0.75 s at degree 1 and meets it at degree 2 with an ideal
#: split (1.45 / 2 = 0.725 s; a batch of 2: 0.74 s, so 1 session per GPU, the most) but
#: not with wan-14b's step model (efficiency 0.9 and the all-to-alls: 0.84 s), which
#: needs degree 4 (0.43 s; 2 sessions a step at ``max_batch`` 2: 0.5 per GPU).
T1_S = 1.45
CURVE = ((1, T1_S), (8, T1_S * 1.14))
CURVE_MODEL = BatchLatencyModel(*zip(*CURVE))


class GroupCluster(FakeCluster):
    """The fake cluster with parallel groups (``parallel_groups``, ``set_parallelism``)."""

    def __init__(self, workers: list[str]) -> None:
        super().__init__(workers, scalable=False)
        self.groups: dict[tuple[str, ...], ParallelGroup] = {}

    def parallel_groups(self) -> list[ParallelGroup]:
        return list(self.groups.values())

    async def set_parallelism(self, workers: tuple[str, ...], degree: int) -> None:
        await self._act("set_parallelism", *workers, str(degree))
        if degree == 1:
            self.groups.pop(tuple(workers))
        else:
            self.groups[tuple(workers)] = ParallelGroup(f"g{len(self.groups)}", tuple(workers), degree, "wan-14b")


def _settings(**kw) -> ControlSettings:
    with dask.config.set({"turboserve.model": "wan-14b"}):
        return ControlSettings.from_config(
            placement="least-loaded", autoscaling="fixed", autoscaling_params={"n": 4}, offload="never",
            parallelism="adaptive", minimum=4, maximum=4, slo_s=0.75,
            latency_points=CURVE, max_batch=2, measure=False, **kw)


async def _regrouped(loop: ControlLoop) -> None:
    while tasks := loop.actions.tasks():
        await asyncio.gather(*tasks)


def test_the_settings_carry_the_simulators_step_model_and_the_parallelism_policy():
    from experiments.sim.models import parallel_model

    s = _settings()
    assert s.parallel == parallel_model("wan-14b") == parallel_step_model("wan-14b")
    assert s.build().parallelism.name == "adaptive"
    with dask.config.set({"turboserve.model": "wan-14b"}):
        assert ControlSettings.from_config().parallelism is None  # off unless configured


@pytest.mark.parametrize("time_scale", [1.0, 4.0])
def test_the_live_snapshot_has_the_step_model_in_trace_seconds(time_scale):
    wall = _settings()
    snap = ControlLoop(replace(wall, time_scale=time_scale), GroupCluster(["w0", "w1"]), Clock()).snapshot()
    assert snap.parallel is not None
    for b in (1, 2):  # a step at degree 4 in trace seconds: the wall-second step times the scale
        assert snap.parallel.predict(snap.latency, b, 4) == pytest.approx(
            time_scale * wall.parallel.predict(CURVE_MODEL, b, 4))
    assert wall.parallel.predict(CURVE_MODEL, 1, 4) == pytest.approx(T1_S / (4 * 0.9) + wall.parallel.comm_s(1, 4))


def test_the_adaptive_policy_forms_the_group_the_step_model_needs_and_places_the_session_on_it():
    async def main():
        cluster = GroupCluster(["w0", "w1", "w2", "w3"])
        loop = ControlLoop(_settings(), cluster, Clock())
        decisions = await loop.tick()
        (form,) = accepted(decisions, "FormGroup")
        await _regrouped(loop)
        assert cluster.calls == [("set_parallelism", "w0", "w1", "w2", "w3", "4")]
        (group,) = loop.snapshot().groups
        assert group.degree == 4
        # a 14B session arriving now goes to the group (its leader), never to a lone GPU:
        # at admission (ControlLoop.choose, Combined.admit on the unit view) as in a tick
        cluster.add("s14b", PENDING, state_bytes=10**9)
        assert loop.choose("s14b") == "w0"
        decisions = await loop.tick()
        (place,) = accepted(decisions, "Place")
        assert place.worker == "w0"
        await settle(loop)
        assert cluster._records["s14b"].worker == "w0" and not accepted(decisions, "FormGroup")

    asyncio.run(main())


def test_without_the_step_model_the_same_loop_would_form_groups_of_two_that_miss_the_deadline():
    """What the live loop decided before the snapshot carried the step model: the ideal split."""
    async def main():
        cluster = GroupCluster(["w0", "w1", "w2", "w3"])
        loop = ControlLoop(replace(_settings(), parallel=None), cluster, Clock())
        forms = accepted(await loop.tick(), "FormGroup")
        assert len(forms) == 2
        await _regrouped(loop)
        assert sorted(g.degree for g in cluster.parallel_groups()) == [2, 2]

    asyncio.run(main())


def test_chunks_a_group_stepped_stay_out_of_the_degree_1_latency_curve():
    async def main():
        s = replace(_settings(), measure=True)
        cluster = GroupCluster(["w0", "w1", "w2", "w3"])
        loop = ControlLoop(s, cluster, Clock())
        await loop.tick()
        await _regrouped(loop)
        loop.snapshot()  # the loop learns the groups with each snapshot
        loop.observe(1, 0.4, worker="w0")  # a degree-4 step: not a degree-1 time
        assert loop.latency_model().predict(1) == pytest.approx(T1_S)
        loop.observe(1, 1.3, worker=None)  # where the stream does not say: folded in
        assert loop.latency_model().predict(1) == pytest.approx(1.3)

    asyncio.run(main())
