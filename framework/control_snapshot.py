"""What the control loop observes: the latency estimate and the policies' snapshot.

:class:`LatencyEstimator` learns the batch latency curve from the workers' chunk
metrics; :class:`SnapshotBuilder` is the part of
:class:`~framework.controller.Controller` that turns the session registry, the
scheduler's workers and the actions in flight into a :class:`~policies.types.Snapshot`
in (scaled) trace seconds, and records one interval row per tick.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import replace
from typing import Any

from policies.types import (
    Action,
    BatchLatencyModel,
    Migrate,
    Offload,
    Place,
    Resume,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

_ACTIVE, _IDLE, _PENDING = SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.PENDING
_SUSPENDED, _MIGRATING = SessionStatus.SUSPENDED, SessionStatus.MIGRATING


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


def projected(view: SessionView, action: Action | None) -> SessionView:
    """``view`` as the in-flight ``action`` (None: none) will leave the session."""
    if action is None:
        return view
    if isinstance(action, Migrate) and view.status in (_ACTIVE, _MIGRATING):
        return replace(view, status=_MIGRATING, worker=action.target)
    if isinstance(action, Offload):
        return replace(view, status=_SUSPENDED, worker=None)
    if isinstance(action, Resume):
        return replace(view, status=_IDLE, worker=action.worker)
    if isinstance(action, Place):
        return replace(view, status=_ACTIVE, worker=action.worker)
    return view


class SnapshotBuilder:
    """The snapshot half of :class:`~framework.controller.Controller` (a mixin).

    Reads the controller's ``settings``, ``latency``, ``worker_log``, ``retiring``,
    ``target``, ``intervals`` and in-flight actions, and its ``_runtime()``,
    ``_live_workers()`` and ``_autoscaler_attached()``.
    """

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
            if view.status is _PENDING and runtime.admitting(rec.session_id):
                # The runtime's admission is placing it (open or recovery): demand only.
                view = replace(view, state_bytes=0)
            view = replace(
                view,
                since_s=self._clock(view.since_s),
                recent_latency_s=None if view.recent_latency_s is None else view.recent_latency_s * scale,
            )
            if view.worker is not None and view.worker not in known:
                continue
            entry = self._inflight.get(view.session_id)
            sessions.append(projected(view, None if entry is None else entry[0]))
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
