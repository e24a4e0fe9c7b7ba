"""Recovery on the scheduler: sessions whose state was lost come back from their last checkpoint.

A session loses its device state when its worker leaves, when a parallel group it ran
on loses a member (the shards cannot be merged), or when a move handed the state over
and the target never took it. :class:`Recovery` then marks it pending and, in a task of
its own holding the session's lock, starts a new actor from the checkpoint store on a
worker :class:`~framework.admission.Admission` chooses, trying others when a start
fails and waiting for capacity when none fits (generation is deterministic, so the
session goes on where its checkpoint left it).

Its owner is :class:`~framework.scheduler_plugin.TurboserveScheduler`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from framework.admission import Admission
from framework.parallelism import ParallelGroups
from framework.registry import SessionRecord, SessionRegistry
from framework.session_mechanisms import SessionActors
from policies.types import SessionStatus

logger = logging.getLogger(__name__)

__all__ = ["Recovery"]


class Recovery:
    """Bring sessions back from their checkpoints (see the module docstring).

    Parameters
    ----------
    scheduler
        The Dask scheduler (its ``workers``).
    registry : SessionRegistry
    actors : SessionActors
    admission : Admission
    groups : ParallelGroups or None
    lock : callable
        The session's lock (:meth:`SessionHandlers.lock
        <framework.session_handlers.SessionHandlers.lock>`, shared with the session handlers).
    spawn : callable
        Runs a coroutine as a background task the plugin cancels on shutdown.
    changed : callable
        Capacity or placement changed (wakes admission and the control loop).
    """

    def __init__(self, scheduler: Any, registry: SessionRegistry, actors: SessionActors, admission: Admission,
                 groups: ParallelGroups | None, lock: Callable[[str], asyncio.Lock],
                 spawn: Callable[[Coroutine], None], changed: Callable[[], None]) -> None:
        self.scheduler = scheduler
        self.registry = registry
        self.actors = actors
        self.admission = admission
        self.groups = groups
        self._lock = lock
        self._spawn = spawn
        self._changed = changed

    def restart(self, rec: SessionRecord, why: str = "its state was lost") -> None:
        """``rec``'s actor and state are gone: mark it pending and recover it in the background.

        The registry records it (``worker-lost``, and ``recovered`` at the checkpoint's
        chunk once it is back): the actor's own events died with it.
        """
        prior = rec.status
        rec.note("worker-lost", worker=rec.worker, chunk=rec.chunks, why=why)
        self.actors.release(rec)
        rec.worker = None
        rec.set_status(SessionStatus.PENDING, time.time())
        self._spawn(self._recover(rec.session_id, prior, why))

    def worker_lost(self, worker: str, why: str) -> None:
        """Bring every session ``worker`` holds back from its checkpoint (on a chosen worker)."""
        for rec in self.registry.on_worker(worker):
            logger.warning("%s holding session %s; recovering it from its checkpoint", why, rec.session_id)
            self.restart(rec, why)
        self._changed()

    async def group_lost(self, group: Any, gone: str | None) -> None:
        """A member of a parallel group left: the survivors drop the group; a lost follower's
        leader's sessions restart from their checkpoints (their shards cannot be merged)."""
        await self.groups.abandon(group, gone)
        if gone != group.leader and group.leader in self.scheduler.workers:
            self.worker_lost(group.leader, f"group {group.group_id} lost {gone or 'a rank'}")
        await self.groups.release_followers(group, gone)

    async def _recover(self, session_id: str, prior: SessionStatus, why: str = "its state was lost") -> None:
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            if rec.status is SessionStatus.CLOSED or (rec.actor_key and rec.worker in self.scheduler.workers):
                return  # closed meanwhile, or a move that held the lock landed it somewhere alive
            rec.set_status(SessionStatus.PENDING, time.time())
            failed: set[str] = set()
            while not self.admission.closing:
                # A drained, still running worker rather than waiting for a restart's model load.
                target = self.admission.choose(rec, exclude=failed) or self.admission.reclaim_drained(rec, failed)
                if target is None:
                    await self.admission.wait_change(1.0)
                    failed.clear()
                    continue
                try:
                    with self.admission.placing(target):  # a claimed worker fails here: it is being closed
                        info = await self.actors.start(rec, target, {"kind": "store"})
                    rec.note("recovered", worker=target, from_chunk=info["chunk_index"], why=why)
                    break
                except Exception:
                    logger.warning("recovering session %s on %s failed", session_id, target, exc_info=True)
                    failed.add(target)
            else:
                return
            rec.recoveries += 1
            rec.tier = None
            rec.set_status(SessionStatus.ACTIVE if prior is SessionStatus.ACTIVE else SessionStatus.IDLE, time.time())
