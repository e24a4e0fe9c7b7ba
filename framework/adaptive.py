"""Dask ``Adaptive`` driven by turboserve's autoscaling policy instead of task occupancy.

Dask's default :class:`distributed.deploy.Adaptive` sizes a cluster from task
occupancy, which counts session actors for nothing, and would close a worker that holds
sessions (actors die with their worker). :class:`SessionAdaptive` asks the control loop
(:class:`framework.controller.ControlLoop`, run by the scheduler plugin) instead:

- :meth:`SessionAdaptive.target` is the autoscaling policy's latest ``ScaleTo``;
- :meth:`SessionAdaptive.workers_to_close` offers only workers the policy chose with
  ``Retire`` and that the runtime has drained (sessions migrated or suspended away).
  Each worker offered is *claimed*: no session is placed on it from then on (Dask closes
  it an RPC and an ``await`` later, in ``scale_down``). The claims Dask does not use in
  that round (``wait_count`` asks for several offers in a row) are given back at once,
  the others once ``scale_down`` returned (:meth:`SessionAdaptive.recommendations`,
  :meth:`SessionAdaptive.scale_down`; :mod:`framework.admission`).

It works with any Dask cluster manager that supports ``cluster.adapt(Adaptive=...)``
(LocalCluster, dask-jobqueue, dask-kubernetes, ...):

>>> from framework.adaptive import SessionAdaptive
>>> cluster.adapt(Adaptive=SessionAdaptive, minimum=1, maximum=8, interval="1s")  # doctest: +SKIP

or, with the bounds from ``turboserve.autoscale.*``, :func:`adapt` /
``server.adapt()`` / ``Server.local(..., adaptive=True)``.
"""

from __future__ import annotations

from typing import Any

from distributed.deploy.adaptive import Adaptive

from framework import config


class SessionAdaptive(Adaptive):
    """An ``Adaptive`` whose target and retirements come from the control loop.

    Needs the turboserve scheduler plugin with its control loop started (it serves
    ``turboserve_control_target``, ``turboserve_control_to_close`` and
    ``turboserve_control_release``). The
    first poll of the target tells the controller an autoscaler is attached, after
    which its ``ScaleTo``/``Retire`` decisions take effect.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._offered: list[Any] = []  # names offered (claimed) in the running round
        super().__init__(*args, **kwargs)

    async def target(self) -> int:
        """Workers the autoscaling policy wants (the current count until it decided)."""
        return int(await self.scheduler.turboserve_control_target())

    async def workers_to_close(self, target: int) -> list[Any]:
        """Names of workers retired by the policy and already drained of sessions, claimed for closing."""
        names = list(await self.scheduler.turboserve_control_to_close(target=target))
        self._offered.extend(names)
        return names

    async def recommendations(self, target: int) -> dict:
        """Dask's recommendation; the claims on workers offered and not closed now are given back."""
        self._offered = []
        try:
            rec = await super().recommendations(target)
        except BaseException:
            await self._release(self._offered)
            raise
        closing = set(rec.get("workers", ())) if rec.get("status") == "down" else set()
        await self._release([w for w in self._offered if w not in closing])
        return rec

    async def scale_down(self, workers: list[Any]) -> None:
        """Retire and close ``workers`` (Dask's ``scale_down``), then give back their claims."""
        try:
            await super().scale_down(workers)
        finally:
            await self._release(workers)

    async def _release(self, names: list[Any]) -> None:
        gone = set(names)
        self._offered = [w for w in self._offered if w not in gone]
        if names:
            await self.scheduler.turboserve_control_release(names=list(names))


def adaptive_kwargs(
    minimum: int | None = None,
    maximum: int | None = None,
    interval: str | float | None = None,
    wait_count: int | None = None,
) -> dict[str, Any]:
    """``cluster.adapt`` keywords with the bounds and delays from ``turboserve.autoscale.*``.

    ``interval`` defaults to the control tick (``turboserve.control.interval``).
    """
    minimum = int(config.get("autoscale.minimum", minimum))
    maximum = int(config.get("autoscale.maximum", maximum))
    if not 0 <= minimum <= maximum:
        raise ValueError(f"need 0 <= minimum <= maximum workers, got minimum={minimum}, maximum={maximum}")
    return {
        "Adaptive": SessionAdaptive,
        "minimum": minimum,
        "maximum": maximum,
        "interval": config.get("control.interval", interval),
        "wait_count": int(config.get("autoscale.wait-count", wait_count)),
    }


def adapt(cluster: Any, **kwargs: Any) -> Adaptive:
    """Turn on session-aware autoscaling on ``cluster`` (see :func:`adaptive_kwargs`).

    Returns the running :class:`SessionAdaptive`.
    """
    return cluster.adapt(**adaptive_kwargs(**kwargs))
