"""turboserve metrics on the scheduler's Prometheus endpoint (``/metrics``).

Dask serves ``/metrics`` from ``prometheus_client``'s global registry, into which its
handler registers its collectors once per process
(``distributed.http.scheduler.prometheus.core.PrometheusHandler``). This module adds one
more collector the same way: :func:`install_metrics` registers a
:class:`TurboserveCollector` once per process and points it at the newest scheduler
(tests start many schedulers in one process, as Dask's own handler allows for).

Names follow Prometheus' conventions, under Dask's namespace
(``distributed.dashboard.prometheus.namespace``, ``dask`` by default) and the
``turboserve`` subsystem: base units (``_seconds``), ``_total`` for counters, and labels
of bounded cardinality only (session *status*, worker *state*; never a session id)::

    dask_turboserve_sessions{status}                gauge      open sessions by status
    dask_turboserve_workers{state}                  gauge      workers by state
    dask_turboserve_chunks_total                    counter    chunks produced
    dask_turboserve_chunk_latency_seconds           histogram  request -> done per chunk
    dask_turboserve_stalls_total                    counter    in-stream chunks over the latency target
    dask_turboserve_migrations_total                counter    sessions moved between workers
    dask_turboserve_offloads_total                  counter    session states moved off the device
    dask_turboserve_recoveries_total                counter    sessions restarted after a worker died
    dask_turboserve_decision_seconds                summary    time of the control loop's decisions

A chunk is *in-stream* (``experiments.results`` has the same notion for replays) when it
is not the first of a burst: its index is above 0 and the session's previous chunk was
done at most two chunk periods before it (the viewer was watching continuously).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the chunk latency histogram's buckets (``+Inf`` is added).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
#: A chunk done within this many chunk periods of the session's previous one is in-stream.
IN_STREAM_PERIODS = 2.0


class ChunkMetrics:
    """Counters fed by the per-step chunk rows the scheduler plugin receives.

    Parameters
    ----------
    deadline_of
        ``session_id -> (chunk_period_s, latency_target_s)`` or ``None`` for a session
        the registry no longer knows (its chunks are counted, never as stalls).

    Examples
    --------
    >>> m = ChunkMetrics(lambda sid: (0.75, 0.75))
    >>> m.observe([("s", 0, 2.0, 1, 10.0), ("s", 1, 0.9, 1, 10.8), ("s", 2, 0.5, 1, 11.5)])
    >>> m.chunks, m.stalls, m.bucket_counts()[-1]
    (3, 1, 3)
    """

    def __init__(self, deadline_of: Callable[[str], tuple[float, float] | None]) -> None:
        self.deadline_of = deadline_of
        self.chunks = 0
        self.stalls = 0
        self.latency_sum_s = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._last_done: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def observe(self, rows: Iterable[tuple]) -> None:
        """Fold rows ``(session_id, index, latency_s, batch, t_done_s, ...)`` in."""
        with self._lock:
            for sid, index, latency, _batch, t_done, *_ in rows:
                latency, t_done = float(latency), float(t_done)
                self.chunks += 1
                self.latency_sum_s += latency
                self._buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += 1
                prev = self._last_done.get(sid)
                self._last_done[sid] = (int(index), t_done)
                deadline = self.deadline_of(sid)
                if deadline is None or prev is None or int(index) == 0:
                    continue
                period, target = deadline
                if t_done - prev[1] <= IN_STREAM_PERIODS * period and latency > target:
                    self.stalls += 1

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the per-session memory of sessions not in ``keep`` (closed ones)."""
        keep = set(keep)
        with self._lock:
            for sid in [s for s in self._last_done if s not in keep]:
                del self._last_done[sid]

    def bucket_counts(self) -> list[int]:
        """Cumulative counts per bucket of :data:`LATENCY_BUCKETS_S`, then ``+Inf``."""
        with self._lock:
            out, total = [], 0
            for n in self._buckets:
                total += n
                out.append(total)
            return out


class MonotoneSum:
    """A counter summed over per-session counts that survives sessions being forgotten.

    >>> m = MonotoneSum()
    >>> m.update({"a": 2, "b": 1}), m.update({"b": 3})
    (3, 5)
    """

    def __init__(self) -> None:
        self._base = 0
        self._known: dict[str, int] = {}

    def update(self, current: dict[str, int]) -> int:
        for sid in [s for s in self._known if s not in current]:
            self._base += self._known.pop(sid)
        for sid, n in current.items():
            self._known[sid] = max(n, self._known.get(sid, 0))
        return self._base + sum(self._known.values())


class TurboserveCollector:
    """A ``prometheus_client`` collector reading the turboserve plugin of a scheduler."""

    def __init__(self, scheduler: Any) -> None:
        import dask.config

        self.scheduler = scheduler
        self.namespace = dask.config.get("distributed.dashboard.prometheus.namespace", default="dask")
        self._migrations = MonotoneSum()
        self._recoveries = MonotoneSum()

    def _name(self, name: str) -> str:
        return "_".join(p for p in (self.namespace, "turboserve", name) if p)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            SummaryMetricFamily,
        )

        from framework.registry import PLUGIN_NAME
        from policies.types import SessionStatus

        scheduler = self.scheduler
        plugin = getattr(scheduler, "plugins", {}).get(PLUGIN_NAME)
        if plugin is None or not hasattr(plugin, "registry"):
            return
        everyone = plugin.registry.records(include_closed=True)
        sessions = GaugeMetricFamily(self._name("sessions"), "Open turboserve sessions by status.", labels=["status"])
        counts = {s.value: 0 for s in SessionStatus if s is not SessionStatus.CLOSED}
        for r in everyone:
            if r.status is not SessionStatus.CLOSED:
                counts[r.status.value] += 1
        for status, n in counts.items():
            sessions.add_metric([status], n)
        yield sessions

        workers = GaugeMetricFamily(self._name("workers"), "Dask workers by turboserve state.", labels=["state"])
        admission = getattr(plugin, "admission", None)  # None until the plugin started
        draining = set(admission.draining) if admission is not None else set()
        states: dict[str, int] = {"running": 0, "paused": 0, "draining": 0, "closing": 0}
        for addr, ws in scheduler.workers.items():
            if addr in draining:
                key = "draining"
            else:
                name = getattr(getattr(ws, "status", None), "name", "running")
                key = "running" if name == "running" else "paused" if name == "paused" else "closing"
            states[key] += 1
        for state, n in states.items():
            workers.add_metric([state], n)
        yield workers

        feed = getattr(plugin, "dashboard", None)
        metrics: ChunkMetrics | None = getattr(feed, "metrics", None)
        if metrics is not None:
            metrics.forget(r.session_id for r in everyone if r.status is not SessionStatus.CLOSED)
            yield CounterMetricFamily(self._name("chunks"), "Chunks produced.", value=metrics.chunks)
            cumulative = metrics.bucket_counts()
            buckets = [(repr(b), n) for b, n in zip(LATENCY_BUCKETS_S, cumulative)] + [("+Inf", cumulative[-1])]
            yield HistogramMetricFamily(
                self._name("chunk_latency_seconds"), "Latency of each chunk, request to done.",
                buckets=buckets, sum_value=metrics.latency_sum_s,
            )
            yield CounterMetricFamily(
                self._name("stalls"), "In-stream chunks later than the latency target (visible stalls).",
                value=metrics.stalls,
            )
        yield CounterMetricFamily(
            self._name("migrations"), "Sessions moved between workers.",
            value=self._migrations.update({r.session_id: r.migrations for r in everyone}),
        )
        yield CounterMetricFamily(
            self._name("offloads"), "Session states moved off the device (suspend to host or disk).",
            value=getattr(feed, "offloads", 0),
        )
        yield CounterMetricFamily(
            self._name("recoveries"), "Sessions restarted from a checkpoint after their worker died.",
            value=self._recoveries.update({r.session_id: r.recoveries for r in everyone}),
        )
        loop = getattr(plugin, "loop", None)
        if loop is not None:
            yield SummaryMetricFamily(
                self._name("decision_seconds"), "Time the control loop spent deciding, per tick.",
                count_value=int(loop.counters.get("ticks", 0)), sum_value=float(loop.decide_s),
            )


_installed: TurboserveCollector | None = None
_install_lock = threading.Lock()


def install_metrics(scheduler: Any) -> bool:
    """Export the turboserve metrics on ``scheduler``'s ``/metrics``; False without prometheus_client.

    Registers the collector once per process, then only points it at ``scheduler``.
    """
    global _installed
    try:
        import prometheus_client
    except ImportError:
        logger.info("turboserve metrics not exported: prometheus_client is not installed")
        return False
    with _install_lock:
        if _installed is None:
            _installed = TurboserveCollector(scheduler)
            prometheus_client.REGISTRY.register(_installed)
        else:
            _installed.scheduler = scheduler
    return True
