"""What the control loop observes: the latency estimate and the policies' snapshot.

:class:`LatencyEstimator` learns the batch latency curve from the chunk metrics the
scheduler plugin receives; :func:`build_snapshot` turns the session records, the
workers and the actions in flight into a :class:`~policies.types.Snapshot` in (scaled)
trace seconds, and :func:`interval_row` makes one row of the interval table. Plain
functions of their arguments: no Dask, no clock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from policies.types import (
    Action,
    BatchLatencyModel,
    Migrate,
    Offload,
    ParallelStepModel,
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


def build_snapshot(
    *,
    now_s: float,
    workers: Iterable[tuple[str, float]],
    retiring: set[str],
    starting: int,
    records: Iterable[Any],
    admitting: Callable[[str], bool],
    in_flight: Mapping[str, Action],
    clock: Callable[[float], float],
    time_scale: float,
    slo_s: float | None,
    latency: BatchLatencyModel,
    max_batch: int,
    memory_bytes: int,
    valve_batch: int = 0,
    min_workers: int,
    max_workers: int,
    worker_startup_s: float,
    warming: Collection[str] = (),
    worker_models: Mapping[str, frozenset[str] | None] | None = None,
    parallel: ParallelStepModel | None = None,
    chunks_made: int = 0,
    degraded_chunks: int = 0,
) -> Snapshot:
    """The policies' view of the live cluster, in (scaled) trace seconds.

    ``workers`` are ``(address, joined wall time)``; those in ``retiring`` are DRAINING,
    those ``warming`` (joined, model not loaded yet: :class:`~framework.warmup.Warmup`)
    STARTING unless a session is already on them, and ``starting`` STARTING placeholders
    (``starting-<i>``) stand for workers asked for but not yet arrived. ``records`` are
    the open sessions' :class:`~framework.registry.SessionRecord`; a pending one that
    ``admitting`` says the runtime is placing counts as demand only (no state bytes), and
    a session with an action in ``in_flight`` is shown as that action leaves it
    (:func:`projected`).
    ``clock`` maps a wall time to trace seconds. ``slo_s`` None: the median playback
    period of the open sessions. ``worker_models`` maps an address to the models the
    worker serves (``WorkerView.models``; missing or None: any model); ``valve_batch``
    the quality valve's batch of every worker (``WorkerView.valve_batch``; 0: no valve). ``parallel`` is
    the step model of parallel groups in wall seconds (:func:`scaled_parallel`);
    ``chunks_made`` and ``degraded_chunks`` count the chunks made so far and those the
    quality valve degraded.
    """
    models_of = (worker_models or {}).get
    records = list(records)
    holding = {rec.worker for rec in records if rec.worker is not None}
    views = []
    known = set()
    for addr, joined in workers:
        known.add(addr)
        status = WorkerStatus.DRAINING if addr in retiring else WorkerStatus.RUNNING
        if status is WorkerStatus.RUNNING and addr in warming and addr not in holding:
            status = WorkerStatus.STARTING
        views.append(WorkerView(addr, status, memory_bytes=memory_bytes, max_batch=max_batch, started_s=clock(joined),
                                models=models_of(addr), valve_batch=valve_batch))
    for i in range(starting):
        views.append(WorkerView(f"starting-{i}", WorkerStatus.STARTING, memory_bytes, max_batch, now_s,
                                valve_batch=valve_batch))
    sessions: list[SessionView] = []
    periods: list[float] = []
    for rec in records:
        view = rec.view()
        periods.append(rec.chunk_period_s)
        if view.status is _PENDING and admitting(rec.session_id):
            view = replace(view, state_bytes=0)
        view = replace(
            view,
            since_s=clock(view.since_s),
            recent_latency_s=None if view.recent_latency_s is None else view.recent_latency_s * time_scale,
        )
        if view.worker is not None and view.worker not in known:
            continue
        sessions.append(projected(view, in_flight.get(view.session_id)))
    if slo_s is None:
        periods.sort()
        slo_s = periods[len(periods) // 2] if periods else 1.0
    return Snapshot(
        now_s=now_s,
        workers=tuple(views),
        sessions=tuple(sessions),
        slo_s=slo_s,
        latency=latency,
        min_workers=min_workers,
        max_workers=max_workers,
        worker_startup_s=worker_startup_s * time_scale,
        parallel=scaled_parallel(parallel, time_scale),
        chunks_made=chunks_made,
        degraded_chunks=degraded_chunks,
    )


def scaled_parallel(parallel: ParallelStepModel | None, time_scale: float) -> ParallelStepModel | None:
    """``parallel`` (wall seconds) in trace seconds: its communication ``time_scale`` times as long.

    The compute part scales with the latency curve it divides (already in trace seconds).

    >>> m = scaled_parallel(ParallelStepModel(comm_latency_s=0.01, link_bytes_per_s=1e9), 2.0)
    >>> m.comm_latency_s, m.link_bytes_per_s
    (0.02, 500000000.0)
    """
    if parallel is None or time_scale == 1.0:
        return parallel
    return replace(parallel, comm_latency_s=parallel.comm_latency_s * time_scale,
                   link_bytes_per_s=parallel.link_bytes_per_s / time_scale)


def interval_row(now: float, snap: Snapshot, dt: float, prev_workers: int | None, migrations: int) -> tuple:
    """One row of the interval table (``INTERVAL_COLUMNS``) for the tick at wall time ``now``.

    ``dt`` is the wall time since the previous tick, ``prev_workers`` that tick's worker
    count (its cost runs until now), ``migrations`` those completed since.
    """
    counts = Counter(v.status for v in snap.sessions)
    n_workers = len(snap.workers)  # running, draining and asked-for (paid from the request)
    prev = n_workers if prev_workers is None else prev_workers
    return (now, n_workers, counts[_ACTIVE] + counts[_MIGRATING], counts[_IDLE], counts[_SUSPENDED],
            migrations, prev * dt)
