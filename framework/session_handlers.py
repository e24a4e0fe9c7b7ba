"""The scheduler's per-session operations: the RPC handlers clients call and the control loop's session actions.

:class:`SessionHandlers` opens, locates, pauses, suspends, resumes, migrates, places,
drains and closes sessions, each under the session's own lock (:meth:`SessionHandlers.lock`,
shared with :class:`~framework.recovery.Recovery`), placing through
:class:`~framework.admission.Admission` and acting through
:class:`~framework.session_mechanisms.SessionActors`. The same methods are
``turboserve_*`` RPC handlers (for clients) and the session side of the control loop's
:class:`~framework.controller.Mechanisms` (``place``, ``migrate``, ``suspend``,
``resume``, ``drain``, ``admitting``).

A session is reachable only with its opener's access token (:mod:`workers.access`):
:meth:`SessionHandlers.owned` wraps a per-session handler in that check, and
:func:`refusing` wraps every handler so that a typed refusal reaches the caller without
an ERROR log. The control loop calls the plain methods, never the wrapped ones.

Its owner is :class:`~framework.scheduler_plugin.TurboserveScheduler`, which registers
these handlers next to its own (registry, control loop, autoscaler) and answers the rest
of :class:`~framework.controller.Mechanisms`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from distributed.core import error_message

from framework.admission import Admission
from framework.adoption import OpenSessions
from framework.dashboard.source import DashboardFeed
from framework.errors import WorkerInGroup
from framework.limits import OpenLimits, validate_open
from framework.model_pools import check_served
from framework.parallelism import ParallelGroups
from framework.registry import SessionRecord, SessionRegistry
from framework.serving_settings import TRANSPORTS, ServingSettings
from framework.session_mechanisms import SessionActors
from kernels.presets import get_preset
from policies.types import TIERS, SessionStatus
from workers.access import digest, new_token
from workers.errors import (
    CapacityExceeded,
    InvalidRequest,
    SessionClosed,
    TransferError,
    TurboserveError,
    UnknownWorker,
)
from workers.ids import new_id

logger = logging.getLogger(__name__)

__all__ = ["SessionHandlers", "refusing"]
_ON_DEVICE = (SessionStatus.ACTIVE, SessionStatus.IDLE)
#: Workers an ``open`` (or a resume placement chose) tries when the one it placed the session on fails meanwhile.
OPEN_ATTEMPTS = 3
#: Shortest access token a client may choose for its session at ``open``.
MIN_TOKEN_CHARS = 16


def refusing(op: str, handler: Any) -> Any:
    """``handler`` as an RPC handler whose typed refusals reach the caller without an ERROR log.

    Dask logs every exception a handler raises with its traceback ("Exception while
    handling op"): a refused request (a bad argument, a full cluster, a call without
    the session's access token) is the caller's business, logged here at INFO in one
    line; the caller gets the same typed error (``send_recv`` raises it).
    """

    async def refusing(*args: Any, **kw: Any) -> Any:
        try:
            result = handler(*args, **kw)
            return await result if inspect.isawaitable(result) else result
        except TurboserveError as exc:
            logger.info("%s refused: %s: %s", op, type(exc).__name__, exc)
            return error_message(exc, status="uncaught-error")

    refusing.__name__ = refusing.__qualname__ = f"refusing_{getattr(handler, '__name__', op)}"
    return refusing


class SessionHandlers:
    """Per-session operations on the scheduler (see the module docstring).

    Parameters
    ----------
    scheduler
        The Dask scheduler (its ``workers``, ``retire_workers``).
    settings : ServingSettings
    limits : OpenLimits
        The checks of an ``open`` request.
    registry : SessionRegistry
    actors : SessionActors
    admission : Admission
    groups : ParallelGroups or None
    open_sessions : OpenSessions or None
        The store's record of open sessions (written at open and close), if there is a store.
    dashboard : DashboardFeed
        Counts the offloads.
    restart : callable
        ``restart(rec, why)``: bring a session whose state a failed move lost back from its
        checkpoint (:meth:`Recovery.restart <framework.recovery.Recovery.restart>`).
    changed : callable
        Capacity or a session changed (wakes admission and the control loop).

    Examples
    --------
    >>> ops = plugin.session_handlers                                     # doctest: +SKIP
    >>> scheduler.handlers["turboserve_pause"] = refusing("turboserve_pause", ops.owned(ops.pause))  # doctest: +SKIP
    """

    def __init__(self, scheduler: Any, settings: ServingSettings, limits: OpenLimits, registry: SessionRegistry,
                 actors: SessionActors, admission: Admission, groups: ParallelGroups | None,
                 open_sessions: OpenSessions | None, dashboard: DashboardFeed,
                 restart: Callable[[SessionRecord, str], None], changed: Callable[[], None]) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.limits = limits
        self.registry = registry
        self.actors = actors
        self.admission = admission
        self.groups = groups
        self.open_sessions = open_sessions
        self.dashboard = dashboard
        self._restart = restart
        self._changed = changed
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ access

    def owned(self, handler: Any) -> Any:
        """``handler(session_id, ...)`` as an RPC handler that first checks the caller's ``access_token``.

        An unknown session is :class:`SessionNotFound`; a token that is not the session's
        (or none) is :class:`~workers.errors.SessionAccessDenied`. The control loop calls
        the plain methods (its Mechanisms), never these.
        """

        async def checked(session_id: str, access_token: str | None = None, **kw: Any) -> Any:
            self.registry.get(session_id).check_access(access_token)
            result = handler(session_id, **kw)
            return await result if inspect.isawaitable(result) else result

        checked.__name__ = checked.__qualname__ = f"owned_{handler.__name__}"
        return checked

    def lock(self, session_id: str) -> asyncio.Lock:
        """The session's lock: every operation on it (and its recovery) holds it."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    def admitting(self, session_id: str) -> bool:
        """Whether the open or recovery path holds the session's lock (it is being placed)."""
        lock = self._locks.get(session_id)
        return lock is not None and lock.locked()

    # ------------------------------------------------------------ client handlers

    async def open(
        self,
        prompt: str,
        seed: int = 0,
        model: str | None = None,
        height: int | None = None,
        width: int | None = None,
        session_id: str | None = None,
        worker: str | None = None,
        access_token: str | None = None,
    ) -> dict[str, Any]:
        """Admit, place and start a new session; returns its record, actor location and access token.

        The session's ``access_token`` (:mod:`workers.access`; made here unless the caller
        sent one of its own, so that it owns the session while it is still queued) goes
        back to this caller only: every later call on the session (here and on its actors)
        must carry it.

        A named ``worker`` goes through admission too: it must be in service (not
        draining) and below ``max-sessions-per-worker``, counting the sessions being
        opened there; when it is full, ``admission.on-full`` says whether the open is
        refused or waits (:meth:`Admission.admit_on`) with a :class:`CapacityExceeded`.
        """
        rec = self._new_record(prompt, seed, model, height, width, session_id)
        if access_token is None:
            access_token = new_token()
        elif not isinstance(access_token, str) or len(access_token) < MIN_TOKEN_CHARS:
            raise InvalidRequest(f"access_token must be a str of at least {MIN_TOKEN_CHARS} characters "
                                 "(workers.access.new_token() makes one), or None")
        rec.access_digest = digest(access_token)
        if worker is not None:
            self.admission.check_worker(worker)
        check_served(rec.model, self.admission.worker_models(), worker)  # ModelNotServed, whatever on-full says
        self.registry.add(rec)
        async with self.lock(rec.session_id):
            try:
                failed: set[str] = set()
                for attempt in range(OPEN_ATTEMPTS):
                    if worker is None:
                        target = await self.admission.admit(rec, exclude=failed)
                    else:
                        target = await self.admission.admit_on(rec, worker)
                    try:
                        with self.admission.placing(target):  # counted until its actor runs
                            await self.actors.start(rec, target, {"kind": "new"})
                        break
                    except TransferError as exc:
                        # The worker died (or lost the actor) while the session started there:
                        # place it again, elsewhere if possible (not when the caller named it).
                        if worker is not None or attempt == OPEN_ATTEMPTS - 1:
                            raise
                        failed.add(target)
                        logger.warning("session %s could not start on %s (%s); placing it again",
                                       rec.session_id, target, exc)
            except BaseException:
                self._set(rec, SessionStatus.CLOSED)
                self._forget_closed()
                raise
            self._set(rec, SessionStatus.ACTIVE)
            if self.open_sessions is not None:
                await self.open_sessions.put(rec)
            return {**self._location(rec), "access_token": access_token}

    async def locate(self, session_id: str, wake: bool = True, timeout: float = 120.0) -> dict[str, Any]:
        """Where the session's actor is, once no move or recovery is in progress.

        With ``wake``, a suspended session is resumed first (a client wants chunks).
        """
        deadline = time.monotonic() + timeout
        while True:
            async with self.lock(session_id):
                rec = self.registry.get(session_id)
                self._check_open(rec)
                if rec.status is SessionStatus.SUSPENDED and wake:
                    await self._resume_locked(rec, None)
                if rec.actor_key is not None or rec.status is SessionStatus.SUSPENDED:
                    return self._location(rec)
            # Pending: its recovery (or admission) has not taken the lock yet, or waits for a worker.
            if time.monotonic() > deadline:
                raise CapacityExceeded(f"session {session_id!r} found no worker in {timeout} s; add workers")
            await self.admission.wait_change(0.1)

    async def pause(self, session_id: str) -> dict[str, Any]:
        """Idle on the device: the state stays, no chunk is produced."""
        async with self.lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            if rec.status in _ON_DEVICE:
                await self._answered(self.actors.call(rec, "pause"), f"pausing session {session_id!r} on {rec.worker}")
                self._set(rec, SessionStatus.IDLE)
                self._changed()
            return self._location(rec)

    async def suspend(self, session_id: str, tier: str | None = None) -> dict[str, Any]:
        """Offload the state to ``tier`` (``host`` or ``disk``), freeing device memory."""
        tier = tier or self.settings.offload_tier
        if tier not in TIERS:
            raise InvalidRequest(f"unknown offload tier {tier!r}; expected one of {TIERS}")
        if tier == "disk" and not self.settings.store:
            raise InvalidRequest("suspend to disk needs a checkpoint store: set turboserve.state.store")
        async with self.lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            await self._suspend_locked(rec, tier)
            return self._location(rec)

    async def resume(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Bring a suspended session back on a device (``worker``, or where placement says)."""
        if worker is not None:
            self.admission.check_worker(worker)
            self.admission.check_not_closing(worker)
        async with self.lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            self.admission.check_serves(rec, worker)
            if worker is not None and worker != rec.worker:
                self.admission.check_memory(rec, worker)  # InsufficientMemory before any state moves
            if rec.status is SessionStatus.SUSPENDED:
                await self._resume_locked(rec, worker)
            elif worker is not None and worker != rec.worker:
                await self._migrate_locked(rec, worker)
            return self._location(rec)

    async def migrate(self, session_id: str, target: str, transport: str | None = None) -> dict[str, Any]:
        """Hot-migrate the session to ``target`` at a chunk boundary.

        ``transport``: ``host`` (staged through host memory over Dask comms), ``p2p``
        (a private NCCL/gloo group of two) or ``auto`` (p2p when both ends are CUDA
        devices); default ``turboserve.state.transport``.
        """
        if transport not in (None, *TRANSPORTS):
            raise InvalidRequest(f"unknown transport {transport!r}; expected one of {TRANSPORTS}")
        self.admission.check_worker(target)
        self.admission.check_not_closing(target)
        if target in self.admission.draining:
            raise UnknownWorker(f"worker {target} is draining; pick another of {self.admission.workers()}")
        async with self.lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            self.admission.check_serves(rec, target)
            if rec.worker != target:
                self.admission.check_memory(rec, target)  # InsufficientMemory before any state moves
            if rec.status is SessionStatus.SUSPENDED:
                await self._resume_locked(rec, target)
            elif rec.worker != target:
                await self._migrate_locked(rec, target, transport)
            return self._location(rec)

    async def place(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Start a pending session's actor on ``worker`` or where placement puts it.

        A no-op for a session that is not pending any more, or whose admission or
        recovery is under way (that one places it as soon as capacity changes).
        """
        if worker is not None:
            self.admission.check_worker(worker)
        rec = self.registry.get(session_id)
        self.admission.check_serves(rec, worker)
        if rec.status is not SessionStatus.PENDING or self.lock(session_id).locked():
            return self._location(rec)
        async with self.lock(session_id):
            if rec.status is not SessionStatus.PENDING:
                return self._location(rec)
            if worker is not None:
                self.admission.check_not_closing(worker)
                self.admission.check_memory(rec, worker)
            target = worker or await self.admission.admit(rec)
            with self.admission.placing(target):
                await self.actors.start(rec, target, {"kind": "store" if self.settings.store else "new"})
            self._set(rec, SessionStatus.ACTIVE)
            return self._location(rec)

    async def close_session(self, session_id: str) -> dict[str, Any]:
        """Close the session for good: drop its state and its actor."""
        async with self.lock(session_id):
            rec = self.registry.get(session_id)
            if rec.status is SessionStatus.CLOSED:
                return self._location(rec)
            if rec.actor_key is not None:
                try:  # bounded: a frozen worker must not hold the session's lock for good
                    await self._answered(self.actors.call(rec, "close"), f"closing session {session_id!r} on {rec.worker}")
                except Exception:
                    logger.warning("closing the actor of session %s failed; it is closed here and its actor "
                                   "released", session_id, exc_info=True)
            self.actors.release(rec)
            self.actors.forget(session_id)
            if self.settings.store:
                await asyncio.to_thread(self.actors.forget_checkpoint, rec)
            if self.open_sessions is not None:
                await self.open_sessions.remove(session_id)
            rec.worker, rec.tier = None, None
            self._set(rec, SessionStatus.CLOSED)
            self._forget_closed()
            self._changed()
            return self._location(rec)

    async def drain(self, worker: str, retire: bool = False) -> dict[str, Any]:
        """Move every session off ``worker`` (migrate, else suspend to disk); with ``retire``, then retire it.

        Returns ``{"moved": [...], "suspended": [...], "retired": bool}``. Without
        ``retire`` the worker stays marked draining (no session is placed on it) until
        it leaves or :meth:`TurboserveScheduler.undrain
        <framework.scheduler_plugin.TurboserveScheduler.undrain>` puts it back in service.
        """
        self.admission.check_worker(worker)
        group = self.groups.group_of(worker) if self.groups is not None else None
        if group is not None:
            raise WorkerInGroup(f"worker {worker} is in parallel group {group.group_id!r} ({list(group.workers)}); "
                                f"split it first: server.set_parallelism(1, {list(group.workers)})")
        self.admission.draining.add(worker)
        moved, suspended = [], []
        try:
            for rec in list(self.registry.on_worker(worker)):
                async with self.lock(rec.session_id):
                    if rec.worker != worker or rec.status is SessionStatus.CLOSED:
                        continue
                    target = None
                    if rec.status in _ON_DEVICE:
                        target = self.admission.choose(rec, exclude={worker})
                    if target is not None:
                        await self._migrate_locked(rec, target)
                        moved.append(rec.session_id)
                    elif self.settings.store:
                        await self._suspend_locked(rec, "disk")
                        suspended.append(rec.session_id)
                    else:
                        raise CapacityExceeded(
                            f"cannot drain {worker}: no other worker takes session {rec.session_id!r} "
                            "and there is no checkpoint store to suspend it to (turboserve.state.store)"
                        )
            retired = False
            if retire:
                await self.actors.gone_from(worker)
                result = await self.scheduler.retire_workers(workers=[worker], close_workers=True)
                retired = worker in result
        finally:
            if worker not in self.scheduler.workers:
                self.admission.draining.discard(worker)
        return {"moved": moved, "suspended": suspended, "retired": retired}

    def info(self, session_id: str) -> dict[str, Any]:
        """One session's record and actor location, as it is now (no waiting)."""
        return self._location(self.registry.get(session_id))

    def prompt_switched(self, session_id: str, index: int, prompt: str) -> None:
        """A client steered the session to ``prompt`` from chunk ``index`` on: ``sessions()`` shows it.

        The switch itself is the actor's (part of the session's state); this only keeps
        the record's ``current_prompt`` for listings and cards.
        """
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest(f"a prompt is a non-empty string, got {prompt!r}")
        self.registry.get(session_id).current_prompt = prompt

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """What the registry recorded of one session (migrations, workers lost, recoveries), oldest first."""
        return list(self.registry.get(session_id).events)

    def sessions(self, include_closed: bool = False, access_tokens: list[str] | None = None) -> list[dict[str, Any]]:
        """Every session's record as plain data; the prompt only of those whose token is in ``access_tokens``."""
        digests = [digest(t) for t in access_tokens or () if isinstance(t, str) and t]
        return [r.to_dict(owned=not r.access_digest or any(d == r.access_digest for d in digests))
                for r in self.registry.records(include_closed)]

    # ------------------------------------------------------------ internals

    def _new_record(self, prompt, seed, model, height, width, session_id) -> SessionRecord:
        req = validate_open(prompt, seed, model or self.settings.model,
                            self.settings.height if height is None else height,
                            self.settings.width if width is None else width, session_id, limits=self.limits)
        session_id = req.session_id
        if session_id is None:
            session_id = new_id()
        if session_id in self.registry:
            raise InvalidRequest(f"session id {session_id!r} is taken; pick another or leave it None")
        preset = get_preset(req.model)
        now = time.time()
        return SessionRecord(
            session_id=session_id, model=preset.name, prompt=req.prompt, seed=req.seed, height=req.height,
            width=req.width, since_s=now, created_s=now, chunk_period_s=preset.frames_per_chunk / self.settings.fps,
        )

    @staticmethod
    def _check_open(rec: SessionRecord) -> None:
        if rec.status is SessionStatus.CLOSED:
            raise SessionClosed(f"session {rec.session_id!r} is closed; open a new one")

    def _forget_closed(self) -> None:
        """Keep the registry bounded: the oldest closed sessions beyond ``registry.MAX_CLOSED`` go."""
        for sid in self.registry.forget_closed():
            lock = self._locks.get(sid)
            if lock is not None and not lock.locked():
                del self._locks[sid]

    @staticmethod
    def _set(rec: SessionRecord, status: SessionStatus) -> None:
        rec.set_status(status, time.time())

    async def _answered(self, aw: Any, what: str) -> Any:
        """``aw`` (a call to a session's actor) within ``turboserve.control.transfer-timeout``.

        A worker that does not answer (a frozen process keeps its connections open) is a
        :class:`TransferError`; never a bare ``TimeoutError``, an ``OSError`` that Dask's
        server would take for the caller's connection closing.
        """
        try:
            return await asyncio.wait_for(aw, self.settings.transfer_timeout_s)
        except TimeoutError:
            raise TransferError(f"{what}: the worker did not answer within {self.settings.transfer_timeout_s:g} s "
                                "(turboserve.control.transfer-timeout)") from None

    def _location(self, rec: SessionRecord) -> dict[str, Any]:
        return {**rec.to_dict(), "actor_key": rec.actor_key, "fps": self.settings.fps,
                "frames": get_preset(rec.model).frames_per_chunk}

    async def _migrate_locked(self, rec: SessionRecord, target: str, transport: str | None = None) -> None:
        try:
            with self.admission.placing(target):
                await self.actors.migrate(rec, target, transport)
        except TransferError as exc:
            if getattr(exc, "state_lost", False):
                # The source handed its state over and the target never took it: bring the
                # session back from its checkpoint (generation is deterministic).
                logger.warning("%s; recovering session %s from its checkpoint", exc, rec.session_id)
                self._restart(rec, f"a failed migration to {target} dropped its state")
            raise

    async def _suspend_locked(self, rec: SessionRecord, tier: str) -> None:
        if await self.actors.suspend(rec, tier):
            self.dashboard.count_offload()

    async def _resume_locked(self, rec: SessionRecord, worker: str | None) -> None:
        """Bring a suspended session back: on ``worker``, in place (host tier), or where admission places it.

        A failed start leaves the session suspended as it was (its checkpoint, or its
        host-parked state, and its unread chunks are untouched), so a resume that
        placement chose is placed again, on another worker if one fits, up to
        :data:`OPEN_ATTEMPTS` times: the worker it went to may die as the actor starts
        there (a stream's wake-up resume then used to end the stream with that
        ``TransferError``, issue 13). A resume on a named worker is not moved elsewhere:
        its ``TransferError`` says the session is still suspended.
        """
        if worker is not None or (rec.tier == "host" and rec.worker is not None):
            try:
                with self.admission.placing(worker or rec.worker):
                    await self.actors.resume(rec, worker)
            except TransferError as exc:
                raise TransferError(
                    f"resuming session {rec.session_id!r} on {worker or rec.worker} failed ({exc}); nothing is lost: "
                    f"the session is {rec.status.value} and comes back when it is streamed, or resumed on "
                    "another worker or without one (placement picks)"
                ) from exc
            return
        failed: set[str] = set()
        for attempt in range(OPEN_ATTEMPTS):
            target = await self.admission.admit(rec, exclude=failed)
            try:
                with self.admission.placing(target):
                    await self.actors.resume(rec, target)
                return
            except TransferError as exc:
                if attempt == OPEN_ATTEMPTS - 1 or self.admission.closing:
                    raise
                failed.add(target)
                logger.warning("resuming session %s on %s failed (%s); placing it again", rec.session_id, target, exc)
