"""The closed control loop on the scheduler: snapshot -> shared policies -> mechanisms.

:class:`Controller` is a Dask ``SchedulerPlugin`` that sits beside the serving plugin
(:class:`~framework.scheduler_plugin.TurboserveScheduler`, found by name on the
scheduler). Every tick (``turboserve.control.interval``), and early on events (a worker
joins or leaves, a session opens, closes, pauses, suspends or resumes), it

1. builds the :class:`~policies.types.Snapshot` from the session registry, the workers
   the scheduler knows and a :class:`LatencyEstimator` fed by the workers' chunk
   metrics (or the configured profile points);
2. calls the placement, offload and autoscaling policies together
   (:class:`policies.combined.Combined`, built with :func:`policies.registry.make`);
3. applies every action with the runtime's mechanisms (``place``, ``migrate``,
   ``suspend``, ``resume``, ``drain``), each session action as its own task so that a
   slow migration never blocks the next tick.

An action that cannot be applied (unknown or closed session, a worker that left, a
scale-in below the minimum, ...) is refused with a logged reason and counted; a failing
tick is logged with ``exc_info`` and the loop goes on. Every decision lands in a
bounded log with the simulator's columns (``time_s, action, session_id, worker,
accepted, reason``), so a live run and a simulated one compare row by row.

Autoscaling is advisory until a :class:`framework.adaptive.SessionAdaptive` polls the
target (``turboserve_control_target``): ``ScaleTo`` then sets the number of workers the
cluster manager should run, and ``Retire`` drains a worker (its sessions migrate or are
suspended away) before :meth:`Controller.workers_to_close` offers it for closing.

Time can run faster than the wall clock (``time_scale``, for compressed trace replays):
the policies then see trace seconds (``now``, ``since``, latencies, the SLO) while the
tick runs every ``interval_s / time_scale`` wall seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from framework.control_settings import ControlSettings, default_policy_params, profile_points
from framework.control_snapshot import LatencyEstimator, SnapshotBuilder
from policies.types import Action, Migrate, Offload, Place, Reject, Resume, Retire, ScaleTo, SessionStatus

__all__ = [
    "DECISION_COLUMNS", "INTERVAL_COLUMNS", "ControlSettings", "Controller", "Decision", "LatencyEstimator",
    "Refused", "default_policy_params", "profile_points",
]

logger = logging.getLogger(__name__)

#: Name of the serving plugin on the scheduler (``TurboserveScheduler.name``).
RUNTIME_PLUGIN = "turboserve"
#: Decisions and interval rows kept for ``turboserve_control_log``.
LOG_LIMIT = 100_000
#: Handlers of the serving plugin after which the controller ticks early.
_EVENT_HANDLERS = ("turboserve_open", "turboserve_close", "turboserve_pause", "turboserve_suspend",
                   "turboserve_resume", "turboserve_locate")
_ACTIVE, _IDLE, _PENDING = SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.PENDING
_SUSPENDED, _MIGRATING = SessionStatus.SUSPENDED, SessionStatus.MIGRATING
DECISION_COLUMNS = ("time_s", "action", "session_id", "worker", "accepted", "reason")
INTERVAL_COLUMNS = ("time_s", "n_workers", "n_active", "n_idle", "n_suspended", "migrations", "cost_gpu_s")


@dataclass(frozen=True, slots=True)
class Decision:
    """One applied or refused action (the simulator's decision-log columns)."""

    time_s: float  # wall clock (time.time())
    action: str
    session_id: str
    worker: str
    accepted: bool
    reason: str


class Refused(Exception):
    """An action the controller will not apply; ``category`` counts it in the stats."""

    def __init__(self, reason: str, category: str) -> None:
        super().__init__(reason)
        self.reason, self.category = reason, category


class Controller(SnapshotBuilder, SchedulerPlugin):
    """The closed control loop (see the module docstring).

    Parameters
    ----------
    settings : ControlSettings

    Examples
    --------
    >>> client.register_plugin(Controller(ControlSettings.from_config()))     # doctest: +SKIP
    >>> client.sync(client.scheduler.turboserve_control_stats)["ticks"]        # doctest: +SKIP
    3
    """

    name = "turboserve-control"
    idempotent = True

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.scheduler: Any = None
        self.policy = settings.build()
        self.state = self.policy.initial_state()
        self.latency = LatencyEstimator(settings.latency_points)
        self.target: int | None = None  # workers the cluster manager should run
        self.retiring: set[str] = set()  # Retire accepted: draining, then closed by the Adaptive
        self.drained: set[str] = set()  # drain finished: ready to close
        self.decisions: deque[Decision] = deque(maxlen=LOG_LIMIT)
        self.intervals: deque[tuple] = deque(maxlen=LOG_LIMIT)
        self.worker_log: dict[str, list[float | None]] = {}  # address -> [added, removed]
        self.counters: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.decide_s = 0.0
        self.decide_max_s = 0.0
        self.adaptive_seen: float | None = None  # wall time of the last target poll
        self._inflight: dict[str, tuple[Action, asyncio.Task]] = {}
        self._drains: dict[str, asyncio.Task] = {}
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._origin = time.time()
        self._last_tick: float | None = None
        self._last_migrations = 0
        self._chunk_seq = -1
        self._scaled_at: float | None = None
        self.startup_s: list[float] = []

    # ------------------------------------------------------------ plugin hooks

    async def start(self, scheduler: Any) -> None:
        """Install the handlers, watch the serving plugin's events, start the loop."""
        self.scheduler = scheduler
        self._wake = asyncio.Event()
        self._origin = time.time()
        now = time.time()
        for addr in scheduler.workers:
            self.worker_log.setdefault(addr, [now, None])
        scheduler.handlers.update(
            {
                "turboserve_control_target": self.adaptive_target,
                "turboserve_control_to_close": self.workers_to_close,
                "turboserve_control_stats": self.stats,
                "turboserve_control_log": self.log,
                "turboserve_control_kick": self.kick,
            }
        )
        self._watch_events()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def before_close(self) -> None:
        """Stop deciding: the cluster is going away."""
        await self._stop()

    async def close(self) -> None:
        """Stop the loop and cancel actions in flight."""
        await self._stop()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Record the worker's start (cost) and tick early."""
        now = time.time()
        self.worker_log[worker] = [now, None]
        if self._scaled_at is not None:
            self.startup_s.append(now - self._scaled_at)
            if self.target is None or len(self._live_workers()) >= self.target:
                self._scaled_at = None
        self.kick()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Record the worker's end (cost) and tick early."""
        entry = self.worker_log.get(worker)
        if entry is not None and entry[1] is None:
            entry[1] = time.time()
        self.retiring.discard(worker)
        self.drained.discard(worker)
        task = self._drains.pop(worker, None)
        if task is not None:
            task.cancel()
        self.kick()

    # ------------------------------------------------------------ handlers

    def kick(self) -> None:
        """Run the next tick now (events: sessions and workers changed)."""
        if self._wake is not None:
            self._wake.set()

    def adaptive_target(self) -> int:
        """The workers the autoscaling policy wants (the current count before it decided).

        Called by :class:`framework.adaptive.SessionAdaptive`; a poll marks the
        autoscaler as attached, which lets ``ScaleTo`` and ``Retire`` take effect.
        """
        first = self.adaptive_seen is None
        self.adaptive_seen = time.time()
        if first:
            self.kick()
        live = len(self._live_workers())
        return live if self.target is None else self.target

    def workers_to_close(self, target: int | None = None) -> list[Any]:
        """Names of drained workers that hold no session any more (for the Adaptive)."""
        runtime = self._runtime()
        busy = {r.worker for r in runtime.registry.records()} if runtime is not None else set()
        names = []
        for addr in sorted(self.drained):
            ws = self.scheduler.workers.get(addr)
            if ws is not None and addr not in busy and not ws.actors:
                names.append(ws.name)
        return names

    def stats(self) -> dict[str, Any]:
        """Counters: ticks, decision time, accepted actions by type, refusals by reason."""
        ticks = self.counters["ticks"]
        return {
            "ticks": ticks,
            "failed_ticks": self.counters["failed_ticks"],
            "decide_ms_mean": 1e3 * self.decide_s / ticks if ticks else None,
            "decide_ms_max": 1e3 * self.decide_max_s,
            "accepted": {k[len("accepted:"):]: v for k, v in self.counters.items() if k.startswith("accepted:")},
            "failed_actions": self.counters["failed_actions"],
            "refused": dict(sorted(self.refused.items())),
            "target": self.target,
            "retiring": sorted(self.retiring),
            "autoscaler_attached": self._autoscaler_attached(),
            "latency": asdict(self._latency_model()),
            "startup_s": list(self.startup_s),
            "settings": asdict(self.settings),
        }

    def log(self) -> dict[str, Any]:
        """The decision log, the interval rows and the worker lifetimes, as plain lists."""
        return {
            "decisions": [asdict(d) for d in self.decisions],
            "intervals": [dict(zip(INTERVAL_COLUMNS, row)) for row in self.intervals],
            "workers": [{"worker": w, "started_s": a, "released_s": b} for w, (a, b) in self.worker_log.items()],
        }

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
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
        runtime = self._runtime()
        if runtime is None:
            return []
        now = time.time()
        self._read_metrics(runtime)
        snap = self.snapshot(now)
        self._record_interval(now, snap, runtime)
        t0 = time.perf_counter()
        actions, self.state = self.policy.decide(snap, self.state)
        spent = time.perf_counter() - t0
        self.decide_s += spent
        self.decide_max_s = max(self.decide_max_s, spent)
        self.counters["ticks"] += 1
        # Retire before ScaleTo: the target then only counts what the retirements leave.
        ordered = [a for a in actions if not isinstance(a, ScaleTo)] + [a for a in actions if isinstance(a, ScaleTo)]
        return [self.apply(a, now) for a in ordered]

    def apply(self, action: Action, now: float | None = None) -> Decision:
        """Apply one action with the runtime's mechanisms, or refuse it with a reason."""
        now = time.time() if now is None else now
        sid = getattr(action, "session_id", "")
        where = getattr(action, "worker", None) or getattr(action, "target", None) or ""
        if isinstance(action, ScaleTo):
            where = str(action.n)
        try:
            reason = self._apply(action)
        except Refused as exc:
            self.refused[exc.category] += 1
            logger.info("refused %r: %s", action, exc.reason)
            decision = Decision(now, type(action).__name__, sid, where, False, exc.reason)
        else:
            self.counters[f"accepted:{type(action).__name__}"] += 1
            decision = Decision(now, type(action).__name__, sid, where, True, reason or action.cause)
        self.decisions.append(decision)
        return decision


    def _apply(self, action: Action) -> str | None:
        runtime = self._runtime()
        if runtime is None:
            raise Refused("the serving plugin is not installed on this scheduler", "no-runtime")
        if isinstance(action, ScaleTo):
            return self._scale_to(action)
        if isinstance(action, Retire):
            return self._retire(action, runtime)
        if isinstance(action, Reject):
            raise Refused("live admission follows turboserve.admission.on-full; the runtime refuses or queues",
                          "reject-by-runtime")
        sid = action.session_id
        rec = self._record(runtime, sid)
        if sid in self._inflight:
            raise Refused(f"session {sid!r} has a {type(self._inflight[sid][0]).__name__} in flight", "in-flight")
        status = rec.status
        if isinstance(action, Place):
            self._check_target(action.worker)
            if status is not _PENDING:
                raise Refused(f"session {sid!r} is {status.value}, not pending", "place-not-pending")
            if runtime.admitting(sid):
                raise Refused(f"session {sid!r} is being admitted by the runtime", "admission-in-progress")
            coro = runtime.place(sid, action.worker)
        elif isinstance(action, Migrate):
            if rec.worker in self.retiring and "drain" in action.cause:
                raise Refused(f"worker {rec.worker} is being drained by the runtime", "drained-by-runtime")
            if status not in (_ACTIVE, _IDLE) or rec.worker != action.source:
                raise Refused(f"session {sid!r} is {status.value} on {rec.worker}, not on {action.source}",
                              "migrate-bad-source")
            if action.target == action.source:
                raise Refused("source and target are the same worker", "migrate-same-worker")
            self._check_target(action.target)
            coro = runtime.migrate(sid, action.target)
        elif isinstance(action, Offload):
            if rec.worker in self.retiring and "drain" in action.cause:
                raise Refused(f"worker {rec.worker} is being drained by the runtime", "drained-by-runtime")
            if status is not _IDLE:
                raise Refused(f"cannot offload session {sid!r}: it is {status.value}, not idle", "offload-not-idle")
            if action.tier == "disk" and not runtime.settings.store:
                raise Refused("offload to disk needs turboserve.state.store", "offload-no-store")
            coro = runtime.suspend(sid, action.tier)
        elif isinstance(action, Resume):
            if status is not _SUSPENDED:
                raise Refused(f"session {sid!r} is {status.value}, not suspended", "resume-not-suspended")
            self._check_target(action.worker)
            coro = runtime.resume(sid, action.worker)
        else:
            raise Refused(f"unknown action type {type(action).__name__}", "unknown-action")
        task = asyncio.get_running_loop().create_task(self._run_action(action, coro))
        self._inflight[sid] = (action, task)
        return None

    async def _run_action(self, action: Action, coro: Any) -> None:
        sid = getattr(action, "session_id", "")
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Accepted, then failed in the mechanism (the session closed meanwhile, a
            # transfer broke): logged and counted; the next tick sees the real state.
            self.counters["failed_actions"] += 1
            logger.warning("applying %r failed: %r", action, exc, exc_info=True)
        finally:
            entry = self._inflight.get(sid)
            if entry is not None and entry[0] is action:
                del self._inflight[sid]
            self.kick()

    def _scale_to(self, action: ScaleTo) -> str:
        if not self._autoscaler_attached():
            raise Refused("no autoscaler attached (start one with server.adapt() or Server.local(adaptive=True))",
                          "no-autoscaler")
        s = self.settings
        n = min(max(action.n, s.minimum), s.maximum)
        if n != action.n:
            self.target = n
            raise Refused(f"target {action.n} outside [{s.minimum}, {s.maximum}]; clipped to {n}",
                          "scale-out-of-bounds")
        if self.target is None or n > self.target:
            self._scaled_at = time.time()
        self.target = n
        kept = self._keep_drained(n)
        return f"{action.cause} (target {n})" + (f"; kept drained {kept} in service" if kept else "")

    def _keep_drained(self, n: int) -> list[str]:
        """On a scale-out, put drained workers not yet closed back in service first.

        They would otherwise sit empty (the runtime keeps them draining) while the
        cluster manager starts new workers next to them.
        """
        serving = sum(1 for a in self._live_workers() if a not in self.retiring)
        kept = []
        runtime = self._runtime()
        for addr in sorted(self.drained):
            if serving >= n:
                break
            self.drained.discard(addr)
            self.retiring.discard(addr)
            runtime.undrain(addr)
            kept.append(addr)
            serving += 1
        return kept

    def _retire(self, action: Retire, runtime: Any) -> str | None:
        if not self._autoscaler_attached():
            raise Refused("no autoscaler attached to close the worker", "no-autoscaler")
        addr = action.worker
        if addr.startswith("starting-"):
            return "cancel a requested worker (the target covers it)"
        if addr not in self.scheduler.workers:
            raise Refused(f"worker {addr!r} is not in the cluster (it left)", "retire-no-such-worker")
        if addr in self.retiring:
            raise Refused(f"worker {addr!r} is already draining", "retire-already-draining")
        remaining = sum(1 for a in self._live_workers() if a not in self.retiring) - 1
        if remaining < self.settings.minimum:
            raise Refused(f"retiring {addr} would leave {remaining} workers, below the minimum "
                          f"{self.settings.minimum}", "retire-below-minimum")
        self.retiring.add(addr)
        self._drains[addr] = asyncio.get_running_loop().create_task(self._drain(addr, runtime))
        return None

    async def _drain(self, addr: str, runtime: Any) -> None:
        try:
            # Wait for actions in flight that touch this worker (a migration into it).
            pending = [t for a, t in self._inflight.values() if getattr(a, "target", None) == addr
                       or getattr(a, "worker", None) == addr]
            if pending:
                await asyncio.wait(pending, timeout=30)
            await runtime.drain(addr, retire=False)
            self.drained.add(addr)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters["failed_actions"] += 1
            logger.warning("draining %s failed; it stays in service: %r", addr, exc, exc_info=True)
            self.retiring.discard(addr)
            # The runtime marked it draining when the drain began; give it back.
            runtime.undrain(addr)
        finally:
            self._drains.pop(addr, None)
            self.kick()

    # ------------------------------------------------------------ helpers

    def _runtime(self) -> Any:
        return self.scheduler.plugins.get(RUNTIME_PLUGIN) if self.scheduler is not None else None

    def _live_workers(self) -> list[str]:
        return sorted(self.scheduler.workers) if self.scheduler is not None else []

    def _autoscaler_attached(self) -> bool:
        # Sticky: an Adaptive busy starting workers stops polling for a while.
        return self.adaptive_seen is not None

    @staticmethod
    def _record(runtime: Any, session_id: str) -> Any:
        try:
            rec = runtime.registry.get(session_id)
        except Exception:
            raise Refused(f"no session {session_id!r}", "unknown-session") from None
        if rec.status is SessionStatus.CLOSED:
            raise Refused(f"session {session_id!r} is closed", "session-closed")
        return rec

    def _check_target(self, addr: str) -> None:
        if addr not in self.scheduler.workers:
            raise Refused(f"worker {addr!r} is not in the cluster (it left or never joined)", "no-such-worker")
        if addr in self.retiring:
            raise Refused(f"worker {addr!r} is draining", "worker-draining")

    def _watch_events(self) -> None:
        """Tick early after the serving plugin's session handlers (open, close, ...)."""
        for op in _EVENT_HANDLERS:
            handler = self.scheduler.handlers.get(op)
            if handler is None or getattr(handler, "_turboserve_watched", False):
                continue
            self.scheduler.handlers[op] = _kicking(handler, self.kick)

    async def _stop(self) -> None:
        self._closing = True
        tasks = [t for _, t in self._inflight.values()] + list(self._drains.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass
        self._inflight.clear()
        self._drains.clear()
        self._loop_task = None


def _kicking(handler: Any, kick: Any) -> Any:
    """``handler`` wrapped to call ``kick()`` after it returns (sync or async)."""
    import functools
    import inspect

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            finally:
                kick()
    else:
        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                kick()
    wrapped._turboserve_watched = True  # type: ignore[attr-defined]
    return wrapped
