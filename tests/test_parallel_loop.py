"""The control loop applies FormGroup / SplitGroup through the runtime's ``set_parallelism``.

An in-memory runtime (no Dask), as in ``tests/test_control_loop.py``: the real loop and
the shared action rules (``policies.semantics``); the mechanism records the groups.
"""

from __future__ import annotations

import asyncio

from framework.control_settings import ControlSettings
from framework.controller import ControlLoop
from policies.semantics import Refusal
from policies.types import FormGroup, ParallelGroup, SplitGroup


class Runtime:
    """Mechanisms with parallel groups, in memory."""

    def __init__(self, workers: list[str], *, groups: bool = True) -> None:
        self._workers = workers
        self._groups: dict[tuple[str, ...], ParallelGroup] = {}
        self.calls: list[tuple] = []
        if groups:
            self.parallel_groups = lambda: list(self._groups.values())
            self.set_parallelism = self._set_parallelism

    def workers(self): return list(self._workers)  # noqa: E704
    def records(self): return []  # noqa: E704
    def admitting(self, session_id): return False  # noqa: E704
    def tiers(self): return ("host",)  # noqa: E704
    def scalable(self): return False  # noqa: E704
    def scale(self, n): pass  # noqa: E704
    def undrain(self, worker): pass  # noqa: E704

    async def _set_parallelism(self, workers, degree):
        await asyncio.sleep(0)
        self.calls.append((tuple(workers), degree))
        if degree == 1:
            self._groups.pop(tuple(workers))
        else:
            self._groups[tuple(workers)] = ParallelGroup("g" + str(len(self.calls)), tuple(workers), degree)


def _loop(runtime) -> ControlLoop:
    settings = ControlSettings(placement="least-loaded", autoscaling="fixed", autoscaling_params={"n": 3},
                               offload="never", minimum=1, maximum=4, slo_s=1.0,
                               latency_points=((1, 0.1), (8, 0.8)), measure=False)
    return ControlLoop(settings, runtime, lambda: 1000.0)


async def _settle(loop: ControlLoop) -> None:
    while tasks := loop.actions.tasks():
        await asyncio.gather(*tasks)


def test_form_and_split_go_to_set_parallelism_and_the_snapshot_shows_the_group():
    async def main():
        rt = Runtime(["a", "b", "c"])
        loop = _loop(rt)
        (d,) = loop.apply(FormGroup(("a", "b"), cause="14B deadline"))
        assert d.accepted
        await _settle(loop)
        assert rt.calls == [(("a", "b"), 2)]
        (group,) = loop.snapshot().groups
        assert group.workers == ("a", "b") and group.degree == 2
        (busy,) = loop.apply(FormGroup(("b", "c")))
        assert not busy.accepted and "in group" in busy.reason
        assert loop.refused[Refusal.GROUP_BAD_WORKERS.value] == 1
        (split,) = loop.apply(SplitGroup(("a", "b")))
        assert split.accepted
        await _settle(loop)
        assert rt.calls[-1] == (("a", "b"), 1) and loop.snapshot().groups == ()

    asyncio.run(main())


def test_a_runtime_without_groups_refuses_them():
    async def main():
        loop = _loop(Runtime(["a", "b"], groups=False))
        (d,) = loop.apply(FormGroup(("a", "b")))
        assert not d.accepted and "no parallel groups" in d.reason
        assert loop.snapshot().groups == ()

    asyncio.run(main())
