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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from policies.combined import Combined
from policies.registry import make
from policies.types import (
    Action,
    BatchLatencyModel,
    Migrate,
    Offload,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

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


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="s"))


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The resolved configuration of the control loop (build with :meth:`from_config`).

    Parameters
    ----------
    interval_s
        Control tick in (trace) seconds (``turboserve.control.interval``).
    placement, autoscaling, offload
        Registry names of the three policies (``turboserve.policies.*``).
    placement_params, autoscaling_params, offload_params
        Keyword parameters of each policy (defaults from ``turboserve.control.*`` and
        ``turboserve.autoscale.*`` for the built-in names).
    minimum, maximum
        Bounds on the number of workers (``turboserve.autoscale.minimum/maximum``).
    slo_s
        Per-chunk latency target in (trace) seconds; None: the median playback period
        of the open sessions (``turboserve.slo-s``).
    max_batch
        Most sessions in one coalesced step (``turboserve.engine.max-batch``).
    worker_memory_bytes
        Device memory a policy may hand out per worker.
    latency_points
        ``((batch_size, step_s), ...)`` in wall seconds: the latency model used until
        (or, with ``measure=False``, instead of) live measurements. Default: the
        preset's measured CPU profile (``kernels/profiles/<model>-cpu.csv``) when it
        exists, else one step of 0.1 s.
    measure
        Learn the latency model from the workers' recent chunks.
    worker_startup_s
        Expected wall seconds from a scale-up to a usable worker (for the policies).
    time_scale
        Trace seconds per wall second (1: real time).
    """

    interval_s: float = 1.0
    placement: str = "migration-aware"
    autoscaling: str = "load-driven"
    offload: str = "idle-timeout"
    placement_params: dict[str, Any] = field(default_factory=dict)
    autoscaling_params: dict[str, Any] = field(default_factory=dict)
    offload_params: dict[str, Any] = field(default_factory=dict)
    minimum: int = 1
    maximum: int = 8
    slo_s: float | None = None
    max_batch: int = 8
    worker_memory_bytes: int = 80 * 1024**3
    latency_points: tuple[tuple[int, float], ...] = ((1, 0.1),)
    measure: bool = True
    worker_startup_s: float = 5.0
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"control.interval must be > 0 seconds, got {self.interval_s!r}")
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError(f"need 0 <= autoscale.minimum <= autoscale.maximum, got {self.minimum}, {self.maximum}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0 (trace seconds per wall second), got {self.time_scale!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch!r}")
        BatchLatencyModel(*zip(*self.latency_points))  # validates the points

    @classmethod
    def from_config(cls, **overrides: Any) -> "ControlSettings":
        """Read ``turboserve.*`` (``framework.config``); non-None ``overrides`` win.

        Policy parameters given in ``overrides`` are merged over the configured ones.
        """
        from framework import config

        placement = overrides.pop("placement", None) or config.get("policies.placement")
        autoscaling = overrides.pop("autoscaling", None) or config.get("policies.autoscaling")
        offload = overrides.pop("offload", None) or config.get("policies.offload")
        slo = config.get("slo-s")
        max_batch = int(overrides.get("max_batch") or config.get("engine.max-batch"))
        memory = int(float(config.get("simulator.gpu-memory-bytes")))
        params = default_policy_params(placement, autoscaling, offload, max_batch=max_batch, worker_memory=memory)
        for kind in ("placement", "autoscaling", "offload"):
            params[kind].update(overrides.pop(f"{kind}_params", None) or {})
        values: dict[str, Any] = {
            "interval_s": _seconds(config.get("control.interval")),
            "placement": placement,
            "autoscaling": autoscaling,
            "offload": offload,
            "placement_params": params["placement"],
            "autoscaling_params": params["autoscaling"],
            "offload_params": params["offload"],
            "minimum": int(config.get("autoscale.minimum")),
            "maximum": int(config.get("autoscale.maximum")),
            "slo_s": None if slo is None else float(slo),
            "max_batch": max_batch,
            "worker_memory_bytes": memory,
        }
        points = profile_points(str(config.get("model")))
        if points:
            values["latency_points"] = points
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "interval_s" in overrides and overrides["interval_s"] is not None:
            values["interval_s"] = _seconds(overrides["interval_s"])
        return cls(**values)

    def build(self) -> Combined:
        """The three policies, deciding together on one capacity ledger."""
        return Combined(
            make("placement", self.placement, **self.placement_params),
            make("autoscaling", self.autoscaling, **self.autoscaling_params),
            make("offload", self.offload, **self.offload_params),
        )

    @property
    def label(self) -> str:
        """``placement+autoscaling+offload``, the policy label of results."""
        return f"{self.placement}+{self.autoscaling}+{self.offload}"


def profile_points(model: str, folder: Any = None) -> tuple[tuple[int, float], ...]:
    """``(batch_size, step_s)`` of ``kernels/profiles/<model>-cpu.csv`` (median per batch), or ``()``.

    The measured CPU profile of a preset, used as the latency model until live
    chunks have been measured. Rows at the smallest ``context_frames`` only;
    ``folder`` replaces ``kernels/profiles``.
    """
    import csv
    import pathlib
    import statistics

    root = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "profiles" if folder is None else folder
    path = pathlib.Path(root) / f"{model}-cpu.csv"
    if not path.is_file():
        return ()
    with path.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.lstrip().startswith("#"))]
    if not rows or not {"batch_size", "step_s"} <= set(rows[0]):
        logger.warning("latency profile %s lacks batch_size,step_s columns; ignored", path)
        return ()
    ctx = [float(r.get("context_frames") or 0) for r in rows]
    by_batch: dict[int, list[float]] = {}
    for r, c in zip(rows, ctx):
        if c == min(ctx):
            by_batch.setdefault(int(r["batch_size"]), []).append(float(r["step_s"]))
    return tuple((b, statistics.median(v)) for b, v in sorted(by_batch.items()))


def default_policy_params(
    placement: str, autoscaling: str, offload: str, *, max_batch: int, worker_memory: int
) -> dict[str, dict[str, Any]]:
    """Parameters of the built-in policies from ``turboserve.control.*`` / ``autoscale.*``.

    The same mapping the simulator's paper sets use, so that a live run and a simulated
    one with the same configuration run the same policies.
    """
    from framework import config

    out: dict[str, dict[str, Any]] = {"placement": {}, "autoscaling": {}, "offload": {}}
    if placement == "migration-aware":
        out["placement"]["min_gain"] = float(config.get("control.migration-gain"))
    if autoscaling == "hpa":
        out["autoscaling"] = {
            "target_utilisation": float(config.get("autoscale.target-utilisation")),
            "tolerance": float(config.get("autoscale.tolerance")),
            "downscale_stabilisation_s": float(config.get("autoscale.downscale-stabilisation-s")),
            "upscale_delay_s": float(config.get("autoscale.upscale-delay-s")),
        }
    elif autoscaling == "load-driven":
        out["autoscaling"] = {
            "target_utilisation": float(config.get("autoscale.target-utilisation")),
            "downscale_delay_s": float(config.get("autoscale.downscale-stabilisation-s")),
            "worker_max_batch": int(max_batch),
            "worker_memory_bytes": int(worker_memory),
        }
    if offload == "idle-timeout":
        out["offload"]["idle_s"] = float(config.get("control.idle-offload-s"))
    return out


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


class LatencyEstimator:
    """A :class:`BatchLatencyModel` learnt from recent chunk latencies per batch size.

    A chunk's latency is its step time plus any wait for the step before it, so the
    smallest recent latency at a batch size estimates that size's step time. Batch
    sizes never seen come from the fallback points; the curve is kept non-decreasing.

    Examples
    --------
    >>> est = LatencyEstimator(((1, 0.1), (4, 0.3)))
    >>> est.add(1, 0.05); est.add(1, 0.07)
    >>> est.model().predict(1)
    0.05
    """

    def __init__(self, fallback: tuple[tuple[int, float], ...], window: int = 32) -> None:
        self.fallback = tuple(sorted((int(b), float(s)) for b, s in fallback))
        self._window = window
        self._seen: dict[int, deque[float]] = {}
        self._cached: BatchLatencyModel | None = None

    def add(self, batch_size: int, latency_s: float) -> None:
        """Fold one chunk's latency in."""
        q = self._seen.get(batch_size)
        if q is None:
            q = self._seen[batch_size] = deque(maxlen=self._window)
        q.append(float(latency_s))
        self._cached = None

    def model(self, scale: float = 1.0) -> BatchLatencyModel:
        """The current model, times multiplied by ``scale``."""
        if self._cached is None:
            points = {b: min(q) for b, q in self._seen.items() if q}
            top = max(points, default=0)
            for b, s in self.fallback:
                if b > top:
                    points[b] = s
            xs = sorted(points)
            ys, best = [], 0.0
            for b in xs:
                best = max(best, points[b])
                ys.append(best)
            self._cached = BatchLatencyModel(tuple(xs), tuple(ys))
        if scale == 1.0:
            return self._cached
        return BatchLatencyModel(self._cached.batch_sizes, tuple(s * scale for s in self._cached.step_s))


class Controller(SchedulerPlugin):
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

    # ------------------------------------------------------------ snapshot

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The policies' view of the live cluster, in (scaled) trace seconds.

        Workers being retired are DRAINING; workers asked for but not yet arrived are
        STARTING placeholders (``starting-<i>``). A session with an action in flight is
        shown as that action leaves it: MIGRATING to its target, SUSPENDED, or IDLE on
        the worker it is resumed to.
        """
        now = time.time() if now is None else now
        runtime = self._runtime()
        s = self.settings
        scale = s.time_scale
        live = self._live_workers()
        workers = [
            WorkerView(addr, WorkerStatus.DRAINING if addr in self.retiring else WorkerStatus.RUNNING,
                       memory_bytes=s.worker_memory_bytes, max_batch=s.max_batch,
                       started_s=self._clock(self.worker_log.get(addr, [now])[0]))
            for addr in live
        ]
        if self.target is not None and self._autoscaler_attached():
            running = sum(1 for addr in live if addr not in self.retiring)
            for i in range(max(0, self.target - running)):
                workers.append(WorkerView(f"starting-{i}", WorkerStatus.STARTING, s.worker_memory_bytes, s.max_batch,
                                          self._clock(now)))
        known = set(live)
        sessions: list[SessionView] = []
        periods: list[float] = []
        for rec in runtime.registry.records() if runtime is not None else ():
            view = rec.view()
            periods.append(rec.chunk_period_s)
            if view.status is _PENDING and self._admitting(runtime, rec.session_id):
                # The runtime's admission is placing it (open or recovery): demand only.
                view = replace(view, state_bytes=0)
            view = replace(
                view,
                since_s=self._clock(view.since_s),
                recent_latency_s=None if view.recent_latency_s is None else view.recent_latency_s * scale,
            )
            if view.worker is not None and view.worker not in known:
                continue
            sessions.append(self._projected(view))
        slo = s.slo_s
        if slo is None:
            periods.sort()
            slo = periods[len(periods) // 2] if periods else 1.0
        return Snapshot(
            now_s=self._clock(now),
            workers=tuple(workers),
            sessions=tuple(sessions),
            slo_s=slo,
            latency=self._latency_model(),
            min_workers=s.minimum,
            max_workers=s.maximum,
            worker_startup_s=s.worker_startup_s * scale,
        )

    def _projected(self, view: SessionView) -> SessionView:
        entry = self._inflight.get(view.session_id)
        if entry is None:
            return view
        action, _ = entry
        if isinstance(action, Migrate) and view.status in (_ACTIVE, _MIGRATING):
            return replace(view, status=_MIGRATING, worker=action.target)
        if isinstance(action, Offload):
            return replace(view, status=_SUSPENDED, worker=None)
        if isinstance(action, Resume):
            return replace(view, status=_IDLE, worker=action.worker)
        if isinstance(action, Place):
            return replace(view, status=_ACTIVE, worker=action.worker)
        return view

    def _clock(self, wall: float) -> float:
        return (wall - self._origin) * self.settings.time_scale

    def _latency_model(self) -> BatchLatencyModel:
        if self.settings.measure:
            return self.latency.model(self.settings.time_scale)
        est = LatencyEstimator(self.settings.latency_points)
        return est.model(self.settings.time_scale)

    def _read_metrics(self, runtime: Any) -> None:
        feed = getattr(runtime, "dashboard", None)
        log = getattr(feed, "chunk_log", None)
        if log is None:
            return
        for point in log.since(self._chunk_seq):
            self._chunk_seq = point.seq
            self.latency.add(point.batch_size, point.latency_s)

    def _record_interval(self, now: float, snap: Snapshot, runtime: Any) -> None:
        counts = Counter(v.status for v in snap.sessions)
        n_workers = sum(1 for w in snap.workers)  # running, draining and asked-for (paid from the request)
        dt = 0.0 if self._last_tick is None else now - self._last_tick
        prev_workers = self.intervals[-1][1] if self.intervals else n_workers
        migrations = sum(r.migrations for r in runtime.registry.records(include_closed=True))
        self.intervals.append(
            (now, n_workers, counts[_ACTIVE] + counts[_MIGRATING], counts[_IDLE], counts[_SUSPENDED],
             migrations - self._last_migrations, prev_workers * dt)
        )
        self._last_migrations = migrations
        self._last_tick = now

    # ------------------------------------------------------------ actions

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
            if self._admitting(runtime, sid):
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
            getattr(runtime, "_draining", set()).discard(addr)
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
            getattr(runtime, "_draining", set()).discard(addr)
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
    def _admitting(runtime: Any, session_id: str) -> bool:
        # A PENDING session whose lock is held is inside the runtime's open/recovery path.
        lock = getattr(runtime, "_locks", {}).get(session_id)
        return lock is not None and lock.locked()

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
