"""The control plane on the scheduler: one plugin with the session registry, the control loop and the mechanisms.

:class:`TurboserveScheduler` is a Dask ``SchedulerPlugin``. It

- keeps the :class:`~framework.registry.SessionRegistry` (session -> worker, status,
  chunk counters, recent latencies, state bytes), fed by the workers' per-step metrics
  over their batched stream (op ``turboserve-chunks``), which also feed the control
  loop's latency estimate;
- owns the :class:`~framework.controller.ControlLoop` and implements its
  :class:`~framework.controller.Mechanisms` (place, migrate, suspend, resume, drain,
  scale, records, workers) with its session RPC handlers; admission at ``open`` (and
  recovery, and the targets of a drain) goes through one gate,
  :class:`~framework.admission.Admission`, which asks the same loop
  (:meth:`ControlLoop.choose`); the loop ticks once ``turboserve_control_start`` is
  called (``server.start_control()``);
- owns every session actor through :class:`~framework.session_mechanisms.SessionActors`,
  which starts them with a control client that lives in the scheduler process, so that
  actors outlive the user's client; users reach an actor directly by ``(worker, key)``;
- exposes RPC handlers (``turboserve_*`` in ``scheduler.handlers``) for clients and for
  :class:`framework.adaptive.SessionAdaptive`;
- brings the sessions of a dead worker back on a survivor from their last checkpoint
  (:class:`~framework.recovery.Recovery`);
- offers a worker that joined to placement, migration and admission only once its model
  is loaded (:class:`~framework.warmup.Warmup`, fed by the workers' ready events);
- vetoes downscaling of workers that hold sessions (``valid_workers_downscaling``).

Its configuration is :class:`~framework.serving_settings.ServingSettings` and
:class:`~framework.control_settings.ControlSettings`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from dataclasses import asdict
from typing import Any

from dask.utils import parse_timedelta
from distributed.core import error_message
from distributed.diagnostics.plugin import SchedulerPlugin

from framework import adoption, config
from framework.admission import Admission
from framework.control_settings import ControlSettings
from framework.controller import ControlLoop
from framework.dashboard.install import install_dashboard
from framework.dashboard.source import DashboardFeed
from framework.errors import ParallelismError, WorkerInGroup
from framework.limits import OpenLimits, validate_open
from framework.model_pools import check_served
from framework.parallelism import ParallelGroups
from framework.recovery import Recovery
from framework.registry import PLUGIN_NAME, SessionRecord, SessionRegistry
from framework.serving_settings import TRANSPORTS, ServingSettings
from framework.session_mechanisms import SessionActors
from framework.warmup import Warmup
from kernels.presets import get_preset
from policies.types import TIERS, SessionStatus
from workers.access import digest, new_token
from workers.encryption import GROUPS_UNDER_TLS, encrypted
from workers.errors import (
    CapacityExceeded,
    InvalidRequest,
    SessionClosed,
    TransferError,
    TurboserveError,
    UnknownWorker,
)
from workers.plugin import METRICS_OP, READY_TOPIC

logger = logging.getLogger(__name__)

__all__ = ["TurboserveScheduler"]
_ON_DEVICE = (SessionStatus.ACTIVE, SessionStatus.IDLE)
#: Workers an ``open`` (or a resume placement chose) tries when the one it placed the session on fails meanwhile.
OPEN_ATTEMPTS = 3
#: Shortest access token a client may choose for its session at ``open``.
MIN_TOKEN_CHARS = 16


class TurboserveScheduler(SchedulerPlugin):
    """Session registry, control loop and mechanisms on the scheduler (see the module docstring).

    Parameters
    ----------
    settings : ServingSettings
    control : ControlSettings, optional
        The control loop's settings (placement, for admission too); default
        :meth:`ControlSettings.from_config` with ``settings.placement``, read where the
        plugin is built (the client process).

    Examples
    --------
    >>> client.register_plugin(TurboserveScheduler(ServingSettings.from_config()))  # doctest: +SKIP
    >>> client.sync(client.scheduler.turboserve_sessions)                          # doctest: +SKIP
    []
    """

    name = PLUGIN_NAME
    idempotent = True  # attaching a second Server keeps the registry

    def __init__(self, settings: ServingSettings, control: ControlSettings | None = None) -> None:
        self.settings = settings
        if control is None:
            control = ControlSettings.from_config(placement=settings.placement)
        self.control_settings = control
        self.limits = OpenLimits.from_config()
        self.registry = SessionRegistry()
        self.scheduler: Any = None
        self.actors: SessionActors | None = None
        self.loop: ControlLoop | None = None
        self.groups: ParallelGroups | None = None  # parallel groups of workers (issue 10)
        self.admission: Admission | None = None  # where a session may start; draining workers
        self.recovery: Recovery | None = None  # sessions whose state was lost come back from checkpoints
        self.open_sessions: adoption.OpenSessions | None = None  # in the store, for a next scheduler
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._adaptive_seen: float | None = None  # wall time of the autoscaler's last poll
        self._adaptive_target: int | None = None
        self.dashboard = DashboardFeed(registry=self.registry)  # chunk points and counters for the dashboard page
        # workers that joined and still load their model (turboserve.control.worker-ready-timeout)
        self.warmup = Warmup(parse_timedelta(config.get("control.worker-ready-timeout"), default="s"))

    # ------------------------------------------------------------ plugin hooks

    async def start(self, scheduler: Any) -> None:
        """Install the RPC handlers and the metrics stream handler; build the control loop."""
        self.scheduler = scheduler
        self.actors = SessionActors(scheduler, self.settings, self._kick)
        self.loop = ControlLoop(self.control_settings, self)
        self.groups = ParallelGroups(
            scheduler,
            sessions_on=lambda w: [r.session_id for r in self.registry.on_worker(w)],
            model_of=lambda ids: self.registry.get(ids[0]).model if ids else self.settings.model,
            changed=self._kick,
            timeout_s=self.settings.group_timeout_s,
        )
        self.admission = Admission(scheduler, self.registry, self.settings, self.warmup, self.groups, lambda: self.loop)
        self.recovery = Recovery(scheduler, self.registry, self.actors, self.admission, self.groups,
                                 self._lock, self._spawn_task, self._kick)
        handlers = {
            "turboserve_open": self.open,
            # Per-session handlers take the session's access token (isolation, issue 13).
            "turboserve_locate": self._owned(self.locate),
            "turboserve_pause": self._owned(self.pause),
            "turboserve_suspend": self._owned(self.suspend),
            "turboserve_resume": self._owned(self.resume),
            "turboserve_migrate": self._owned(self.migrate),
            "turboserve_close": self._owned(self.close_session),
            "turboserve_drain": self.drain,
            "turboserve_sessions": self.sessions,
            "turboserve_info": self._owned(self.info),
            "turboserve_events": self._owned(self.events),
            "turboserve_stats": self.stats,
            "turboserve_shutdown": self.shutdown,
            "turboserve_control_start": self.start_control,
            "turboserve_control_target": self.adaptive_target,
            "turboserve_control_to_close": self.workers_to_close,
            "turboserve_control_release": self.release_claims,
            "turboserve_control_stats": self.control_stats,
            "turboserve_control_log": self.control_log,
            "turboserve_control_kick": self._kick,
            "turboserve_parallelism": self.parallelism,
            "turboserve_set_parallelism": self.change_parallelism,
        }
        scheduler.handlers.update({op: self._refusing(op, fn) for op, fn in handlers.items()})
        scheduler.stream_handlers[METRICS_OP] = self._on_metrics
        scheduler.stream_handlers["turboserve-group-failed"] = self._on_group_failed  # parallel_group.GROUP_FAILED_OP
        install_dashboard(scheduler)
        for worker in scheduler.workers:  # cold until their ModelHost reports (it is registered next)
            self._worker_joined(worker)
        for _, msg in scheduler.get_events(READY_TOPIC):  # reported before this plugin came
            if isinstance(msg, dict):
                self.admission.device_reported(msg.get("worker"), msg.get("device_free"))
                self.warmup.ready(msg.get("worker"))
        if self.settings.store:  # the sessions a previous scheduler on this store left open come back
            self.open_sessions = adoption.OpenSessions(self.settings.store)
            await self._adopt()

    async def _adopt(self) -> None:
        """Register the sessions a previous scheduler left open: suspended to disk (:mod:`framework.adoption`)."""
        adopted = await self.open_sessions.adopt(self.settings.fps, self.registry)
        for rec in adopted:
            self.registry.add(rec)
        if adopted:
            logger.info("adopted %d sessions from %s (suspended to disk; they resume from their checkpoints)",
                        len(adopted), self.settings.store)
            self._kick()

    async def before_close(self) -> None:
        """Stop deciding and recovering sessions: the cluster is going away."""
        await self.shutdown()

    async def close(self) -> None:
        """Stop the loop and close the control client."""
        await self.shutdown()
        if self.actors is not None:
            await self.actors.close()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Wake sessions waiting for a worker (admission queue, recovery); tell the loop (it is cold)."""
        self._worker_joined(worker)
        if self.loop is not None:
            self.loop.worker_added(worker, ready=worker not in self.warmup.cold())
        self._kick()

    def log_event(self, topic: str, msg: Any) -> None:
        """A worker's model host reports its model loaded (:data:`~workers.plugin.READY_TOPIC`), and its free device memory."""
        if topic == READY_TOPIC and isinstance(msg, dict):
            if self.admission is not None:
                self.admission.device_reported(msg.get("worker"), msg.get("device_free"))
            if msg.get("error"):
                logger.warning("worker %s failed to load its model (%s); it takes sessions, which load on first use",
                               msg.get("worker"), msg["error"])
            self._worker_ready(msg.get("worker"))

    def _worker_joined(self, worker: str) -> None:
        self.warmup.joined(worker)
        if worker in self.warmup.cold():
            asyncio.get_running_loop().call_later(self.warmup.timeout_s, self._ready_overdue)

    def _ready_overdue(self) -> None:
        for worker in self.warmup.overdue():
            logger.warning("worker %s did not report its model loaded within %s s "
                           "(turboserve.control.worker-ready-timeout); offering it anyway", worker, self.warmup.timeout_s)
            self._offer(worker)

    def _worker_ready(self, worker: str | None) -> None:
        if self.warmup.ready(worker):
            self._offer(worker)

    def _offer(self, worker: str) -> None:
        """``worker`` takes sessions from now on (its start-up time ends here)."""
        if self.loop is not None:
            self.loop.worker_ready(worker)
        self._kick()

    def remove_worker(self, scheduler: Any, worker: str, *, stimulus_id: str | None = None, **kw: Any) -> None:
        """Bring the sessions held by a lost worker back on a survivor."""
        self.admission.draining.discard(worker)
        self.admission.device_free.pop(worker, None)
        self.warmup.left(worker)
        group = self.groups.forget_worker(worker) if self.groups is not None else None
        if self.loop is not None:
            self.loop.worker_removed(worker)
        if self.admission.closing:
            return
        if group is not None:
            self._spawn_task(self.recovery.group_lost(group, worker))
        self.recovery.worker_lost(worker, f"worker {worker} left")

    def _on_group_failed(self, worker: str | None = None, group_id: str = "", why: str = "",
                         sessions_lost: bool = True, **kw: Any) -> None:
        """A group's leader reports a failed step: the group is dropped. If its sessions depended
        on it, its followers (one stopped answering) leave service and the sessions restart
        from their checkpoints; else (the first step) the leader serves them at degree 1."""
        group = self.groups.forget_group(group_id) if self.groups is not None else None
        if group is None:
            return
        logger.warning("parallel group %s (%s) failed: %s", group_id, list(group.workers), why)
        if not sessions_lost:
            self._spawn_task(self.groups.fell_back(group))
            return
        self.admission.draining.update(w for w in group.workers[1:] if w in self.scheduler.workers)
        self._spawn_task(self.recovery.group_lost(group, None))

    def valid_workers_downscaling(self, scheduler: Any, workers: list[Any]) -> list[Any]:
        """Never let Dask close a worker that holds a session (its actor would die)."""
        busy = {r.worker for r in self.registry.records()}
        return [ws for ws in workers if ws.address not in busy and not ws.actors]

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
        check_served(rec.model, self.worker_models(), worker)  # ModelNotServed, whatever on-full says
        self.registry.add(rec)
        async with self._lock(rec.session_id):
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
            async with self._lock(session_id):
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
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            if rec.status in _ON_DEVICE:
                await self._answered(self.actors.call(rec, "pause"), f"pausing session {session_id!r} on {rec.worker}")
                self._set(rec, SessionStatus.IDLE)
                self._kick()
            return self._location(rec)

    async def suspend(self, session_id: str, tier: str | None = None) -> dict[str, Any]:
        """Offload the state to ``tier`` (``host`` or ``disk``), freeing device memory."""
        tier = tier or self.settings.offload_tier
        if tier not in TIERS:
            raise InvalidRequest(f"unknown offload tier {tier!r}; expected one of {TIERS}")
        if tier == "disk" and not self.settings.store:
            raise InvalidRequest("suspend to disk needs a checkpoint store: set turboserve.state.store")
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            await self._suspend_locked(rec, tier)
            return self._location(rec)

    async def resume(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Bring a suspended session back on a device (``worker``, or where placement says)."""
        if worker is not None:
            self.admission.check_worker(worker)
            self.admission.check_not_closing(worker)
        async with self._lock(session_id):
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
        async with self._lock(session_id):
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
        if rec.status is not SessionStatus.PENDING or self._lock(session_id).locked():
            return self._location(rec)
        async with self._lock(session_id):
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
        async with self._lock(session_id):
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
            self._kick()
            return self._location(rec)

    async def drain(self, worker: str, retire: bool = False) -> dict[str, Any]:
        """Move every session off ``worker`` (migrate, else suspend to disk); with ``retire``, then retire it.

        Returns ``{"moved": [...], "suspended": [...], "retired": bool}``. Without
        ``retire`` the worker stays marked draining (no session is placed on it) until
        it leaves or :meth:`undrain` puts it back in service.
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
                async with self._lock(rec.session_id):
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

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """What the registry recorded of one session (migrations, workers lost, recoveries), oldest first."""
        return list(self.registry.get(session_id).events)

    def sessions(self, include_closed: bool = False, access_tokens: list[str] | None = None) -> list[dict[str, Any]]:
        """Every session's record as plain data; the prompt only of those whose token is in ``access_tokens``."""
        digests = [digest(t) for t in access_tokens or () if isinstance(t, str) and t]
        return [r.to_dict(owned=not r.access_digest or any(d == r.access_digest for d in digests))
                for r in self.registry.records(include_closed)]

    def stats(self) -> dict[str, Any]:
        """Registry counts and latency figures, plus per-worker session counts."""
        load = self.registry.load(self.scheduler.workers)
        return {**self.registry.stats(), "workers": load, "draining": sorted(self.admission.draining),
                "settings": asdict(self.settings)}

    async def shutdown(self, release: bool = False) -> None:
        """Stop the control loop and background recovery (the cluster is closing); ``release`` drops every actor."""
        if self.admission is not None:
            self.admission.close()
        if self.loop is not None:
            await self.loop.stop()
        for task in list(self._tasks):
            task.cancel()
        self._kick()
        if release:
            for rec in self.registry.records():
                self.actors.release(rec)

    def parallelism(self) -> list[dict[str, Any]]:
        """Parallel groups and lone workers, one row each (:meth:`ParallelGroups.listing`)."""
        return self.groups.listing()

    async def change_parallelism(self, degree: int, workers: list[str] | None = None) -> dict[str, Any]:
        """Merge workers into groups of ``degree`` or split them (:meth:`ParallelGroups.set_parallelism`)."""
        self._check_group_wire(degree)
        return await self.groups.set_parallelism(degree, workers)

    # ------------------------------------------------------------ control handlers

    def start_control(self, settings: ControlSettings | None = None) -> None:
        """Start the control loop's ticks, with new ``settings`` if given (a fresh loop)."""
        if settings is not None and (self.loop is None or not self.loop.running or settings != self.loop.settings):
            if self.loop is not None and self.loop.running:
                raise InvalidRequest("the control loop already runs with other settings; restart the cluster to change them")
            self.control_settings = settings
            self.loop = ControlLoop(settings, self)
        self.loop.start()

    def adaptive_target(self) -> int:
        """The workers the autoscaling policy wants (the current count before it decided).

        Called by :class:`framework.adaptive.SessionAdaptive`; a poll marks the
        autoscaler as attached, which lets ``ScaleTo`` and ``Retire`` take effect.
        """
        first = self._adaptive_seen is None
        self._adaptive_seen = time.time()
        if first:
            self._kick()
        return len(self.scheduler.workers) if self._adaptive_target is None else self._adaptive_target

    def workers_to_close(self, target: int | None = None) -> list[Any]:
        """Names of workers the loop retired and drained that hold no session, claimed for closing (for the Adaptive).

        Every worker named is claimed (:meth:`Admission.claim
        <framework.admission.Admission.claim>`): no session is placed on it until the
        Adaptive gives the claim back (:meth:`release_claims`), so none is lost when Dask
        closes it after this answer. A worker a placement targets right now is not
        offered (nor claimed): it holds a session once that placement completes.
        """
        busy = {r.worker for r in self.registry.records()}
        idle = [a for a in self.loop.workers_to_close(busy)
                if a in self.scheduler.workers and not self.scheduler.workers[a].actors]
        return [self.scheduler.workers[a].name for a in self.admission.claim(idle)]

    def release_claims(self, names: list[Any]) -> list[str]:
        """Give back the claims :meth:`workers_to_close` granted on the workers ``names`` (closed, or kept)."""
        released = self.admission.release(names)
        if released:
            self._kick()
        return released

    def closing(self) -> frozenset[str]:
        """Workers claimed for closing by the autoscaler: a scale-out does not put them back in service."""
        return frozenset(self.admission.claimed())

    def control_stats(self) -> dict[str, Any]:
        """The control loop's counters (:meth:`ControlLoop.stats`)."""
        return self.loop.stats()

    def control_log(self) -> dict[str, Any]:
        """The control loop's decision log, interval rows and worker lifetimes."""
        return self.loop.log()

    # ------------------------------------------------------------ Mechanisms (for the control loop)

    def workers(self) -> list[str]:
        """Addresses of the workers in the cluster."""
        return list(self.scheduler.workers)

    def worker_models(self) -> dict[str, frozenset[str] | None]:
        """The models each worker serves, from its ``model-*`` resources (None: any)."""
        return self.admission.worker_models()

    def records(self) -> list[SessionRecord]:
        """The open sessions' records."""
        return self.registry.records()

    def admitting(self, session_id: str) -> bool:
        """Whether the open or recovery path holds the session's lock (it is being placed)."""
        lock = self._locks.get(session_id)
        return lock is not None and lock.locked()

    def tiers(self) -> tuple[str, ...]:
        """Offload tiers: ``disk`` only with a checkpoint store."""
        return TIERS if self.settings.store else tuple(t for t in TIERS if t != "disk")

    def scalable(self) -> bool:
        """Whether a :class:`~framework.adaptive.SessionAdaptive` polled the target (sticky)."""
        return self._adaptive_seen is not None

    def scale(self, n: int) -> None:
        """The target the next poll of the Adaptive returns."""
        self._adaptive_target = n

    def parallel_groups(self) -> list[Any]:
        """The parallel groups of degree > 1 (:class:`policies.types.ParallelGroup`)."""
        return self.groups.groups() if self.groups is not None else []

    async def set_parallelism(self, workers: tuple[str, ...], degree: int) -> None:
        """Form a group of ``workers`` (``degree == len(workers)``) or split theirs (``degree == 1``)."""
        self._check_group_wire(degree)
        await self.groups.set_parallelism(degree, list(workers))

    def warming(self) -> frozenset[str]:
        """Workers that joined and still load their model (the loop shows them STARTING)."""
        return self.warmup.cold()

    def undrain(self, worker: str) -> None:
        """Put a worker marked draining back in service (no-op if it is not draining)."""
        self.admission.draining.discard(worker)

    # ------------------------------------------------------------ internals

    @staticmethod
    def _refusing(op: str, handler: Any) -> Any:
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

    def _owned(self, handler: Any) -> Any:
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

    def _new_record(self, prompt, seed, model, height, width, session_id) -> SessionRecord:
        req = validate_open(prompt, seed, model or self.settings.model,
                            self.settings.height if height is None else height,
                            self.settings.width if width is None else width, session_id, limits=self.limits)
        session_id = req.session_id
        if session_id is None:
            session_id = uuid.uuid4().hex[:12]
        if session_id in self.registry:
            raise InvalidRequest(f"session id {session_id!r} is taken; pick another or leave it None")
        preset = get_preset(req.model)
        now = time.time()
        return SessionRecord(
            session_id=session_id, model=preset.name, prompt=req.prompt, seed=req.seed, height=req.height,
            width=req.width, since_s=now, created_s=now, chunk_period_s=preset.frames_per_chunk / self.settings.fps,
        )

    def _check_group_wire(self, degree: Any) -> None:
        """A parallel group's collectives are not under Dask's TLS: refused on a TLS cluster."""
        if encrypted(self.scheduler.address) and isinstance(degree, int) and degree > 1:
            raise ParallelismError(GROUPS_UNDER_TLS)

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

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    @staticmethod
    def _set(rec: SessionRecord, status: SessionStatus) -> None:
        rec.set_status(status, time.time())

    def _kick(self) -> None:
        """Capacity, membership or a session changed: wake waiters and the control loop."""
        if self.admission is not None:
            self.admission.changed()
        if self.loop is not None:
            self.loop.kick()

    def _spawn_task(self, coro) -> None:
        task = asyncio.ensure_future(coro)  # plugin hooks run on the scheduler's event loop
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                self.recovery.restart(rec, f"a failed migration to {target} dropped its state")
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

    def _on_metrics(self, worker: str | None = None, rows: list | None = None, **kw: Any) -> None:
        rows = rows or ()
        self.registry.record_chunks(rows, time.time())
        self.dashboard.on_chunks(rows)
        if self.loop is not None:
            for _sid, _index, latency, batch, _t_done in rows:
                self.loop.observe(batch, latency, worker=worker)
