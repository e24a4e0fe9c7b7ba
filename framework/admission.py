"""Admission on the scheduler: which worker a session may start on, and waiting for one.

:class:`Admission` is the one gate of the scheduler plugin's open, resume, place and
recovery paths and of the targets of a drain. It keeps what the control loop does not
see yet: the workers marked draining and the sessions being opened on each worker
(admitted, actor not started). A worker is offered when it is in the cluster, not
draining, not a follower in a parallel group, and below
``turboserve.admission.max-sessions-per-worker`` (counting the sessions being opened
there), and when the session fits its memory (:meth:`Admission.memory_fit`: a CPU worker's
``memory_limit``, a CUDA worker's device memory it measured free once its model loaded);
among those the control loop chooses (:meth:`ControlLoop.choose
<framework.controller.ControlLoop.choose>`: the same placement policy, snapshot and
ledger as its ticks). When none fits, ``turboserve.admission.on-full`` says whether the
request is refused or waits (up to ``queue-timeout-s``) for capacity to change
(:meth:`Admission.changed`); a session that fits no worker's memory even empty is
refused at once (:class:`~framework.errors.InsufficientMemory`). A session that lost its
worker may take back a worker the autoscaler drained and has not closed yet
(:meth:`Admission.reclaim_drained`).

A worker the cluster manager is about to close is *claimed* (:meth:`Admission.claim`,
when :class:`~framework.adaptive.SessionAdaptive` asks which workers to close): from
then on no placement (open, place, resume, a migration's target, recovery, taking a
drained worker back, a scale-out putting it back in service) may pick it, until the
claim is released (:meth:`Admission.release`: the Adaptive closed the worker or chose
not to) or lapses (``turboserve.autoscale.claim-timeout``). Every placement holds
:meth:`Admission.placing` on its target while its actor starts: a worker with a
placement in flight is not granted to a claim, and a placement that finds its target
claimed fails with a :class:`~workers.errors.TransferError` before anything starts
there (its caller places it again elsewhere). Dask's ``Adaptive`` closes the workers it
was offered an RPC and an ``await`` later (``retire_workers``, then the cluster's
``scale_down``); without the claim, a session placed in between died with the worker.

Its owner is :class:`~framework.scheduler_plugin.TurboserveScheduler`;
:class:`~framework.recovery.Recovery` asks it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from dask.utils import parse_bytes, parse_timedelta

from framework import config
from framework.controller import ControlLoop
from framework.errors import InsufficientMemory, WorkerInGroup
from framework.limits import (
    MemoryFit,
    insufficient_memory_message,
    memory_fit,
    session_memory,
)
from framework.model_pools import check_served, models_of
from framework.parallelism import ParallelGroups
from framework.registry import SessionRecord, SessionRegistry
from framework.serving_settings import ServingSettings
from framework.warmup import Warmup
from kernels.presets import get_preset
from policies.types import SessionStatus
from workers.errors import CapacityExceeded, TransferError, UnknownWorker

__all__ = ["Admission"]

logger = logging.getLogger(__name__)

_FITS = MemoryFit(0, 0)  # an unchecked worker


class Admission:
    """Where a new, resumed or recovered session may start (see the module docstring).

    Parameters
    ----------
    scheduler
        The Dask scheduler (its ``workers``).
    registry : SessionRegistry
    settings : ServingSettings
        ``max_sessions_per_worker``, ``on_full``, ``queue_timeout_s``.
    warmup : Warmup
        Workers still loading their model (a full cluster waits for them).
    groups : ParallelGroups or None
        Parallel groups (their followers take no session of their own).
    loop : callable
        The control loop now (the plugin builds a new one when its settings change).
    """

    def __init__(self, scheduler: Any, registry: SessionRegistry, settings: ServingSettings, warmup: Warmup,
                 groups: ParallelGroups | None, loop: Callable[[], ControlLoop]) -> None:
        self.scheduler = scheduler
        self.registry = registry
        self.settings = settings
        self.warmup = warmup
        self.groups = groups
        self._loop = loop
        self.draining: set[str] = set()  # workers that take no new session
        self.closing = False  # the cluster is going away: waiters give up
        self._opening: dict[str, int] = {}  # worker -> sessions placed there whose actor has not started yet
        self._claims: dict[str, tuple[Any, float]] = {}  # worker being closed -> (its name, when claimed)
        #: CUDA workers: bytes free on the device once the default model was loaded (their ready report).
        self.device_free: dict[str, int] = {}
        self._changed = asyncio.Event()  # capacity or membership changed

    # ------------------------------------------------------------ waiting for capacity

    def changed(self) -> None:
        """Capacity, membership or a session changed: wake the requests that wait."""
        self._changed.set()

    async def wait_change(self, timeout: float) -> None:
        """Until :meth:`changed` is called or ``timeout`` seconds pass."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def close(self) -> None:
        """Stop admitting: waiting requests end with :class:`CapacityExceeded`."""
        self.closing = True
        self.changed()

    # ------------------------------------------------------------ the rules

    def workers(self) -> list[str]:
        """The workers in the cluster, sorted (for messages)."""
        return sorted(self.scheduler.workers)

    def worker_models(self) -> dict[str, frozenset[str] | None]:
        """The models each worker serves, from its ``model-*`` resources (None: any)."""
        return {a: models_of(ws.resources) for a, ws in self.scheduler.workers.items()}

    def check_worker(self, worker: str) -> None:
        """:class:`UnknownWorker` if ``worker`` left; :class:`WorkerInGroup` if it follows in a parallel group."""
        if worker not in self.scheduler.workers:
            raise UnknownWorker(f"no worker {worker!r} in the cluster; known: {self.workers()}")
        if self.groups is not None and worker in self.groups.followers():
            group = self.groups.group_of(worker)
            raise WorkerInGroup(f"worker {worker} follows in parallel group {group.group_id!r}: it takes no session "
                                f"of its own; use its leader {group.leader}, or split it first: "
                                f"server.set_parallelism(1, {list(group.workers)})")

    def check_not_closing(self, worker: str) -> None:
        """:class:`UnknownWorker` if ``worker`` is claimed for closing by the autoscaler (:meth:`claim`)."""
        if worker in self.claimed():
            raise UnknownWorker(f"worker {worker} is being closed by the autoscaler and takes no session; "
                                f"name another of {sorted(set(self.workers()) - self.claimed())}, "
                                "or none (placement picks)")

    def check_serves(self, rec: SessionRecord, worker: str | None) -> None:
        """``ModelNotServed`` when the named ``worker`` is outside the pool of ``rec``'s model."""
        if worker is not None:
            check_served(rec.model, self.worker_models(), worker)

    def load(self) -> dict[str, int]:
        """Sessions per worker for admission: those it holds and those being opened there."""
        load = self.registry.load(self.scheduler.workers)
        for worker, n in self._opening.items():
            if worker in load:
                load[worker] += n
        return load

    @contextlib.contextmanager
    def placing(self, worker: str) -> Iterator[None]:
        """Hold ``worker`` as the target of a placement until its actor started (or failed to).

        Counted as a session being opened there (:meth:`load`, :meth:`memory_fit`), and
        no claim is granted on ``worker`` meanwhile (:meth:`claim`). A ``worker`` already
        claimed is a :class:`~workers.errors.TransferError`: nothing was started there,
        the caller places the session elsewhere. Enter it right after choosing the
        worker, with no ``await`` between, so that choosing and holding are one step.
        """
        if worker in self.claimed():
            raise TransferError(f"worker {worker} is being closed by the autoscaler (a scale-down claimed it); "
                                "no session starts there: placement picks another worker")
        self._opening[worker] = self._opening.get(worker, 0) + 1
        try:
            yield
        finally:
            self._opening[worker] -= 1
            if not self._opening[worker]:
                del self._opening[worker]

    # ------------------------------------------------------------ workers being closed

    def claimed(self) -> set[str]:
        """Workers claimed by the cluster manager's scale-down: no placement may pick them.

        A claim lapses after ``turboserve.autoscale.claim-timeout`` (an autoscaler that
        stopped between its offer and its closing), unless its worker is already being
        retired (Dask's ``closing_gracefully``), or when the worker left.
        """
        if self._claims:
            timeout = parse_timedelta(config.get("autoscale.claim-timeout"), default="s")
            now = time.monotonic()
            for worker, (_, since) in list(self._claims.items()):
                ws = self.scheduler.workers.get(worker)
                retiring = ws is not None and getattr(ws.status, "name", "") in ("closing_gracefully", "closing")
                if ws is None or (now - since > timeout and not retiring):
                    del self._claims[worker]
        return set(self._claims)

    def claim(self, workers: Collection[str]) -> list[str]:
        """Claim ``workers`` for closing; returns those granted, in order.

        Not granted: a worker that left, and one that a placement targets now
        (:meth:`placing`: it completes first, and the worker holds a session after it).
        A granted worker takes no session until :meth:`release`.
        """
        granted = []
        for worker in workers:
            ws = self.scheduler.workers.get(worker)
            if ws is None or self._opening.get(worker):
                continue
            self._claims[worker] = (ws.name, time.monotonic())
            granted.append(worker)
        return granted

    def release(self, names: Collection[Any]) -> list[str]:
        """Give back the claims on the workers named ``names`` (Dask worker names); returns their addresses.

        The cluster manager closed them, or chose not to close them after all.
        """
        wanted = {str(n) for n in names}
        released = [w for w, (name, _) in self._claims.items() if str(name) in wanted]
        for worker in released:
            del self._claims[worker]
        if released:
            self.changed()
        return released

    # ------------------------------------------------------------ memory

    def device_reported(self, worker: str | None, free: Any) -> None:
        """``worker``'s ready report: the bytes free on its CUDA device once its model loaded (None: a CPU)."""
        if worker in self.scheduler.workers and isinstance(free, int) and not isinstance(free, bool) and free >= 0:
            self.device_free[worker] = free
            self.changed()

    def memory_fit(self, rec: SessionRecord, worker: str, empty: bool = False) -> MemoryFit | None:
        """Whether ``rec`` fits ``worker``'s memory now (``empty``: with no session there); None: not checked.

        Checked against :func:`framework.limits.memory_fit`: the model's weights unless
        the worker holds them (its default model, or the model of a session there), the
        session's state and activations (:func:`~framework.limits.session_memory`, from
        the presets), and what its sessions and the sessions being placed there take, on

        - a CUDA worker: the device memory it measured free once its default model was
          loaded (:func:`workers.plugin.device_free_bytes` in its ready report; the
          weights of that model and the CUDA context are out of it already), less
          ``turboserve.admission.device-memory-reserve``; sessions suspended to its host
          memory do not count;
        - a CPU worker with a memory limit (Dask's ``memory_limit``): that limit less
          ``turboserve.admission.memory-reserve`` (default 1 GiB) for the process.

        A GPU worker that did not report its device memory (yet) is not checked.
        ``turboserve.admission.memory-check: false`` turns the check off.
        """
        ws = self.scheduler.workers.get(worker)
        if ws is None or not config.get("admission.memory-check"):
            return None
        device = worker in self.device_free
        if device:
            limit = self.device_free[worker]
            reserve = parse_bytes(str(config.get("admission.device-memory-reserve")))
        elif ws.memory_limit and "GPU" not in (ws.resources or {}):
            limit = ws.memory_limit
            reserve = parse_bytes(str(config.get("admission.memory-reserve")))
        else:
            return None
        need = session_memory(rec.model, rec.height, rec.width)
        models = {self.settings.model}
        held = 0
        if not empty:
            for other in self.registry.on_worker(worker):
                if device and other.status is SessionStatus.SUSPENDED:
                    continue  # parked in host memory (or on disk): not on the device
                if other.session_id != rec.session_id:  # on a CPU worker, host-parked state is in its memory too
                    held += session_memory(other.model, other.height, other.width).per_session
                    if other.model not in models:
                        models.add(other.model)
                        held += session_memory(other.model).weights
            held += self._opening.get(worker, 0) * need.per_session
        return memory_fit(need, limit, held=held, weights_loaded=rec.model in models, reserve=reserve)

    def check_memory(self, rec: SessionRecord, worker: str | None = None) -> None:
        """:class:`InsufficientMemory` when ``rec`` fits no worker of the cluster even empty (or not the named one now)."""
        candidates = [worker] if worker is not None else list(self.scheduler.workers)
        fits = [(w, self.memory_fit(rec, w, empty=worker is None)) for w in candidates]
        if not fits or any(f is None or f.fits for _, f in fits):
            return
        where, fit = max(fits, key=lambda wf: wf[1].available)
        device = where in self.device_free
        if worker is None:
            where = f"the largest worker ({where}, empty)" if len(fits) > 1 else f"worker {where} (empty)"
        else:
            where = f"worker {where}"
        need = session_memory(rec.model, rec.height, rec.width)
        height, width = self._resolution(rec)
        raise InsufficientMemory(insufficient_memory_message(rec.model, height, width, need, fit, where, device))

    @staticmethod
    def _resolution(rec: SessionRecord) -> tuple[int, int]:
        p = get_preset(rec.model)
        return rec.height or p.default_height, rec.width or p.default_width

    def choose(self, rec: SessionRecord, exclude: Collection[str] = frozenset()) -> str | None:
        """The control loop's worker for ``rec`` (placed as if pending), or None.

        Workers draining, claimed for closing (:meth:`claim`), left out by ``exclude``,
        at ``max-sessions-per-worker`` or whose memory ``rec`` does not fit
        (:meth:`memory_fit`) are not offered.
        """
        cap = self.settings.max_sessions_per_worker
        full = {a for a, n in self.load().items() if n >= cap and a != rec.worker}
        tight = {a for a in self.scheduler.workers if a != rec.worker and not (self.memory_fit(rec, a) or _FITS).fits}
        followers = self.groups.followers() if self.groups is not None else set()
        closing = self.claimed()
        return self._loop().choose(rec.session_id, set(exclude) | self.draining | closing | full | tight | followers,
                                   max_sessions=cap)

    def reclaim_drained(self, rec: SessionRecord, exclude: Collection[str] = frozenset()) -> str | None:
        """A worker the autoscaler drained but the cluster has not closed yet, back in service for ``rec``; or None.

        For a session that lost its worker when no worker in service can take it. A
        scale-down leaves its drained workers running, warm and empty, until the cluster
        manager closes them (Dask's ``Adaptive`` waits ``wait_count`` intervals); the
        only other home is the killed worker's restart, once it has loaded its model.
        Recovery used to wait for that (10-22 s gaps in the chaos suite, issue 13). The
        worker taken back leaves the control loop's drained set, as a scale-out's
        (:meth:`WorkerFleet.take_back <framework.fleet.WorkerFleet.take_back>`);
        a worker drained by :meth:`framework.Server.drain` is never taken, nor one claimed
        for closing (:meth:`claim`).
        """
        fleet = self._loop().fleet
        cold = self.warmup.cold()
        closing = self.claimed()
        for worker in sorted(fleet.drained):
            if worker in exclude or worker in cold or worker in closing or worker not in self.scheduler.workers:
                continue
            was_retiring = fleet.take_back(worker)
            self.draining.discard(worker)
            target = self.choose(rec, exclude=exclude)
            if target is not None:
                logger.info("worker %s, drained by a scale-down, is back in service for session %s",
                            worker, rec.session_id)
                return target
            fleet.put_back(worker, was_retiring)  # it does not fit either (its model, a group): leave it drained
            self.draining.add(worker)
        return None

    async def admit(self, rec: SessionRecord, exclude: Collection[str] = frozenset()) -> str:
        """A worker for a new or resumed session, per ``admission.on-full`` (``exclude``: not these, if others fit).

        A session that fits no worker's memory even on an empty worker is refused at
        once with :class:`InsufficientMemory` (waiting cannot help).
        """
        self.check_memory(rec)
        deadline = time.monotonic() + self.settings.queue_timeout_s
        while True:
            target = self.choose(rec, exclude=set(exclude)) or (self.choose(rec) if exclude else None)
            if target is not None:
                return target
            full = (
                f"no worker can take session {rec.session_id!r}: {len(self.scheduler.workers)} workers, "
                f"{self.settings.max_sessions_per_worker} sessions each at most"
            )
            # A worker still loading its model will take it: wait (the warm-up timeout bounds it).
            warming = bool(self.warmup.cold())
            if self.settings.on_full == "refuse" and not warming:
                raise CapacityExceeded(f"{full}; close or suspend sessions, or add workers")
            if (time.monotonic() >= deadline and not warming) or self.closing:
                raise CapacityExceeded(f"{full}; waited {self.settings.queue_timeout_s} s in the admission queue")
            await self.wait_change(max(0.0, min(1.0, deadline - time.monotonic())))

    async def admit_on(self, rec: SessionRecord, worker: str) -> str:
        """``worker``, named by the caller, once it may take ``rec`` (per ``admission.on-full``).

        The same rules as :meth:`admit` for one worker: a worker that is draining or
        follows in a parallel group is refused at once; one at ``max-sessions-per-worker``
        is refused (``on-full: refuse``) or waited for until ``queue-timeout-s``
        (``queue``), both with a :class:`CapacityExceeded` that says what to do.
        """
        cap = self.settings.max_sessions_per_worker
        deadline = time.monotonic() + self.settings.queue_timeout_s
        while True:
            self.check_worker(worker)  # it may have left, or joined a group, while the open waited
            self.check_not_closing(worker)
            if worker in self.draining:
                raise UnknownWorker(f"worker {worker} is draining and takes no new session; name another of "
                                    f"{self.workers()}, or none (placement picks)")
            self.check_memory(rec, worker)
            n = self.load().get(worker, 0)
            if n < cap:
                return worker
            full = (f"worker {worker} holds {n} sessions, its maximum (turboserve.admission.max-sessions-per-worker "
                    f"= {cap}); close or suspend sessions there, name another worker, or none (placement picks)")
            if self.settings.on_full == "refuse":
                raise CapacityExceeded(f"cannot open session {rec.session_id!r}: {full}")
            if time.monotonic() >= deadline or self.closing:
                raise CapacityExceeded(f"cannot open session {rec.session_id!r}: {full}; waited "
                                       f"{self.settings.queue_timeout_s} s in the admission queue "
                                       "(turboserve.admission.queue-timeout-s)")
            await self.wait_change(max(0.0, min(1.0, deadline - time.monotonic())))
