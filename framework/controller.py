"""The closed control loop: snapshot -> shared policies -> mechanisms, with none of the cluster details.

:class:`ControlLoop` is to turboserve what dask's ``AdaptiveCore`` is to Dask's
autoscaling: the decision logic, behind a small interface. Every tick
(``turboserve.control.interval``), and early on events (:meth:`ControlLoop.kick`: a
worker joins or leaves, a session opens, closes, pauses, suspends or resumes), it

1. builds the :class:`~policies.types.Snapshot` from the cluster's session records and
   workers, the actions still in flight and a :class:`LatencyEstimator` fed with the
   chunk metrics (:meth:`ControlLoop.observe`);
2. calls the placement, offload and autoscaling policies together
   (:class:`policies.combined.Combined`, built from :class:`ControlSettings`);
3. checks every action with the shared rules of :mod:`policies.semantics` (the
   simulator uses the same ones) and hands the accepted ones to its
   :class:`~framework.control_actions.ActionRunner`, which carries them out through the
   :class:`Mechanisms` protocol, each session action as its own task so that a slow
   migration never blocks the next tick, and tracks them until they finish (the actions
   in flight that the snapshot and the checks read).

A refused action is logged with its reason and counted by category; a failing tick is
logged with ``exc_info`` and the loop goes on. Every decision lands in a bounded log
with the simulator's columns (:data:`~policies.semantics.DECISION_COLUMNS`).

Live, :class:`~framework.scheduler_plugin.TurboserveScheduler` implements
:class:`Mechanisms` and owns the loop: admission at ``open`` asks
:meth:`ControlLoop.choose` (the same policy, snapshot and ledger). Tests drive the loop
against an in-memory fake (``tests/test_control_loop.py``).

Autoscaling is advisory until a cluster manager follows it (``Mechanisms.scalable``:
a :class:`framework.adaptive.SessionAdaptive` polled the target): ``ScaleTo`` then sets
the number of workers it should run, and ``Retire`` drains a worker (its sessions
migrate or are suspended away) before the loop's :class:`~framework.fleet.WorkerFleet`
offers it for closing (:meth:`WorkerFleet.to_close <framework.fleet.WorkerFleet.to_close>`).

Time can run faster than the wall clock (``time_scale``, for compressed trace replays):
the policies then see trace seconds (``now``, ``since``, latencies, the SLO) while the
tick runs every ``interval_s / time_scale`` wall seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, replace
from typing import Any, Protocol

from framework.control_actions import ActionRunner, ActuatorProtocol
from framework.control_settings import ControlSettings
from framework.control_snapshot import LatencyEstimator, build_snapshot, interval_row
from framework.fleet import WorkerFleet
from framework.registry import SessionRecord
from policies.semantics import (
    ActionRefused,
    Decision,
    SessionFacts,
    WorkerFacts,
    apply_order,
    check,
    clip_scale,
    decided,
)
from policies.types import (
    Action,
    BatchLatencyModel,
    Offload,
    Place,
    ScaleTo,
    SessionStatus,
    Snapshot,
    WorkerStatus,
)

__all__ = ["INTERVAL_COLUMNS", "ControlLoop", "Mechanisms"]

logger = logging.getLogger(__name__)

#: Decisions and interval rows kept for ``turboserve_control_log``.
LOG_LIMIT = 100_000
INTERVAL_COLUMNS = ("time_s", "n_workers", "n_active", "n_idle", "n_suspended", "migrations", "cost_gpu_s")


class Mechanisms(ActuatorProtocol, Protocol):
    """What the control loop needs of the cluster it steers.

    Live: :class:`~framework.scheduler_plugin.TurboserveScheduler`; in tests, an
    in-memory fake. The actions' side (``workers``, ``scalable``, ``scale``, ``place``,
    ``migrate``, ``suspend``, ``resume``, ``drain``, ``undrain``) is
    :class:`~framework.control_actions.ActuatorProtocol`, what the loop's ``ActionRunner``
    calls; the ``async`` methods raise on failure (the runner logs and counts it; the
    next tick sees the real state). Added here: what the snapshot and the checks read.
    """

    def records(self) -> Iterable[SessionRecord]:
        """The open sessions' records."""

    def admitting(self, session_id: str) -> bool:
        """Whether the runtime itself is placing the session (open or recovery in progress)."""

    def tiers(self) -> Collection[str]:
        """Offload tiers available (``disk`` needs a checkpoint store)."""

    # Optional (a runtime without them leaves them out; the last two are the ActionRunner's):
    #   parallel_groups() -> list[policies.types.ParallelGroup]   the groups of degree > 1
    #   worker_models() -> {address: frozenset | None}            model pools (None or absent: any model)
    #   warming() -> Collection[str]                               joined, model not loaded yet (shown STARTING)
    #   bursts() -> policies.types.BurstTally                      the sessions' bursts so far (wall seconds)
    #   closing() -> Collection[str]                               drained workers the cluster manager is closing
    #   async set_parallelism(workers, degree)                     FormGroup (len(workers)) / SplitGroup (1)


class _LiveFacts:
    """The cluster as :func:`policies.semantics.check` reads it, for one tick (or one action)."""

    def __init__(self, loop: "ControlLoop") -> None:
        m = loop.mechanisms
        self._loop = loop
        self._records = {r.session_id: r for r in m.records()}
        self._workers = set(m.workers())
        self._starting = loop.starting(self._workers)
        self._warming = loop.warming()
        self.min_workers = loop.settings.minimum
        self._group = {w: g.workers for g in loop.groups() for w in g.workers}

    def session(self, session_id: str) -> SessionFacts | None:
        rec = self._records.get(session_id)
        if rec is None:
            return None
        action = self._loop.actions.busy(session_id)
        busy = f"a {type(action).__name__}" if action is not None else None
        if busy is None and rec.status is SessionStatus.PENDING and self._loop.mechanisms.admitting(session_id):
            busy = "its admission by the runtime"
        return SessionFacts(
            rec.status, worker=rec.worker if rec.status.on_device else None, state_bytes=rec.state_bytes,
            offloaded=rec.status is SessionStatus.SUSPENDED, in_flight=busy,
        )

    def worker(self, address: str) -> WorkerFacts | None:
        if address in self._workers:
            retiring = address in self._loop.fleet.retiring
            if address in self._warming and not retiring:
                return WorkerFacts(WorkerStatus.STARTING)
            return WorkerFacts(WorkerStatus.DRAINING if retiring else WorkerStatus.RUNNING, drains_itself=retiring,
                               group=self._group.get(address, ()))
        if address.startswith("starting-") and address[len("starting-"):].isdigit():
            if int(address[len("starting-"):]) < self._starting:
                return WorkerFacts(WorkerStatus.STARTING)
        return None

    def serving(self) -> int:
        return self._loop.fleet.serving(self._workers) + self._starting

    def tiers(self) -> Collection[str]:
        return self._loop.mechanisms.tiers()


class ControlLoop:
    """The closed control loop (see the module docstring).

    Parameters
    ----------
    settings : ControlSettings
    mechanisms : Mechanisms
        The cluster it steers.
    clock : callable, optional
        Wall time in seconds (default :func:`time.time`).

    Examples
    --------
    >>> loop = ControlLoop(ControlSettings.from_config(), plugin)   # doctest: +SKIP
    >>> loop.start()                                               # doctest: +SKIP
    >>> await loop.tick()                                          # doctest: +SKIP
    [Decision(time_s=..., action='Place', session_id='a', worker='tcp://...', accepted=True, reason='pending: ...')]
    """

    def __init__(self, settings: ControlSettings, mechanisms: Mechanisms, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.mechanisms = mechanisms
        self.clock = clock
        self.policy = settings.build()
        self.state = self.policy.initial_state()
        self.latency = LatencyEstimator(settings.latency_points)
        self.decisions: deque[Decision] = deque(maxlen=LOG_LIMIT)
        self.intervals: deque[tuple] = deque(maxlen=LOG_LIMIT)
        self.counters: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.decide_s = 0.0
        self.decide_max_s = 0.0
        self._origin = clock()
        #: The workers asked for, running, draining and released (their cost, the start-up times).
        self.fleet = WorkerFleet(clock, mechanisms.workers())
        #: Carries the accepted actions out and tracks them until they finish.
        self.actions = ActionRunner(mechanisms, self.fleet, on_done=self.kick)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._last_tick: float | None = None
        # migrations counted so far, per session: a record the registry forgets (a closed
        # session) must not take its migrations back out of the interval rows
        self._migrations_seen: dict[str, int] = {r.session_id: r.migrations for r in mechanisms.records()}
        self._grouped: frozenset[str] = frozenset()  # workers in parallel groups at the last snapshot

    # ------------------------------------------------------------ events

    def kick(self) -> None:
        """Run the next tick now (sessions or workers changed)."""
        if self._wake is not None:
            self._wake.set()

    def observe(self, batch_size: int, latency_s: float, worker: str | None = None) -> None:
        """Fold one chunk's latency (from the workers' metrics stream) into the estimate.

        The estimate is the degree-1 curve (the policies scale it to a group's degree with
        ``Snapshot.parallel``), so a chunk stepped by a parallel group's ``worker`` (as of
        the last snapshot) is left out; None: not known, folded in.
        """
        if worker is not None and worker in self._grouped:
            return
        self.latency.add(batch_size, latency_s)

    def count_chunks(self, n: int, degraded: int = 0) -> None:
        """Count ``n`` chunks made, ``degraded`` of them by the quality valve (the snapshot's
        ``chunks_made`` and ``degraded_chunks``, against which the valve's budget is spent)."""
        self.counters["chunks"] += n
        self.counters["degraded_chunks"] += degraded

    def worker_added(self, address: str, ready: bool = True) -> None:
        """Record the worker's start (cost from now) and tick early.

        ``ready`` False: its model is still loading; the start-up time is recorded at
        :meth:`worker_ready`, so that it includes the load.
        """
        self.fleet.joined(address)
        if ready:
            self.worker_ready(address)
        else:
            self.kick()

    def worker_ready(self, address: str) -> None:
        """The worker's model is loaded (it now takes sessions): record the start-up time, tick early."""
        warming = self.warming()
        self.fleet.ready(sum(1 for a in self.mechanisms.workers() if a not in warming))
        self.kick()

    def worker_removed(self, address: str) -> None:
        """Record the worker's end (cost), forget its drain, tick early."""
        self.fleet.left(address)
        self.actions.cancel_drain(address)
        self.kick()

    # ------------------------------------------------------------ running

    def start(self) -> None:
        """Tick in the background on the running event loop (stop with :meth:`stop`)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        """Whether the loop ticks in the background."""
        return self._task is not None

    async def stop(self) -> None:
        """Stop ticking and cancel the actions and drains in flight."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        await self.actions.stop()
        if self._task is not None:
            try:
                await self._task
            except BaseException:
                pass
        self._task = None

    async def _run(self) -> None:
        period = self.settings.interval_s / self.settings.time_scale
        while not self._closing:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["failed_ticks"] += 1
                logger.warning("control tick failed; the loop goes on", exc_info=True)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), period)
            except asyncio.TimeoutError:
                pass
            # Debounce a burst of events (a trace instant opens many sessions at once).
            await asyncio.sleep(min(0.05, period))

    async def tick(self) -> list[Decision]:
        """One control step: snapshot, decide, apply. Returns this tick's decisions."""
        now = self.clock()
        snap = self.snapshot(now)
        seen, migrations = self._migrations_seen, 0
        for r in self.mechanisms.records():
            migrations += max(r.migrations - seen.get(r.session_id, 0), 0)
            seen[r.session_id] = max(r.migrations, seen.get(r.session_id, 0))
        dt = 0.0 if self._last_tick is None else now - self._last_tick
        prev = self.intervals[-1][1] if self.intervals else None
        self.intervals.append(interval_row(now, snap, dt, prev, migrations))
        self._last_tick = now
        t0 = time.perf_counter()
        actions, self.state = self.policy.decide(snap, self.state)
        spent = time.perf_counter() - t0
        self.decide_s += spent
        self.decide_max_s = max(self.decide_max_s, spent)
        self.counters["ticks"] += 1
        out: list[Decision] = []
        for action in apply_order(actions):
            out.extend(self.apply(action, now))
        return out

    def apply(self, action: Action, now: float | None = None) -> list[Decision]:
        """Check ``action`` with :func:`policies.semantics.check` and apply it, or refuse it.

        Returns its decisions (two for a clipped ``ScaleTo``: the refusal, then the clipped target).
        """
        now = self.clock() if now is None else now
        out: list[Decision] = []
        try:
            if isinstance(action, ScaleTo):
                n, clipped = clip_scale(action, self.settings.minimum, self.settings.maximum)
                if clipped is not None:
                    out.append(self._refuse(now, action, clipped, worker=""))
                reason = self.actions.scale_to(n, action)
                where = str(n)
            else:
                check(action, _LiveFacts(self))
                reason, where = self.actions.start(action), None
        except ActionRefused as exc:
            out.append(self._refuse(now, action, exc, worker=str(n) if isinstance(action, ScaleTo) else None))
        else:
            self.counters[f"accepted:{type(action).__name__}"] += 1
            out.append(decided(now, action, True, reason, where))
            self.decisions.append(out[-1])
        return out

    def _refuse(self, now: float, action: Action, exc: ActionRefused, worker: str | None = None) -> Decision:
        self.refused[exc.refusal.value] += 1
        logger.info("refused %r: %s", action, exc.reason)
        decision = decided(now, action, False, exc.reason, worker)
        self.decisions.append(decision)
        return decision

    # ------------------------------------------------------------ optional mechanisms

    def groups(self) -> list[Any]:
        """The runtime's parallel groups now (none when it has no such mechanism)."""
        groups = getattr(self.mechanisms, "parallel_groups", None)
        return [] if groups is None else list(groups())

    def warming(self) -> frozenset[str]:
        """Workers that joined and still load their model (none when the runtime does not say)."""
        warming = getattr(self.mechanisms, "warming", None)
        return frozenset() if warming is None else frozenset(warming())

    def worker_models(self) -> dict[str, Any]:
        """The models each worker serves (none named when the runtime has no model pools)."""
        models = getattr(self.mechanisms, "worker_models", None)
        return {} if models is None else dict(models())

    # ------------------------------------------------------------ views

    def starting(self, workers: Collection[str] | None = None) -> int:
        """Workers asked for and not arrived yet (the target beyond those serving)."""
        if not self.mechanisms.scalable():
            return 0
        return self.fleet.starting(self.mechanisms.workers() if workers is None else workers)

    def snapshot(self, now: float | None = None, max_batch: int | None = None) -> Snapshot:
        """The policies' view of the cluster now (see :func:`~framework.control_snapshot.build_snapshot`).

        ``max_batch`` replaces the settings' (admission's per-worker session cap).
        """
        now = self.clock() if now is None else now
        s = self.settings
        valve_batch = 0
        if max_batch is None:
            max_batch = s.max_batch
            if 0 < s.valve_batch < s.max_batch:  # the quality valve: place for b*, the engine's cap above it
                max_batch, valve_batch = s.valve_batch, s.max_batch
        live = sorted(self.mechanisms.workers())
        snap = build_snapshot(
            now_s=self._trace_s(now),
            workers=[(a, self.fleet.joined_at(a, now)) for a in live],
            retiring=self.fleet.retiring,
            starting=self.starting(live),
            records=self.mechanisms.records(),
            admitting=self.mechanisms.admitting,
            in_flight=self.actions.in_flight(),
            clock=self._trace_s,
            time_scale=s.time_scale,
            slo_s=s.slo_s,
            latency=self.latency_model(),
            max_batch=max_batch,
            valve_batch=valve_batch,
            memory_bytes=s.worker_memory_bytes,
            min_workers=s.minimum,
            max_workers=s.maximum,
            worker_startup_s=s.worker_startup_s,
            warming=self.warming(),
            worker_models=self.worker_models(),
            parallel=s.parallel,
            chunks_made=self.counters["chunks"],
            degraded_chunks=self.counters["degraded_chunks"],
        )
        bursts = getattr(self.mechanisms, "bursts", None)
        if bursts is not None:
            tally = bursts()
            snap = replace(snap, bursts_ended=tally.ended, burst_exposure_s=tally.exposure_s(now) * s.time_scale)
        groups = tuple(self.groups())
        self._grouped = frozenset(a for g in groups for a in g.workers)
        return replace(snap, groups=groups) if groups else snap

    def choose(self, session_id: str, exclude: Collection[str] = (), max_sessions: int | None = None) -> str | None:
        """Admission: the worker the placement policy gives ``session_id`` now, or None.

        The session is shown as pending; ``exclude`` workers are left out (full, draining,
        failed); ``max_sessions`` caps the active sessions a worker takes at open (the
        ticks then balance the batches). The placement policy's state moves on as in a tick.
        """
        snap = self.snapshot(max_batch=max_sessions)
        view = snap.session(session_id)
        if view is None:
            return None
        pending = replace(view, status=SessionStatus.PENDING, worker=None)
        snap = replace(snap, workers=tuple(w for w in snap.workers if w.address not in exclude),
                       sessions=tuple(pending if v.session_id == session_id else v for v in snap.sessions))
        # the placement policy alone, on the view a tick gives it (parallel groups as units)
        actions, self.state = self.policy.admit(snap, self.state)
        chosen = None
        for action in actions:
            if isinstance(action, Place) and action.session_id == session_id:
                chosen = action.worker
                # logged like a tick's decision (the runtime does the placing itself)
                self.counters["accepted:Place"] += 1
                self.decisions.append(decided(self.clock(), action, True, f"admission: {action.cause}", None))
        if chosen is not None:
            # An idle session that gave its kept slot up for this one (placement's
            # keep_idle_slots) leaves the device now, as in a tick.
            for action in actions:
                if isinstance(action, Offload):
                    self.apply(action)
        return chosen

    def latency_model(self) -> BatchLatencyModel:
        """The batch latency model the policies see (trace seconds)."""
        if self.settings.measure:
            return self.latency.model(self.settings.time_scale)
        return LatencyEstimator(self.settings.latency_points).model(self.settings.time_scale)

    def stats(self) -> dict[str, Any]:
        """Counters: ticks, decision time, accepted actions by type, refusals by category."""
        ticks = self.counters["ticks"]
        return {
            "ticks": ticks,
            "failed_ticks": self.counters["failed_ticks"],
            "decide_ms_mean": 1e3 * self.decide_s / ticks if ticks else None,
            "decide_ms_max": 1e3 * self.decide_max_s,
            "accepted": {k[len("accepted:"):]: v for k, v in self.counters.items() if k.startswith("accepted:")},
            "failed_actions": self.actions.failed,
            "refused": dict(sorted(self.refused.items())),
            "target": self.fleet.target,
            "retiring": sorted(self.fleet.retiring),
            "autoscaler_attached": self.mechanisms.scalable(),
            "latency": asdict(self.latency_model()),
            "startup_s": list(self.fleet.startup_s),
            "settings": asdict(self.settings),
        }

    def log(self) -> dict[str, Any]:
        """The decision log, the interval rows and the worker lifetimes, as plain lists."""
        return {
            "decisions": [d._asdict() for d in self.decisions],
            "intervals": [dict(zip(INTERVAL_COLUMNS, row)) for row in self.intervals],
            "workers": self.fleet.log(),
        }

    def _trace_s(self, wall: float) -> float:
        return (wall - self._origin) * self.settings.time_scale
