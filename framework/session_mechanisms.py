"""The session actors of the scheduler plugin: start, move, offload, bring back, release.

:class:`SessionActors` is a collaborator of
:class:`~framework.scheduler_plugin.TurboserveScheduler` (which holds one): it keeps the
actor futures and the chunks a disk-suspended session had not delivered, and performs
the steps the plugin calls with the session's lock held. Every new actor is started
through a control client that lives in the scheduler process, so that it outlives the
user's client. The plugin decides *where* (its control loop); this class only acts.

Every call it makes to an actor is bounded by ``turboserve.control.transfer-timeout``.
A suspension or an in-place resumption whose call goes unanswered (a frozen worker keeps
its connections open and answers nothing) is aborted: the registry keeps the session
where it was, the caller gets a :class:`~workers.errors.TransferError`, and the call is
*in doubt* (:class:`InDoubt`), since the worker may still carry it out when it runs
again. As soon as the worker answers, what the late call did is undone (the actor is
made to match the registry; the event ``settled``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed.client import _wait

from framework.registry import SessionRecord
from framework.serving_settings import ServingSettings
from policies.types import SessionStatus
from workers.access import TokenRPC, digest, new_token
from workers.actor_rpc import BoundedRPC, call_actor
from workers.encryption import P2P_UNDER_TLS, encrypted
from workers.errors import InvalidRequest, SessionMoved, TransferError
from workers.ids import new_id
from workers.session_actor import SessionActor

logger = logging.getLogger(__name__)

#: How long a committed move waits for its source to confirm it dropped its state.
RELEASE_TIMEOUT_S = 10.0
#: How often a call left in doubt is settled again while its worker does not answer (each try
#: bounded by ``turboserve.control.transfer-timeout``).
SETTLE_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class InDoubt:
    """A call to a session's actor that went unanswered within the transfer timeout.

    The registry did not commit what the call asked for (the move was aborted), but the
    actor may still carry it out: a frozen worker reads its messages once it runs again.
    :meth:`SessionActors.settle` then aborts it on the actor by its ``op`` id (undone if
    it ran, refused if it arrives later), so that the actor matches the registry.
    """

    call: str  # "offload" (a suspension) or "restore" (a resumption in place)
    op: str  # the id the call carried
    worker: str
    key: str
    since_s: float


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
        self._doubts: dict[str, InDoubt] = {}  # session id -> a call its actor may still carry out
        self._locks: dict[str, asyncio.Lock] = {}  # session id -> held while its actor is called (settle vs moves)
        self._settling: set[asyncio.Task] = set()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        #: The control plane's access token: every actor accepts it besides its session's
        #: (:mod:`workers.access`); it rides in a peer move's source so the target can pull.
        self._token = new_token()

    async def close(self) -> None:
        """Close the control client (and stop settling calls left in doubt)."""
        for task in list(self._settling):
            task.cancel()
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
        new epoch; the half-started actor, if it lives, is fenced by that epoch. Its
        commit may still arrive late (a frozen worker runs again): without a peer source
        the scheduler claims the next epoch in the store at once (:meth:`_fence`), so
        that late claim is refused and the actor never serves.

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
        except BaseException as exc:
            rec.worker, rec.actor_key = before[0], before[1]
            if before[2] is None:
                self._futures.pop(rec.session_id, None)
            else:
                self._futures[rec.session_id] = before[2]
            fut.release()
            if isinstance(exc, Exception) and source.get("kind") != "peer":
                # The commit may still arrive (a frozen worker runs again): fence it out. A peer
                # source is handed the session back at a newer epoch by the caller instead.
                await self._fence(rec, epoch + 1)
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
        takes it for the *caller's* connection closing and drops that connection. The
        error of a call that went unanswered has ``unanswered = True`` (the worker may
        still carry it out).
        """
        try:
            return await asyncio.wait_for(aw, self.settings.transfer_timeout_s)
        except asyncio.TimeoutError:
            error = TransferError(f"{what} took more than {self.settings.transfer_timeout_s:g} s "
                                  "(turboserve.control.transfer-timeout)")
            error.unanswered = True
            raise error from None
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
        self._doubts.pop(rec.session_id, None)  # nothing left to settle with a dropped actor

    def forget(self, session_id: str) -> None:
        """Forget a closed session's undelivered chunks."""
        self._unread.pop(session_id, None)
        self._events.pop(session_id, None)
        self._doubts.pop(session_id, None)
        self._locks.pop(session_id, None)

    def in_doubt(self, session_id: str) -> InDoubt | None:
        """The call on the session's actor that is still in doubt, if any."""
        return self._doubts.get(session_id)

    def _lock(self, session_id: str) -> asyncio.Lock:
        """Held while the control plane calls the session's actor (a move, or settling a doubt)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def migrate(self, rec: SessionRecord, target: str, transport: str | None = None) -> None:
        """Move the session's state to a new actor on ``target`` at a chunk boundary (see :meth:`start`).

        The source freezes at a chunk boundary and keeps its state until the target
        has committed. On failure the source takes the session back at a new
        ownership epoch and serves on, and :class:`~workers.errors.TransferError` is
        raised; its ``state_lost`` is True only when the source lives but could not
        take the session back (recover from the checkpoint), or did not answer the
        freeze within the transfer timeout (it is not asked again: a late commit there
        could serve beside the owner the recovery makes). A source that died on the way
        is the plugin's worker-loss recovery.
        """
        async with self._lock(rec.session_id):
            await self.settle(rec)
            await self._migrate(rec, target, transport)

    async def _migrate(self, rec: SessionRecord, target: str, transport: str | None) -> None:
        chosen = transport or self.settings.transport
        if encrypted(self.scheduler.address) and chosen == "p2p":  # not under Dask's TLS (workers.encryption)
            if transport == "p2p":
                raise InvalidRequest(P2P_UNDER_TLS)
            chosen = "host"  # the configured default: fall back to the encrypted path
        prior = rec.status
        old_worker, old_key = rec.worker, rec.actor_key
        rec.set_status(SessionStatus.MIGRATING, time.time())
        frozen = False
        try:
            await self._bounded(self.call(rec, "freeze"), f"freezing session {rec.session_id!r}")
            frozen = True
            event_id = new_id()  # the actor's record and the registry's are one event
            source = {"kind": "peer", "address": old_worker, "key": old_key,
                      "transport": chosen, "event_id": event_id}
            info = await self.start(rec, target, source)
        except Exception as exc:
            # A source that did not answer the freeze is not asked again (a late commit there could
            # serve beside the owner recovery makes): the session is recovered from its checkpoint.
            lost, unanswered = True, not frozen and getattr(exc, "unanswered", False)
            if unanswered:
                rec.worker, rec.actor_key = old_worker, old_key
                rec.set_status(prior, time.time())
            elif old_worker in self.scheduler.workers:
                rec.worker, rec.actor_key = old_worker, old_key
                # The epoch is taken before the call: a commit answered late (a frozen source runs
                # again) must never share its epoch with the owner a recovery makes next.
                epoch = rec.generation = rec.generation + 1
                try:
                    info = await self._bounded(self.call(rec, "commit", epoch),
                                               f"handing session {rec.session_id!r} back to {old_worker}")
                    lost = not info["state_bytes"]
                except Exception as again:
                    unanswered = bool(getattr(again, "unanswered", False))
                    logger.warning("could not hand session %s back to %s", rec.session_id, old_worker, exc_info=True)
                rec.set_status(prior, time.time())
            # else: the source died on the way; the plugin's remove_worker queued its recovery.
            error = TransferError(
                f"migrating session {rec.session_id!r} from {old_worker} to {target} failed: {exc!r}"
                + ("; the source did not answer, so the session is recovered from its checkpoint (the source's "
                   "state, if it runs again, is fenced out)" if unanswered
                   else "; the source no longer holds its state" if lost and old_worker in self.scheduler.workers
                   else "; it goes on at the source" if not lost else "")
            )
            error.state_lost = lost and old_worker in self.scheduler.workers
            raise error from exc
        rec.migrations += 1
        rec.note("migrated", worker=target, from_worker=old_worker, chunk=info["chunk_index"], id=event_id)
        rec.set_status(prior, time.time())

    async def suspend(self, rec: SessionRecord, tier: str) -> bool:
        """Offload the session's state to ``tier``; False when it already was there.

        A transaction: the actor parks the state (and, for ``disk``, checkpoints it), and
        the registry commits the suspension only with its answer. A worker that does not
        answer within the transfer timeout aborts it: :class:`TransferError`, the
        session stays where it was (``suspend-aborted``) and the call is in doubt
        (:meth:`settle`). A worker that left is the plugin's worker-loss recovery.
        """
        if rec.status is SessionStatus.SUSPENDED and (rec.tier == tier or tier == "host"):
            return False
        async with self._lock(rec.session_id):
            await self.settle(rec)
            what = f"suspending session {rec.session_id!r} to {tier} on {rec.worker}"
            op = new_id()
            try:
                info = await self._bounded(self.call(rec, "offload", tier, op), what)
            except TransferError as exc:
                raise self._aborted(rec, "offload", op, what, exc, f"the session stays {rec.status.value}") from exc
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

        ``worker`` may be None only for a host-parked session resumed where it is. A
        transaction like :meth:`start`: on any failure the session stays suspended, its
        host-parked state or its checkpoint untouched (``resume-aborted``), and can be
        resumed again, elsewhere too. An in-place resumption that went unanswered is in
        doubt (:meth:`settle`); a new actor whose commit went unanswered is fenced out
        (its source claims a newer epoch, or the scheduler claims one in the store).
        """
        async with self._lock(rec.session_id):
            await self.settle(rec)
            if rec.tier == "host" and rec.worker is not None and worker in (None, rec.worker):
                what = f"resuming session {rec.session_id!r} on {rec.worker}"
                op = new_id()
                try:
                    await self._bounded(self.call(rec, "restore", op), what)
                except TransferError as exc:
                    raise self._aborted(rec, "restore", op, what, exc,
                                        "the session stays suspended in its host memory") from exc
            else:
                peer = rec.tier == "host" and rec.worker is not None
                if peer:
                    source = {"kind": "peer", "address": rec.worker, "key": rec.actor_key, "transport": "host"}
                else:
                    source = {"kind": "store", "unread": self._unread.get(rec.session_id, []),
                              "events": self._events.get(rec.session_id, [])}
                generation = rec.generation
                try:
                    await self.start(rec, worker, source)
                except Exception as exc:
                    if peer and rec.generation > generation:  # the commit was sent: the source claims a newer epoch
                        await self._hand_back(rec)
                    rec.note("resume-aborted", worker=worker, why=f"{type(exc).__name__}: {exc}",
                             stays=f"suspended ({'host memory of ' + rec.worker if peer else 'its checkpoint'})")
                    raise
                if not peer:
                    self._unread.pop(rec.session_id, None)
                    self._events.pop(rec.session_id, None)
            rec.tier = None
            rec.set_status(SessionStatus.IDLE, time.time())

    async def settle(self, rec: SessionRecord) -> None:
        """Abort, on the session's actor, a call left in doubt, so that the actor matches the registry.

        Nothing to do without a doubt, or when it is superseded (the session closed or
        moved, or its worker left: recovery brings it back). Otherwise the actor is told
        to undo the call by its id (:meth:`SessionActor.undo
        <workers.session_actor.SessionActor.undo>`): a late suspension is restored (one to
        disk too: the actor keeps the state until it is released), a late resumption is
        suspended to host memory again, and a call that has not arrived yet is refused
        when it does. Raises :class:`TransferError` while the worker still does not
        answer (the doubt stays).
        """
        doubt = self._doubts.get(rec.session_id)
        if doubt is None:
            return
        if (rec.status is SessionStatus.CLOSED or rec.actor_key != doubt.key or rec.worker != doubt.worker
                or doubt.worker not in self.scheduler.workers):
            self._doubts.pop(rec.session_id, None)
            return
        waited = time.time() - doubt.since_s
        what = (f"session {rec.session_id!r}: aborting the {doubt.call} on {doubt.worker} that went unanswered "
                f"{waited:.1f} s ago")
        try:
            info = await self._bounded(self.call(rec, "undo", doubt.op), what)
        except Exception as exc:
            unanswered = getattr(exc, "unanswered", False)
            error = TransferError(
                f"{exc}; the session cannot be moved until its worker answers (the {doubt.call} is then undone): "
                "try again later, or close the session" if unanswered
                else f"{what} failed ({type(exc).__name__}: {exc}); close the session if it does not stream again"
            )
            error.unanswered = unanswered
            raise error from exc
        if self._doubts.get(rec.session_id) is not doubt or rec.actor_key != doubt.key:
            return  # closed or moved on meanwhile (a close does not wait for this lock)
        self._doubts.pop(rec.session_id, None)
        rec.note("settled", worker=doubt.worker, call=doubt.call, undid=info.get("undid"),
                 why=f"the worker answered again {waited:.1f} s after the {doubt.call} went unanswered")
        self._changed()

    def _aborted(self, rec: SessionRecord, call: str, op: str, what: str, exc: TransferError,
                 stays: str) -> TransferError:
        """The error for a suspension or resumption ``call`` that failed before its commit; notes the event.

        An unanswered call on a worker still in the cluster is in doubt: it is settled as
        soon as the worker answers (:meth:`settle`, retried every :data:`SETTLE_RETRY_S`).
        """
        kind = "suspend-aborted" if call == "offload" else "resume-aborted"
        if getattr(exc, "unanswered", False) and rec.worker in self.scheduler.workers:
            self._doubts[rec.session_id] = InDoubt(call, op, rec.worker, rec.actor_key, time.time())
            task = asyncio.ensure_future(self._settle_later(rec))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            then = (f"{stays} on {rec.worker}; if the worker carries the call out later, it is undone as soon as "
                    "it answers again (event 'settled'); try again then, or migrate or close the session")
        elif rec.worker not in self.scheduler.workers:
            then = f"worker {rec.worker} left: the session is recovered from its checkpoint"
        else:
            then = f"{stays} on {rec.worker}; try again, or migrate or close the session"
        rec.note(kind, worker=rec.worker, why=str(exc), stays=then)
        return TransferError(f"{what} was aborted: {exc}; {then}")

    async def _settle_later(self, rec: SessionRecord) -> None:
        """Settle the session's doubt once its worker answers; give up only if it answers with an error."""
        while rec.session_id in self._doubts:
            await asyncio.sleep(SETTLE_RETRY_S)
            async with self._lock(rec.session_id):
                try:
                    await self.settle(rec)
                except Exception as exc:
                    if getattr(exc, "unanswered", False):
                        continue  # still frozen (or slow): try again
                    doubt = self._doubts.pop(rec.session_id, None)
                    if doubt is None or rec.status is SessionStatus.CLOSED:
                        continue  # superseded meanwhile: nothing to report
                    logger.warning("session %s: could not settle the %s left in doubt on %s: %r", rec.session_id,
                                   doubt.call, doubt.worker, exc)
                    rec.note("settle-failed", worker=doubt.worker, why=f"{type(exc).__name__}: {exc}")

    async def _hand_back(self, rec: SessionRecord) -> None:
        """The session's (host-parked) source claims a newer epoch after a move whose commit went unanswered.

        The actor the commit went to may still carry it out; its claim of the older
        epoch is then refused and it never serves. Logged when the source does not answer.
        """
        epoch = rec.generation = rec.generation + 1  # taken first: a late answer shares no epoch with a later owner
        try:
            await self._bounded(self.call(rec, "commit", epoch),
                                f"handing session {rec.session_id!r} back to {rec.worker} at epoch {epoch}")
        except Exception:
            logger.warning("could not hand session %s back to %s", rec.session_id, rec.worker, exc_info=True)

    async def _fence(self, rec: SessionRecord, epoch: int) -> None:
        """Claim ownership ``epoch`` for the session in the checkpoint store, from the scheduler.

        After a commit that went unanswered: the actor it went to may still carry it
        out (a frozen worker runs again); its claim of the lower epoch is then refused
        (:class:`storage.CheckpointFenced`), so it neither serves nor writes the
        checkpoint. Without a store there is nothing to fence: that actor's key was
        never handed out, so it delivers no chunk either.
        """
        if not self.settings.store:
            return
        from storage import CheckpointFenced, CheckpointStore

        def claim() -> None:
            CheckpointStore(self.settings.store).claim(rec.session_id, epoch)

        try:
            await asyncio.wait_for(asyncio.to_thread(claim), self.settings.transfer_timeout_s)
        except CheckpointFenced:
            pass  # a newer owner claimed it already: fenced as well
        except Exception as exc:
            logger.warning("session %s: could not fence epoch %d in the store: %r", rec.session_id, epoch, exc)
            rec.note("unfenced", epoch=epoch, why=f"the store refused the fence: {exc!r}")
            return
        rec.generation = max(rec.generation, epoch)

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
