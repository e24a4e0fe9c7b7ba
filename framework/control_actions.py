"""The control loop's accepted actions, carried out on the cluster and tracked until they finish.

:class:`~framework.controller.ControlLoop` decides and checks; :class:`ActionRunner`
applies what it accepted through the cluster's :class:`ActuatorProtocol` and keeps the tasks
that are still running:

- a session action (``Place``, ``Migrate``, ``Offload``, ``Resume``) runs as its own
  task, so that a slow migration never blocks the next tick; until it finishes the
  session is *in flight* (:meth:`ActionRunner.busy`, :meth:`ActionRunner.in_flight`),
  which the loop's snapshot shows and its action checks refuse a second action for;
- ``Retire`` drains the worker in a task (after the actions in flight into it, at most
  :data:`DRAIN_WAIT_S`) and records it in the :class:`~framework.fleet.WorkerFleet`;
- ``ScaleTo`` sets the target (:meth:`ActionRunner.scale_to`) and first puts drained
  workers not yet closed back in service;
- ``FormGroup`` / ``SplitGroup`` go to the runtime's ``set_parallelism`` in a task.

Outcomes only the executor knows (no autoscaler attached, no parallel groups, live
``Reject``) raise :class:`~policies.semantics.ActionRefused`, which the loop logs as a
refusal. An action that fails in its mechanism is logged with ``exc_info`` and counted
(:attr:`ActionRunner.failed`); the next tick sees the real state. Every finished task
calls ``on_done`` (the loop's ``kick``).

Plain asyncio, no Dask: the cluster side is whatever implements :class:`ActuatorProtocol`
(live, :class:`~framework.scheduler_plugin.TurboserveScheduler`, through the loop's
``Mechanisms``, which extends it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, Protocol

from framework.fleet import WorkerFleet
from policies.semantics import ActionRefused, Refusal
from policies.types import Action, FormGroup, Migrate, Offload, Place, Reject, Resume, Retire, ScaleTo, SplitGroup

__all__ = ["DRAIN_WAIT_S", "ActionRunner", "ActuatorProtocol"]

logger = logging.getLogger(__name__)

#: Seconds a drain waits for the actions in flight into the worker it empties.
DRAIN_WAIT_S = 30.0


class ActuatorProtocol(Protocol):
    """What :class:`ActionRunner` needs of the cluster to carry actions out.

    The ``async`` methods raise on failure (the runner logs and counts it).
    """

    def workers(self) -> list[str]:
        """Addresses of the workers in the cluster now."""

    def scalable(self) -> bool:
        """Whether a cluster manager follows :meth:`scale` and closes drained workers."""

    def scale(self, n: int) -> None:
        """Ask the cluster manager for ``n`` workers."""

    async def place(self, session_id: str, worker: str) -> Any:
        """Start a pending session on ``worker``."""

    async def migrate(self, session_id: str, target: str) -> Any:
        """Move a session to ``target`` at a chunk boundary."""

    async def suspend(self, session_id: str, tier: str) -> Any:
        """Offload an idle session's state to ``tier``."""

    async def resume(self, session_id: str, worker: str) -> Any:
        """Bring a suspended session back on ``worker``."""

    async def drain(self, worker: str) -> Any:
        """Move every session off ``worker``; it stays in the cluster, marked draining."""

    def undrain(self, worker: str) -> None:
        """Put a drained worker back in service."""

    # Optional (a runtime without them leaves them out):
    #   closing() -> Collection[str]              drained workers the cluster manager is closing
    #   async set_parallelism(workers, degree)    FormGroup (len(workers)) / SplitGroup (1)


class ActionRunner:
    """Carries out accepted actions and tracks them until they finish (see the module docstring).

    Parameters
    ----------
    mechanisms : ActuatorProtocol
        The cluster the actions act on.
    fleet : WorkerFleet
        The loop's workers: the target, the retiring and drained ones.
    on_done : callable
        Called when an action, drain or regroup finishes (the loop ticks early).

    Examples
    --------
    >>> runner = ActionRunner(cluster, fleet, on_done=loop.kick)   # doctest: +SKIP
    >>> runner.start(Place("a", "w1", cause="pending"))            # doctest: +SKIP
    >>> runner.busy("a")                                           # doctest: +SKIP
    Place(cause='pending', session_id='a', worker='w1')
    """

    def __init__(self, mechanisms: ActuatorProtocol, fleet: WorkerFleet, on_done: Callable[[], None]) -> None:
        self.mechanisms = mechanisms
        self.fleet = fleet
        self.on_done = on_done
        #: Accepted actions that failed in their mechanism (or drains that failed).
        self.failed = 0
        self._sessions: dict[str, tuple[Action, asyncio.Task]] = {}  # session actions in flight
        self._drains: dict[str, asyncio.Task] = {}  # Retire: worker -> its drain
        self._regroups: set[asyncio.Task] = set()  # FormGroup / SplitGroup being applied

    # ------------------------------------------------------------ what is in flight

    def busy(self, session_id: str) -> Action | None:
        """The session's action in flight, or None."""
        entry = self._sessions.get(session_id)
        return None if entry is None else entry[0]

    def in_flight(self) -> dict[str, Action]:
        """The session actions in flight, by session id (a copy)."""
        return {sid: action for sid, (action, _) in self._sessions.items()}

    def tasks(self) -> list[asyncio.Task]:
        """Every task still running: session actions, drains, regroups."""
        return [t for _, t in self._sessions.values()] + list(self._drains.values()) + list(self._regroups)

    # ------------------------------------------------------------ applying

    def start(self, action: Action) -> str | None:
        """Carry out an accepted action (not ``ScaleTo``: :meth:`scale_to`).

        Returns the decision's reason (None: its cause); raises
        :class:`~policies.semantics.ActionRefused` for what this runtime cannot do.
        """
        m = self.mechanisms
        if isinstance(action, Retire):
            return self._retire(action)
        if isinstance(action, (FormGroup, SplitGroup)):
            return self._regroup(action)
        if isinstance(action, Reject):
            raise ActionRefused(Refusal.REJECT_BY_EXECUTOR,
                                "live admission follows turboserve.admission.on-full; the runtime refuses or queues")
        if isinstance(action, Place):
            coro = m.place(action.session_id, action.worker)
        elif isinstance(action, Migrate):
            coro = m.migrate(action.session_id, action.target)
        elif isinstance(action, Offload):
            coro = m.suspend(action.session_id, action.tier)
        elif isinstance(action, Resume):
            coro = m.resume(action.session_id, action.worker)
        else:  # pragma: no cover - check() refuses unknown types first
            raise ActionRefused(Refusal.UNKNOWN_ACTION, f"unknown action type {type(action).__name__}")
        task = asyncio.get_running_loop().create_task(self._run_action(action, coro))
        self._sessions[action.session_id] = (action, task)
        return None

    def scale_to(self, n: int, action: ScaleTo) -> str:
        """Set the target to ``n`` (already clipped); returns the decision's reason."""
        if not self.mechanisms.scalable():
            raise ActionRefused(Refusal.NO_AUTOSCALER,
                                "no autoscaler attached (start one with server.adapt() or Server.local(adaptive=True))")
        self.fleet.scale_to(n)
        self.mechanisms.scale(n)
        kept = self._keep_drained()
        return f"{action.cause} (target {n})" + (f"; kept drained {kept} in service" if kept else "")

    def cancel_drain(self, address: str) -> None:
        """Stop draining ``address`` (it left the cluster)."""
        task = self._drains.pop(address, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Cancel the session actions and drains in flight and wait for them (regroups finish)."""
        tasks = [t for _, t in self._sessions.values()] + list(self._drains.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass
        self._sessions.clear()
        self._drains.clear()

    # ------------------------------------------------------------ mechanisms

    def _failed(self, action: Action, exc: BaseException) -> None:
        # Accepted, then failed in the mechanism (the session closed meanwhile, a
        # transfer broke): logged and counted; the next tick sees the real state.
        self.failed += 1
        logger.warning("applying %r failed: %r", action, exc, exc_info=True)

    async def _run_action(self, action: Action, coro: Any) -> None:
        sid = action.session_id
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(action, exc)
        finally:
            entry = self._sessions.get(sid)
            if entry is not None and entry[0] is action:
                del self._sessions[sid]
            self.on_done()

    def _keep_drained(self) -> list[str]:
        """On a scale-out, put drained workers not yet closed back in service first.

        Which ones: :meth:`WorkerFleet.keep_drained <framework.fleet.WorkerFleet.keep_drained>`;
        not those the cluster manager is closing now (``closing()``: it was offered them
        and will close them; the target covers them).
        """
        closing_now = getattr(self.mechanisms, "closing", None)
        closing: Collection[str] = frozenset() if closing_now is None else frozenset(closing_now())
        kept = self.fleet.keep_drained(self.mechanisms.workers(), closing)
        for addr in kept:
            self.mechanisms.undrain(addr)
        return kept

    def _retire(self, action: Retire) -> str | None:
        if not self.mechanisms.scalable():
            raise ActionRefused(Refusal.NO_AUTOSCALER, "no autoscaler attached to close the worker")
        addr = action.worker
        if addr not in self.mechanisms.workers():  # a STARTING placeholder
            return "cancel a requested worker (the target covers it)"
        self.fleet.retire(addr)
        self._drains[addr] = asyncio.get_running_loop().create_task(self._drain(addr))
        return None

    async def _drain(self, addr: str) -> None:
        try:
            # Wait for actions in flight that touch this worker (a migration into it).
            pending = [t for a, t in self._sessions.values()
                       if getattr(a, "target", None) == addr or getattr(a, "worker", None) == addr]
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_WAIT_S)
            await self.mechanisms.drain(addr)
            self.fleet.drain_done(addr)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            logger.warning("draining %s failed; it stays in service: %r", addr, exc, exc_info=True)
            self.fleet.drain_failed(addr)
            self.mechanisms.undrain(addr)  # the runtime marked it draining when the drain began
        finally:
            self._drains.pop(addr, None)
            self.on_done()

    def _regroup(self, action: FormGroup | SplitGroup) -> str | None:
        set_parallelism = getattr(self.mechanisms, "set_parallelism", None)
        if set_parallelism is None:
            raise ActionRefused(Refusal.UNKNOWN_ACTION, "this runtime has no parallel groups")
        degree = len(action.workers) if isinstance(action, FormGroup) else 1
        task = asyncio.get_running_loop().create_task(self._run_regroup(action, set_parallelism(action.workers, degree)))
        self._regroups.add(task)
        task.add_done_callback(self._regroups.discard)
        return None

    async def _run_regroup(self, action: FormGroup | SplitGroup, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the runtime kept the old layout; the next tick sees it
            self._failed(action, exc)
        finally:
            self.on_done()
