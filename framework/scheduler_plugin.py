"""The control plane on the scheduler: session registry, placement, and the mechanisms.

:class:`TurboserveScheduler` is a Dask ``SchedulerPlugin``. It

- keeps the :class:`~framework.registry.SessionRegistry` (session -> worker, status,
  chunk counters, recent latencies, state bytes), fed by the workers' per-step metrics
  over their batched stream (op ``turboserve-chunks``);
- owns every session actor: it creates them through a control client that lives in the
  scheduler process, so actors outlive the user's client and can be moved by the
  control loop; users reach an actor directly by ``(worker, key)``;
- places new sessions with the placement policy from ``policies.registry``;
- exposes RPC handlers (``turboserve_*`` in ``scheduler.handlers``) for the client
  and the mechanism methods the controller calls on the scheduler side: :meth:`place`,
  :meth:`migrate`, :meth:`suspend`, :meth:`resume`, :meth:`drain`;
- brings the sessions of a dead worker back on a survivor from their last checkpoint;
- vetoes downscaling of workers that hold sessions (``valid_workers_downscaling``).

Its configuration is :class:`~framework.serving_settings.ServingSettings` (re-exported
here); the actor mechanisms live in :class:`~framework.session_mechanisms.SessionMechanisms`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import asdict, replace
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from kernels.presets import get_preset
from policies.registry import make
from policies.types import Migrate, Place, Reject, SessionStatus, SessionView, Snapshot, WorkerStatus, WorkerView
from framework.dashboard.source import DashboardFeed
from framework.registry import SessionRecord, SessionRegistry
from framework.serving_settings import TRANSPORTS, ServingSettings
from framework.session_mechanisms import SessionMechanisms
from workers.errors import (
    CapacityExceeded,
    InvalidRequest,
    SessionClosed,
    UnknownModel,
    UnknownWorker,
)
from workers.plugin import METRICS_OP
from workers.session_actor import TIERS

logger = logging.getLogger(__name__)

__all__ = ["TRANSPORTS", "ServingSettings", "TurboserveScheduler"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ON_DEVICE = (SessionStatus.ACTIVE, SessionStatus.IDLE)


class TurboserveScheduler(SessionMechanisms, SchedulerPlugin):
    """Session registry and mechanisms on the scheduler (see the module docstring).

    Parameters
    ----------
    settings : ServingSettings

    Examples
    --------
    >>> client.register_plugin(TurboserveScheduler(ServingSettings.from_config()))  # doctest: +SKIP
    >>> client.sync(client.scheduler.turboserve_sessions)                          # doctest: +SKIP
    []
    """

    name = "turboserve"
    idempotent = True  # attaching a second Server keeps the registry

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.registry = SessionRegistry()
        self.scheduler: Any = None
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._actors: dict[str, Any] = {}  # session id -> Future of its actor
        self._unread: dict[str, list] = {}  # session id -> unread chunks of a disk-suspended session
        self._locks: dict[str, asyncio.Lock] = {}
        self._draining: set[str] = set()
        self._changed: asyncio.Event | None = None  # capacity or membership changed
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._placement = make("placement", settings.placement, on_full=settings.on_full)
        self._placement_state = self._placement.initial_state()
        self.dashboard = DashboardFeed()  # chunk points and counters for the dashboard page

    # ------------------------------------------------------------ plugin hooks

    async def start(self, scheduler: Any) -> None:
        """Install the RPC handlers and the metrics stream handler."""
        self.scheduler = scheduler
        self._changed = asyncio.Event()
        self._client_lock = asyncio.Lock()
        scheduler.handlers.update(
            {
                "turboserve_open": self.open,
                "turboserve_locate": self.locate,
                "turboserve_pause": self.pause,
                "turboserve_suspend": self.suspend,
                "turboserve_resume": self.resume,
                "turboserve_migrate": self.migrate,
                "turboserve_close": self.close_session,
                "turboserve_drain": self.drain,
                "turboserve_sessions": self.sessions,
                "turboserve_info": self.info,
                "turboserve_stats": self.stats,
                "turboserve_shutdown": self.shutdown,
            }
        )
        scheduler.stream_handlers[METRICS_OP] = self._on_metrics
        self.dashboard.install(scheduler)

    async def before_close(self) -> None:
        """Stop recovering sessions: the cluster is going away."""
        await self.shutdown()

    async def close(self) -> None:
        """Close the control client."""
        await self.shutdown()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Wake sessions waiting for a worker (admission queue, recovery)."""
        self._kick()

    def remove_worker(self, scheduler: Any, worker: str, *, stimulus_id: str | None = None, **kw: Any) -> None:
        """Bring the sessions held by a lost worker back on a survivor."""
        self._draining.discard(worker)
        if self._closing:
            return
        for rec in self.registry.on_worker(worker):
            fut = self._actors.pop(rec.session_id, None)
            if fut is not None:
                fut.release()
            logger.warning("worker %s left holding session %s; recovering it from its checkpoint", worker, rec.session_id)
            prior = rec.status
            rec.worker, rec.actor_key = None, None
            self._set(rec, SessionStatus.PENDING)
            self._spawn_task(self._recover(rec.session_id, prior))
        self._kick()

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
    ) -> dict[str, Any]:
        """Admit, place and start a new session; returns its record and actor location."""
        rec = self._new_record(prompt, seed, model, height, width, session_id)
        if worker is not None:
            self._check_worker(worker)
        self.registry.add(rec)
        async with self._lock(rec.session_id):
            try:
                target = worker or await self._admit(rec)
                await self._start_actor(rec, target, {"kind": "new"})
            except BaseException:
                self._set(rec, SessionStatus.CLOSED)
                raise
            self._set(rec, SessionStatus.ACTIVE)
            return self._location(rec)

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
            await self._wait_change(0.1)

    async def pause(self, session_id: str) -> dict[str, Any]:
        """Idle on the device: the state stays, no chunk is produced."""
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            if rec.status in _ON_DEVICE:
                await self._call(rec, "pause")
                self._set(rec, SessionStatus.IDLE)
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
            self._check_worker(worker)
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
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
        self._check_worker(target)
        if target in self._draining:
            raise UnknownWorker(f"worker {target} is draining; pick another of {self._workers()}")
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            self._check_open(rec)
            if rec.status is SessionStatus.SUSPENDED:
                await self._resume_locked(rec, target)
            elif rec.worker != target:
                await self._migrate_locked(rec, target, transport)
            return self._location(rec)

    async def close_session(self, session_id: str) -> dict[str, Any]:
        """Close the session for good: drop its state and its actor."""
        async with self._lock(session_id):
            rec = self.registry.get(session_id)
            if rec.status is SessionStatus.CLOSED:
                return self._location(rec)
            if rec.actor_key is not None:
                try:
                    await self._call(rec, "close")
                except Exception:
                    logger.warning("closing the actor of session %s failed", session_id, exc_info=True)
            self._release(rec)
            self._unread.pop(session_id, None)
            if self.settings.store:
                await asyncio.to_thread(self._forget_checkpoint, session_id)
            rec.worker, rec.tier = None, None
            self._set(rec, SessionStatus.CLOSED)
            self._kick()
            return self._location(rec)

    async def drain(self, worker: str, retire: bool = True) -> dict[str, Any]:
        """Move every session off ``worker`` (migrate, else suspend to disk), then retire it.

        Returns ``{"moved": [...], "suspended": [...], "retired": bool}``.
        """
        self._check_worker(worker)
        self._draining.add(worker)
        moved, suspended = [], []
        try:
            for rec in list(self.registry.on_worker(worker)):
                async with self._lock(rec.session_id):
                    if rec.worker != worker or rec.status is SessionStatus.CLOSED:
                        continue
                    target = None
                    if rec.status in _ON_DEVICE:
                        target = self._choose(rec, exclude={worker})
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
                await self._actors_gone(worker)
                result = await self.scheduler.retire_workers(workers=[worker], close_workers=True)
                retired = worker in result
        finally:
            if worker not in self.scheduler.workers:
                self._draining.discard(worker)
        return {"moved": moved, "suspended": suspended, "retired": retired}

    def info(self, session_id: str) -> dict[str, Any]:
        """One session's record and actor location, as it is now (no waiting)."""
        return self._location(self.registry.get(session_id))

    def sessions(self, include_closed: bool = False) -> list[dict[str, Any]]:
        """Every session's record as plain data."""
        return [r.to_dict() for r in self.registry.records(include_closed)]

    def stats(self) -> dict[str, Any]:
        """Registry counts and latency figures, plus per-worker session counts."""
        load = self.registry.load(self.scheduler.workers)
        return {**self.registry.stats(), "workers": load, "draining": sorted(self._draining),
                "settings": asdict(self.settings)}

    def admitting(self, session_id: str) -> bool:
        """Whether the open or recovery path holds the session's lock (it is being placed)."""
        lock = self._locks.get(session_id)
        return lock is not None and lock.locked()

    def undrain(self, worker: str) -> None:
        """Put a worker marked draining back in service (no-op if it is not draining)."""
        self._draining.discard(worker)

    def snapshot(self) -> Snapshot:
        """The policies' view of the cluster now (every worker, draining ones as DRAINING)."""
        views = [
            WorkerView(addr, status=WorkerStatus.DRAINING if addr in self._draining else WorkerStatus.RUNNING,
                       max_batch=self.settings.max_sessions_per_worker)
            for addr in self.scheduler.workers
        ]
        return self.registry.snapshot(time.time(), views)

    async def shutdown(self, release: bool = False) -> None:
        """Stop background recovery (the cluster is closing); ``release`` drops every actor."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        self._kick()
        if release:
            for rec in self.registry.records():
                self._release(rec)

    # ------------------------------------------------------------ internals

    def _new_record(self, prompt, seed, model, height, width, session_id) -> SessionRecord:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest(f"prompt must be a non-empty string, got {prompt!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise InvalidRequest(f"seed must be an int in [0, 2**63), got {seed!r}")
        model = model or self.settings.model
        try:
            preset = get_preset(model)
        except ValueError as exc:
            raise UnknownModel(str(exc)) from None
        height = self.settings.height if height is None else height
        width = self.settings.width if width is None else width
        try:
            preset.check_resolution(height, width)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if session_id is None:
            session_id = uuid.uuid4().hex[:12]
        elif not isinstance(session_id, str) or not _ID.match(session_id):
            raise InvalidRequest(
                f"session id {session_id!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-'"
            )
        if session_id in self.registry:
            raise InvalidRequest(f"session id {session_id!r} is taken; pick another or leave it None")
        now = time.time()
        return SessionRecord(
            session_id=session_id, model=preset.name, prompt=prompt, seed=seed, height=height, width=width,
            since_s=now, created_s=now, chunk_period_s=preset.frames_per_chunk / self.settings.fps,
        )

    def _workers(self) -> list[str]:
        return sorted(self.scheduler.workers)

    def _check_worker(self, worker: str) -> None:
        if worker not in self.scheduler.workers:
            raise UnknownWorker(f"no worker {worker!r} in the cluster; known: {self._workers()}")

    @staticmethod
    def _check_open(rec: SessionRecord) -> None:
        if rec.status is SessionStatus.CLOSED:
            raise SessionClosed(f"session {rec.session_id!r} is closed; open a new one")

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    def _set(self, rec: SessionRecord, status: SessionStatus) -> None:
        rec.status, rec.since_s = status, time.time()

    def _kick(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_change(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _spawn_task(self, coro) -> None:
        task = asyncio.ensure_future(coro)  # plugin hooks run on the scheduler's event loop
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _location(self, rec: SessionRecord) -> dict[str, Any]:
        return {**rec.to_dict(), "actor_key": rec.actor_key, "fps": self.settings.fps,
                "frames": get_preset(rec.model).frames_per_chunk}

    def _worker_views(self, exclude: set[str]) -> list[WorkerView]:
        load = self.registry.load(self.scheduler.workers)
        views = []
        for addr in self.scheduler.workers:
            if addr in exclude or load[addr] >= self.settings.max_sessions_per_worker:
                continue
            status = WorkerStatus.DRAINING if addr in self._draining else WorkerStatus.RUNNING
            views.append(WorkerView(addr, status=status, max_batch=self.settings.max_sessions_per_worker))
        return views

    def _choose(self, rec: SessionRecord, exclude: set[str] = frozenset()) -> str | None:
        """The placement policy's worker for ``rec`` (placed as if pending), or None."""
        snap = self.registry.snapshot(time.time(), self._worker_views(set(exclude) | self._draining))
        pending = [s if s.session_id != rec.session_id else _as_pending(s) for s in snap.sessions]
        snap = type(snap)(now_s=snap.now_s, workers=snap.workers, sessions=tuple(pending))
        actions, self._placement_state = self._placement.decide(snap, self._placement_state)
        for action in actions:
            if getattr(action, "session_id", None) != rec.session_id:
                continue
            if isinstance(action, Place):
                return action.worker
            if isinstance(action, Migrate):
                return action.target
            if isinstance(action, Reject):
                return None
        return None

    async def _admit(self, rec: SessionRecord) -> str:
        """A worker for a new or resumed session, per ``admission.on-full``."""
        deadline = time.monotonic() + self.settings.queue_timeout_s
        while True:
            target = self._choose(rec)
            if target is not None:
                return target
            full = (
                f"no worker can take session {rec.session_id!r}: {len(self.scheduler.workers)} workers, "
                f"{self.settings.max_sessions_per_worker} sessions each at most"
            )
            if self.settings.on_full == "refuse":
                raise CapacityExceeded(f"{full}; close or suspend sessions, or add workers")
            if time.monotonic() >= deadline or self._closing:
                raise CapacityExceeded(f"{full}; waited {self.settings.queue_timeout_s} s in the admission queue")
            await self._wait_change(max(0.0, min(1.0, deadline - time.monotonic())))

    def _on_metrics(self, worker: str | None = None, rows: list | None = None, **kw: Any) -> None:
        self.registry.record_chunks(rows or (), time.time())
        self.dashboard.on_chunks(rows or ())


def _as_pending(view: SessionView) -> SessionView:
    return replace(view, status=SessionStatus.PENDING, worker=None)
