"""The control plane on the scheduler: one plugin with the session registry, the control loop and its collaborators.

:class:`TurboserveScheduler` is a Dask ``SchedulerPlugin``. It

- keeps the :class:`~framework.registry.SessionRegistry` (session -> worker, status,
  chunk counters, recent latencies, state bytes), fed by the workers' per-step metrics
  over their batched stream (op ``turboserve-chunks``), which also feed the control
  loop's latency estimate;
- owns the :class:`~framework.controller.ControlLoop` and implements its
  :class:`~framework.controller.Mechanisms`: the cluster side here (workers, records,
  tiers, scale, undrain, parallel groups), the session actions (place, migrate, suspend,
  resume, drain) by its :class:`~framework.session_handlers.SessionHandlers`, which are
  also the per-session RPC handlers (open, locate, pause, ..., close) and check each
  caller's access token; admission at ``open`` (and recovery, and the targets of a
  drain) goes through one gate, :class:`~framework.admission.Admission`, which asks the
  same loop (:meth:`ControlLoop.choose`); the loop ticks once
  ``turboserve_control_start`` is called (``server.start_control()``);
- owns every session actor through :class:`~framework.session_mechanisms.SessionActors`,
  which starts them with a control client that lives in the scheduler process, so that
  actors outlive the user's client; users reach an actor directly by ``(worker, key)``;
- registers the RPC handlers (``turboserve_*`` in ``scheduler.handlers``), its own
  (stats, shutdown, control loop, autoscaler, parallelism) and its session handlers
  (open, ..., close, the sessions listing), for clients and for
  :class:`framework.adaptive.SessionAdaptive`;
- brings the sessions of a dead worker back on a survivor from their last checkpoint
  (:class:`~framework.recovery.Recovery`), and keeps the chunk futures waiting for those
  sessions from failing with ``KilledWorker`` (:meth:`TurboserveScheduler.transition`);
- offers a worker that joined to placement, migration and admission only once its model
  is loaded (:class:`~framework.warmup.Warmup`, fed by the workers' ready events);
- vetoes downscaling of workers that hold sessions (``valid_workers_downscaling``).

Its configuration is :class:`~framework.serving_settings.ServingSettings` and
:class:`~framework.control_settings.ControlSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from dask.utils import parse_timedelta
from distributed import stealing
from distributed.diagnostics.plugin import SchedulerPlugin

from framework import adoption, config
from framework.admission import Admission
from framework.control_settings import ControlSettings
from framework.controller import ControlLoop
from framework.dashboard.install import install_dashboard
from framework.dashboard.source import DashboardFeed
from framework.errors import ParallelismError
from framework.limits import OpenLimits
from framework.parallelism import ParallelGroups
from framework.recovery import Recovery
from framework.registry import PLUGIN_NAME, SessionRecord, SessionRegistry
from framework.serving_settings import ServingSettings
from framework.session_handlers import SessionHandlers, refusing
from framework.session_mechanisms import SessionActors
from framework.warmup import Warmup
from policies.types import TIERS, BurstTally
from workers.chunk_futures import CHUNK_KEY_PREFIX, chunk_session
from workers.encryption import GROUPS_UNDER_TLS, encrypted
from workers.errors import InvalidRequest
from workers.plugin import METRICS_OP, READY_TOPIC

logger = logging.getLogger(__name__)

__all__ = ["TurboserveScheduler"]


class TurboserveScheduler(SchedulerPlugin):
    """Session registry, control loop and their collaborators on the scheduler (see the module docstring).

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
        self.session_handlers: SessionHandlers | None = None  # open, pause, ..., close: each under the session's lock
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
        if self.settings.store:  # the store's record of open sessions (read below, written at open and close)
            self.open_sessions = adoption.OpenSessions(self.settings.store)
        ops = self.session_handlers = SessionHandlers(
            scheduler, self.settings, self.limits, self.registry, self.actors, self.admission, self.groups,
            self.open_sessions, self.dashboard, restart=lambda rec, why: self.recovery.restart(rec, why),
            changed=self._kick,
        )
        self.recovery = Recovery(scheduler, self.registry, self.actors, self.admission, self.groups,
                                 ops.lock, self._spawn_task, self._kick)
        handlers = {
            "turboserve_open": ops.open,
            # Per-session handlers take the session's access token (isolation, issue 13).
            "turboserve_locate": ops.owned(ops.locate),
            "turboserve_pause": ops.owned(ops.pause),
            "turboserve_suspend": ops.owned(ops.suspend),
            "turboserve_resume": ops.owned(ops.resume),
            "turboserve_migrate": ops.owned(ops.migrate),
            "turboserve_close": ops.owned(ops.close_session),
            "turboserve_drain": ops.drain,
            "turboserve_sessions": ops.sessions,
            "turboserve_info": ops.owned(ops.info),
            "turboserve_events": ops.owned(ops.events),
            "turboserve_prompt": ops.owned(ops.prompt_switched),
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
        scheduler.handlers.update({op: refusing(op, fn) for op, fn in handlers.items()})
        scheduler.stream_handlers[METRICS_OP] = self._on_metrics
        scheduler.stream_handlers["turboserve-group-failed"] = self._on_group_failed  # parallel_group.GROUP_FAILED_OP
        install_dashboard(scheduler)
        # A chunk task belongs on its session's worker (its bytes stay there until gathered,
        # and its loss with that worker is what recovery regenerates). Its restriction is
        # loose only so that Dask can recompute it elsewhere after that worker died; work
        # stealing would otherwise move queued chunk tasks to idle workers, where they
        # fetch the chunk worker-to-worker and keep it away from the session's worker.
        # Dask's own list of prefixes never to steal (``fast_tasks``) holds them back.
        stealing.fast_tasks.add(CHUNK_KEY_PREFIX)
        for worker in scheduler.workers:  # cold until their ModelHost reports (it is registered next)
            self._worker_joined(worker)
        for _, msg in scheduler.get_events(READY_TOPIC):  # reported before this plugin came
            if isinstance(msg, dict):
                self.admission.device_reported(msg.get("worker"), msg.get("device_free"))
                self.warmup.ready(msg.get("worker"))
        if self.open_sessions is not None:  # the sessions a previous scheduler on this store left open come back
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

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
        """A chunk future's task starting on a worker while its session is served starts with a clean record.

        Dask counts the workers that died while a task ran (``TaskState.suspicious``) and
        fails the task with ``KilledWorker`` once more than
        ``distributed.scheduler.allowed-failures`` did: the task is taken to kill its
        workers. A chunk task (:func:`workers.chunk_futures.chunk_task`) is not: it only
        waits for its session's actor (holding or giving up its task slot), and the session is recovered after
        each death and makes the same chunk again (issue 13: the chaos suite's load lost a
        session's future to ``KilledWorker`` after 4 kills, every one recovered). So each
        time it starts running while its session is open here, its count goes back to 0:
        a death counts against the run it ends only, and never fails the future while
        ``allowed-failures`` is 1 or more (Dask's default is 3; at 0 the first death still
        fails it). Other tasks, and chunk tasks of a closed or lost session (which fail
        with ``SessionClosed`` anyway), keep Dask's count; the setting is not changed.

        A chunk task left with no worker at all (``no-worker``: every worker died, a
        cluster of one restarting) forgets the worker it was sent to: that restriction
        is only a hint (``allow_other_workers``), but Dask wakes such a task only for a
        joining worker its restrictions name, so it would wait for the dead one forever.
        """
        if finish not in ("processing", "no-worker") or self.scheduler is None:
            return
        session_id = chunk_session(key)
        if session_id is None or session_id not in self.registry:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        if finish == "no-worker":
            if ts.loose_restrictions and not any(w in self.scheduler.workers for w in ts.worker_restrictions):
                ts.worker_restrictions = None
            return
        if not self.registry.get(session_id).status.finished:
            ts.suspicious = 0

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

    # ------------------------------------------------------------ cluster handlers

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
        idle = [a for a in self.loop.fleet.to_close(busy)
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

    def bursts(self) -> BurstTally:
        """The sessions' bursts so far (the registry's tally)."""
        return self.registry.bursts

    def admitting(self, session_id: str) -> bool:
        """Whether the open or recovery path holds the session's lock (:meth:`SessionHandlers.admitting`)."""
        return self.session_handlers is not None and self.session_handlers.admitting(session_id)

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

    # The session actions are the session handlers' (the RPC handlers, without the access check).

    async def place(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Start a pending session (:meth:`SessionHandlers.place`)."""
        return await self.session_handlers.place(session_id, worker)

    async def migrate(self, session_id: str, target: str) -> dict[str, Any]:
        """Move a session to ``target`` (:meth:`SessionHandlers.migrate`, default transport)."""
        return await self.session_handlers.migrate(session_id, target)

    async def suspend(self, session_id: str, tier: str | None = None) -> dict[str, Any]:
        """Offload a session's state to ``tier`` (:meth:`SessionHandlers.suspend`)."""
        return await self.session_handlers.suspend(session_id, tier)

    async def resume(self, session_id: str, worker: str | None = None) -> dict[str, Any]:
        """Bring a suspended session back (:meth:`SessionHandlers.resume`)."""
        return await self.session_handlers.resume(session_id, worker)

    async def drain(self, worker: str) -> dict[str, Any]:
        """Move every session off ``worker``; it stays marked draining (:meth:`SessionHandlers.drain`)."""
        return await self.session_handlers.drain(worker)

    # ------------------------------------------------------------ internals

    def _check_group_wire(self, degree: Any) -> None:
        """A parallel group's collectives are not under Dask's TLS: refused on a TLS cluster."""
        if encrypted(self.scheduler.address) and isinstance(degree, int) and degree > 1:
            raise ParallelismError(GROUPS_UNDER_TLS)


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

    def _on_metrics(self, worker: str | None = None, rows: list | None = None, degraded: int = 0,
                    **kw: Any) -> None:
        rows = rows or ()
        self.registry.record_chunks(rows, time.time())
        self.dashboard.on_chunks(rows)
        if self.loop is not None:
            self.loop.count_chunks(len(rows), degraded)
            for _sid, _index, latency, batch, _t_done in rows:
                self.loop.observe(batch, latency, worker=worker)
