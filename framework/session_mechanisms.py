"""The session mechanisms of the scheduler plugin: start, move, offload, bring back.

:class:`SessionMechanisms` is the half of
:class:`~framework.scheduler_plugin.TurboserveScheduler` that acts on session actors:
:meth:`~SessionMechanisms.place` for the controller, and the ``*_locked`` steps
(migrate, suspend, resume, recover) that the client handlers and ``drain`` call with
the session's lock held. Every new actor is started through the plugin's own control
client, so that it outlives the user's client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distributed.client import _wait

from framework.registry import SessionRecord
from policies.types import SessionStatus
from workers.errors import TransferError
from workers.session_actor import SessionActor, call_actor

logger = logging.getLogger(__name__)


class SessionMechanisms:
    """Actor mechanisms of :class:`~framework.scheduler_plugin.TurboserveScheduler` (a mixin).

    Uses the plugin's ``settings``, ``registry``, ``scheduler``, ``dashboard`` and its
    bookkeeping (``_actors``, ``_unread``, ``_client``, ``_lock()``, ``_set()``,
    ``_kick()``, ``_admit()``, ``_choose()``, ``_wait_change()``).
    """


    async def place(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Start a pending session's actor on ``worker`` or where placement puts it.

        A no-op for a session that is not pending any more, or whose admission or
        recovery is under way (that one places it as soon as capacity changes).
        """
        if worker is not None:
            self._check_worker(worker)
        rec = self.registry.get(session_id)
        if rec.status is not SessionStatus.PENDING or self._lock(session_id).locked():
            return self._location(rec)
        async with self._lock(session_id):
            if rec.status is not SessionStatus.PENDING:
                return self._location(rec)
            target = worker or await self._admit(rec)
            await self._start_actor(rec, target, {"kind": "store" if self.settings.store else "new"})
            self._set(rec, SessionStatus.ACTIVE)
            return self._location(rec)

    async def _migrate_locked(self, rec: SessionRecord, target: str, transport: str | None = None) -> None:
        prior = rec.status
        old_worker, old_key = rec.worker, rec.actor_key
        self._set(rec, SessionStatus.MIGRATING)
        try:
            await self._call(rec, "freeze")
            source = {"kind": "peer", "address": old_worker, "key": old_key, "transport": transport or self.settings.transport}
            await self._start_actor(rec, target, source)
        except Exception as exc:
            if old_worker in self.scheduler.workers:
                rec.worker, rec.actor_key = old_worker, old_key
                try:
                    await self._call(rec, "thaw")
                except Exception:
                    logger.warning("could not thaw session %s on %s", rec.session_id, old_worker, exc_info=True)
                self._set(rec, prior)
            # else: the source died on the way; remove_worker queued its recovery.
            raise TransferError(f"migrating session {rec.session_id!r} from {old_worker} to {target} failed: {exc!r}") from exc
        rec.migrations += 1
        self._set(rec, prior)

    async def _suspend_locked(self, rec: SessionRecord, tier: str) -> None:
        if rec.status is SessionStatus.SUSPENDED and (rec.tier == tier or tier == "host"):
            return
        info = await self._call(rec, "offload", tier)
        if info.get("unread"):
            self._unread[rec.session_id] = list(info["unread"])
        rec.state_bytes = info["state_bytes"] or rec.state_bytes
        rec.chunks = max(rec.chunks, info["chunk_index"])
        rec.tier = tier
        if tier == "disk":
            self._release(rec)
            rec.worker = None
        self._set(rec, SessionStatus.SUSPENDED)
        self.dashboard.count_offload()
        self._kick()

    async def _resume_locked(self, rec: SessionRecord, worker: str | None) -> None:
        if rec.tier == "host" and rec.worker is not None and worker in (None, rec.worker):
            await self._call(rec, "restore")
        elif rec.tier == "host" and rec.worker is not None:
            source = {"kind": "peer", "address": rec.worker, "key": rec.actor_key, "transport": "host"}
            await self._start_actor(rec, worker, source)
        else:
            target = worker or await self._admit(rec)
            await self._start_actor(rec, target, {"kind": "store", "unread": self._unread.get(rec.session_id, [])})
            self._unread.pop(rec.session_id, None)
        rec.tier = None
        self._set(rec, SessionStatus.IDLE)

    async def _recover(self, session_id: str, prior: SessionStatus) -> None:
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            if rec.status is SessionStatus.CLOSED or (rec.actor_key and rec.worker in self.scheduler.workers):
                return  # closed meanwhile, or a move that held the lock landed it somewhere alive
            self._set(rec, SessionStatus.PENDING)
            failed: set[str] = set()
            while not self._closing:
                target = self._choose(rec, exclude=failed)
                if target is None:
                    await self._wait_change(1.0)
                    failed.clear()
                    continue
                try:
                    await self._start_actor(rec, target, {"kind": "store"})
                    break
                except Exception:
                    logger.warning("recovering session %s on %s failed", session_id, target, exc_info=True)
                    failed.add(target)
            else:
                return
            rec.recoveries += 1
            rec.tier = None
            self._set(rec, SessionStatus.ACTIVE if prior is SessionStatus.ACTIVE else SessionStatus.IDLE)

    async def _actors_gone(self, worker: str, timeout: float = 10.0) -> None:
        """Wait until the scheduler has forgotten the released actors on ``worker``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws = self.scheduler.workers.get(worker)
            if ws is None or not ws.actors:
                return
            await asyncio.sleep(0.05)

    async def _control_client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                from distributed import Client

                self._client = await Client(self.scheduler.address, asynchronous=True, set_as_default=False)
            return self._client

    async def _start_actor(self, rec: SessionRecord, worker: str, source: dict[str, Any]) -> None:
        """A new actor for ``rec`` on ``worker`` that takes its state from ``source``.

        On success the record points at the new actor and the old one is released.
        """
        client = await self._control_client()
        generation = rec.generation + 1
        key = f"turboserve-session-{rec.session_id}-{generation}"
        fut = client.submit(
            SessionActor, rec.session_id, rec.model, rec.prompt, rec.seed, rec.height, rec.width,
            actor=True, workers=[worker], allow_other_workers=False, key=key, pure=False,
        )
        try:
            await _wait([fut])
            if fut.status == "error":
                raise await fut.exception()
            info = await call_actor(self.scheduler.rpc(worker), key, "start", source)
        except BaseException:
            fut.release()
            raise
        old = self._actors.get(rec.session_id)
        self._actors[rec.session_id] = fut
        if old is not None:
            old.release()
        rec.generation, rec.worker, rec.actor_key = generation, worker, key
        rec.state_bytes = info["state_bytes"]
        rec.chunks = max(rec.chunks, info["chunk_index"])
        self._kick()

    async def _call(self, rec: SessionRecord, method: str, *args: Any) -> Any:
        return await call_actor(self.scheduler.rpc(rec.worker), rec.actor_key, method, *args)

    def _release(self, rec: SessionRecord) -> None:
        fut = self._actors.pop(rec.session_id, None)
        if fut is not None:
            fut.release()
        rec.actor_key = None

    def _forget_checkpoint(self, session_id: str) -> None:
        try:
            from storage import CheckpointStore

            CheckpointStore(self.settings.store).delete(session_id)
        except Exception:
            logger.warning("could not delete the checkpoint of session %s", session_id, exc_info=True)
