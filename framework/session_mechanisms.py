"""The session actors of the scheduler plugin: start, move, offload, bring back, release.

:class:`SessionActors` is a collaborator of
:class:`~framework.scheduler_plugin.TurboserveScheduler` (which holds one): it keeps the
actor futures and the chunks a disk-suspended session had not delivered, and performs
the steps the plugin calls with the session's lock held. Every new actor is started
through a control client that lives in the scheduler process, so that it outlives the
user's client. The plugin decides *where* (its control loop); this class only acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from distributed.client import _wait

from framework.registry import SessionRecord
from framework.serving_settings import ServingSettings
from policies.types import SessionStatus
from workers.access import TokenRPC, digest, new_token
from workers.encryption import P2P_UNDER_TLS, encrypted
from workers.errors import InvalidRequest, SessionMoved, TransferError
from workers.session_actor import BoundedRPC, SessionActor, call_actor

logger = logging.getLogger(__name__)

#: How long a committed move waits for its source to confirm it dropped its state.
RELEASE_TIMEOUT_S = 10.0


def actor_key(session_id: str, epoch: int) -> str:
    """A new Dask key for a session's actor at ``epoch`` (unique per attempt).

    The epoch comes before the session id: Dask groups keys by the words before the
    first one with a digit (``dask.utils.key_split``) and that group is a label of the
    scheduler's ``/metrics``; so every actor is in the group ``turboserve-session`` and
    no session id (a word, when the opener gave it) becomes a label.

    >>> from dask.utils import key_split
    >>> key_split(actor_key("redfox", 1))
    'turboserve-session'
    """
    return f"turboserve-session-{int(epoch)}-{session_id}-{uuid.uuid4().hex[:8]}"


class SessionActors:
    """Session actors on the workers of ``scheduler``.

    Parameters
    ----------
    scheduler
        The Dask scheduler (its ``rpc``, ``workers`` and ``address``).
    settings : ServingSettings
    changed : callable
        Called when capacity or placement changed (an actor started, state left a device).
    """

    def __init__(self, scheduler: Any, settings: ServingSettings, changed: Callable[[], None]) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self._changed = changed
        self._futures: dict[str, Any] = {}  # session id -> Future of its actor
        self._unread: dict[str, list] = {}  # session id -> unread chunks of a disk-suspended session
        self._events: dict[str, list] = {}  # session id -> its actor's events, while suspended to disk
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        #: The control plane's access token: every actor accepts it besides its session's
        #: (:mod:`workers.access`); it rides in a peer move's source so the target can pull.
        self._token = new_token()

    async def close(self) -> None:
        """Close the control client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def start(self, rec: SessionRecord, worker: str, source: dict[str, Any]) -> dict[str, Any]:
        """A new actor for ``rec`` on ``worker`` that takes its state from ``source``: one ownership transaction.

        1. *prepare*: the actor is started and loads the state (fresh, from the store,
           or a copy pulled from the source actor, which stays frozen with its own);
        2. *commit*: the registry names the new owner and a new ownership epoch, higher
           than any the record or the checkpoint store has seen;
        3. the new actor claims the epoch in the store and starts serving; a peer
           source then releases its state.

        Every step is bounded (``turboserve.control.transfer-timeout``). A failure in
        1 aborts (the new actor is dropped, the record is unchanged). A failure in 3
        puts the record back where it was, keeping the epoch high-water mark in
        ``rec.generation``, so the caller can hand the session back to its source at a
        new epoch; the half-started actor, if it lives, is fenced by that epoch.

        Every attempt has a key of its own: an aborted attempt leaves the epoch as it
        was, and a retry under the same key (elsewhere) would join the aborted task,
        pinned to the worker that died, and wait for it until the timeout (issue 13).
        """
        client = await self._control_client()
        key = actor_key(rec.session_id, rec.generation + 1)
        fut = client.submit(
            SessionActor, rec.session_id, rec.model, rec.prompt, rec.seed, rec.height, rec.width,
            access=tuple(d for d in (rec.access_digest, digest(self._token)) if d),
            actor=True, workers=[worker], allow_other_workers=False, key=key, pure=False,
        )
        if source.get("kind") == "peer":
            source = {**source, "access_token": self._token}
        rpc = self._rpc(worker)
        try:
            await self._started(fut, worker)
            if fut.status == "error":
                raise await fut.exception()
            if fut.status != "finished":
                raise TransferError(f"the session actor on {worker} is {fut.status}, not started")
            info = await self._bounded(call_actor(rpc, key, "prepare", source),
                                       f"preparing session {rec.session_id!r} on {worker}")
        except BaseException:
            fut.release()  # abort: the prepared copy goes with the actor; the source still owns the session
            raise
        # The commit point.
        epoch = max(rec.generation, int(info.get("owner_epoch") or 0)) + 1
        before = (rec.worker, rec.actor_key, self._futures.get(rec.session_id))
        rec.generation, rec.worker, rec.actor_key = epoch, worker, key
        self._futures[rec.session_id] = fut
        try:
            info = await self._bounded(call_actor(rpc, key, "commit", epoch),
                                       f"committing session {rec.session_id!r} on {worker} at epoch {epoch}")
        except BaseException:
            rec.worker, rec.actor_key = before[0], before[1]
            if before[2] is None:
                self._futures.pop(rec.session_id, None)
            else:
                self._futures[rec.session_id] = before[2]
            fut.release()
            raise
        if source.get("kind") == "peer":
            try:
                await asyncio.wait_for(call_actor(self._rpc(source["address"]), source["key"], "release"),
                                       RELEASE_TIMEOUT_S)
            except Exception as exc:  # it died, or answers late: its epoch is stale either way
                logger.info("the source of session %s on %s did not confirm its release: %r",
                            rec.session_id, source["address"], exc)
        if before[2] is not None:
            before[2].release()
        rec.state_bytes = info["state_bytes"]
        rec.chunks = max(rec.chunks, info["chunk_index"])
        self._changed()
        return info

    async def call(self, rec: SessionRecord, method: str, *args: Any) -> Any:
        """Call ``method`` on the session's actor; a worker that went away is a :class:`TransferError`."""
        try:
            return await call_actor(self._rpc(rec.worker), rec.actor_key, method, *args)
        except OSError as exc:  # see _bounded
            raise TransferError(f"session {rec.session_id!r}: {method} on {rec.worker} failed: "
                                f"the worker did not answer ({exc!r})") from exc

    def _rpc(self, worker: str) -> TokenRPC:
        """The scheduler's RPC handle of ``worker`` (with the control plane's access token), whose
        connect gives up after a few seconds, not 30."""
        return TokenRPC(BoundedRPC(self.scheduler.rpc, worker), self._token)

    async def _started(self, fut: Any, worker: str) -> None:
        """Wait for the actor task on ``worker``; fail at once when the worker leaves, or after the timeout.

        A task pinned to a worker that died would otherwise wait for it forever.
        """
        deadline = time.monotonic() + self.settings.transfer_timeout_s
        while fut.status == "pending":
            if worker not in self.scheduler.workers:
                raise TransferError(f"worker {worker} left before the session actor started there")
            if time.monotonic() > deadline:
                raise TransferError(f"the session actor did not start on {worker} within "
                                    f"{self.settings.transfer_timeout_s} s (turboserve.control.transfer-timeout)")
            try:
                await asyncio.wait_for(_wait([fut]), 0.25)
            except asyncio.TimeoutError:
                pass

    async def _bounded(self, aw: Any, what: str) -> Any:
        """Await a call to a worker within the transfer timeout; a worker that went away is a TransferError.

        A bare ``CommClosedError`` must not leave a scheduler handler: Dask's server
        takes it for the *caller's* connection closing and drops that connection.
        """
        try:
            return await asyncio.wait_for(aw, self.settings.transfer_timeout_s)
        except asyncio.TimeoutError:
            raise TransferError(f"{what} took more than {self.settings.transfer_timeout_s} s "
                                "(turboserve.control.transfer-timeout)") from None
        except OSError as exc:  # CommClosedError and other connection failures
            raise TransferError(f"{what} failed: the worker did not answer ({exc!r})") from exc
        except SessionMoved as exc:  # the worker does not hold the actor (restarted, or released it)
            raise TransferError(f"{what} failed: {exc}") from exc

    def release(self, rec: SessionRecord) -> None:
        """Drop the session's actor (its worker frees it)."""
        fut = self._futures.pop(rec.session_id, None)
        if fut is not None:
            fut.release()
        rec.actor_key = None

    def forget(self, session_id: str) -> None:
        """Forget a closed session's undelivered chunks."""
        self._unread.pop(session_id, None)
        self._events.pop(session_id, None)

    async def migrate(self, rec: SessionRecord, target: str, transport: str | None = None) -> None:
        """Move the session's state to a new actor on ``target`` at a chunk boundary (see :meth:`start`).

        The source freezes at a chunk boundary and keeps its state until the target
        has committed. On failure the source takes the session back at a new
        ownership epoch and serves on, and :class:`~workers.errors.TransferError` is
        raised; its ``state_lost`` is True only when the source lives but could not
        take the session back (recover from the checkpoint). A source that died on
        the way is the plugin's worker-loss recovery.
        """
        chosen = transport or self.settings.transport
        if encrypted(self.scheduler.address) and chosen == "p2p":  # not under Dask's TLS (workers.encryption)
            if transport == "p2p":
                raise InvalidRequest(P2P_UNDER_TLS)
            chosen = "host"  # the configured default: fall back to the encrypted path
        prior = rec.status
        old_worker, old_key = rec.worker, rec.actor_key
        rec.set_status(SessionStatus.MIGRATING, time.time())
        try:
            await self._bounded(self.call(rec, "freeze"), f"freezing session {rec.session_id!r}")
            event_id = uuid.uuid4().hex[:12]  # the actor's record and the registry's are one event
            source = {"kind": "peer", "address": old_worker, "key": old_key,
                      "transport": chosen, "event_id": event_id}
            info = await self.start(rec, target, source)
        except Exception as exc:
            lost = True
            if old_worker in self.scheduler.workers:
                rec.worker, rec.actor_key = old_worker, old_key
                epoch = rec.generation + 1
                try:
                    info = await self._bounded(self.call(rec, "commit", epoch),
                                               f"handing session {rec.session_id!r} back to {old_worker}")
                    rec.generation = epoch
                    lost = not info["state_bytes"]
                except Exception:
                    logger.warning("could not hand session %s back to %s", rec.session_id, old_worker, exc_info=True)
                rec.set_status(prior, time.time())
            # else: the source died on the way; the plugin's remove_worker queued its recovery.
            error = TransferError(
                f"migrating session {rec.session_id!r} from {old_worker} to {target} failed: {exc!r}"
                + ("; the source no longer holds its state" if lost and old_worker in self.scheduler.workers
                   else "; it goes on at the source" if not lost else "")
            )
            error.state_lost = lost and old_worker in self.scheduler.workers
            raise error from exc
        rec.migrations += 1
        rec.note("migrated", worker=target, from_worker=old_worker, chunk=info["chunk_index"], id=event_id)
        rec.set_status(prior, time.time())

    async def suspend(self, rec: SessionRecord, tier: str) -> bool:
        """Offload the session's state to ``tier``; False when it already was there."""
        if rec.status is SessionStatus.SUSPENDED and (rec.tier == tier or tier == "host"):
            return False
        info = await self.call(rec, "offload", tier)
        if info.get("unread"):
            self._unread[rec.session_id] = list(info["unread"])
        if tier == "disk" and info.get("events"):
            self._events[rec.session_id] = list(info["events"])  # the next actor goes on with them
        rec.state_bytes = info["state_bytes"] or rec.state_bytes
        rec.chunks = max(rec.chunks, info["chunk_index"])
        rec.tier = tier
        if tier == "disk":
            self.release(rec)
            rec.worker = None
        rec.set_status(SessionStatus.SUSPENDED, time.time())
        self._changed()
        return True

    async def resume(self, rec: SessionRecord, worker: str | None) -> None:
        """Bring a suspended session back: in place, to ``worker`` from the host, or from the store.

        ``worker`` may be None only for a host-parked session resumed where it is.
        """
        if rec.tier == "host" and rec.worker is not None and worker in (None, rec.worker):
            await self.call(rec, "restore")
        elif rec.tier == "host" and rec.worker is not None:
            source = {"kind": "peer", "address": rec.worker, "key": rec.actor_key, "transport": "host"}
            await self.start(rec, worker, source)
        else:
            await self.start(rec, worker, {"kind": "store", "unread": self._unread.get(rec.session_id, []),
                                           "events": self._events.get(rec.session_id, [])})
            self._unread.pop(rec.session_id, None)
            self._events.pop(rec.session_id, None)
        rec.tier = None
        rec.set_status(SessionStatus.IDLE, time.time())

    async def gone_from(self, worker: str, timeout: float = 10.0) -> None:
        """Wait until the scheduler has forgotten the released actors on ``worker``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws = self.scheduler.workers.get(worker)
            if ws is None or not ws.actors:
                return
            await asyncio.sleep(0.05)

    def forget_checkpoint(self, rec: SessionRecord) -> None:
        """Delete the session's checkpoint from the store, fenced above its last owner (logged on failure)."""
        try:
            from storage import CheckpointStore

            CheckpointStore(self.settings.store).delete(rec.session_id, fence=rec.generation + 1)
        except Exception:
            logger.warning("could not delete the checkpoint of session %s", rec.session_id, exc_info=True)

    async def _control_client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                from distributed import Client

                # The cluster's Security (TLS certificates), so the control client connects under TLS too.
                self._client = await Client(self.scheduler.address, asynchronous=True, set_as_default=False,
                                            security=getattr(self.scheduler, "security", None))
            return self._client
