"""Feeding the page from the scheduler plugin: what the plugin records, how a frame is built.

The scheduler plugin owns one :class:`DashboardFeed`: it hands it the per-step chunk
metrics it already receives from the workers and counts offloads; at start it asks it to
install the page. :func:`plugin_frame_source` builds each tick's frame straight from the
plugin's registry (same process, no RPC).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from dask.utils import parse_timedelta

from framework import config
from framework.dashboard.data import ChunkLog, DashboardFrame, build_frame
from framework.dashboard.metrics import ChunkMetrics
from framework.errors import SessionNotFound
from framework.registry import PLUGIN_NAME
from policies.types import SessionStatus

logger = logging.getLogger(__name__)



def update_interval_ms() -> int:
    """Page refresh period: ``turboserve.dashboard.interval`` (framework/turboserve.yaml)."""
    value = config.get("dashboard.interval")
    ms = int(parse_timedelta(value, default="ms") * 1000)
    if ms < 50:
        raise ValueError(f"turboserve.dashboard.interval must be at least 50ms, got {value!r}")
    return ms


class DashboardFeed:
    """What the scheduler plugin records for the dashboard.

    Parameters
    ----------
    history : int, optional
        Chunk points kept (default ``turboserve.dashboard.chunk-history``).
    registry : SessionRegistry, optional
        The plugin's sessions, for the chunks' deadlines (a stall is a late in-stream
        chunk); without it no chunk counts as a stall.

    Examples
    --------
    >>> feed = DashboardFeed(history=10)
    >>> feed.on_chunks([("s", 0, 0.2, 1, 100.0)]); feed.count_offload()
    >>> len(feed.chunk_log), feed.offloads
    (1, 1)
    """

    def __init__(self, history: int | None = None, registry: Any = None) -> None:
        if history is None:
            history = int(config.get("dashboard.chunk-history"))
        self.chunk_log = ChunkLog(history)
        self.offloads = 0
        self._registry = registry
        self.metrics = ChunkMetrics(self._deadline_of)  # exported on /metrics (dashboard.metrics)

    def __getstate__(self) -> dict[str, Any]:
        # The plugin travels to the scheduler pickled (its registry with it); the metrics start there.
        return {"chunk_log": self.chunk_log, "offloads": self.offloads, "_registry": self._registry}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.metrics = ChunkMetrics(self._deadline_of)

    def _deadline_of(self, session_id: str) -> tuple[float, float] | None:
        if self._registry is None:
            return None
        try:
            rec = self._registry.get(session_id)
        except SessionNotFound:
            return None
        slo = config.get("slo-s")
        return rec.chunk_period_s, float(slo) if slo is not None else rec.chunk_period_s

    def on_chunks(self, rows: Iterable[tuple]) -> None:
        """Record per-step chunk metrics ``(session_id, index, latency_s, batch, t_done_s)``."""
        rows = list(rows)
        self.chunk_log.extend(rows)
        self.metrics.observe(rows)

    def count_offload(self) -> None:
        """Count one session's state leaving the device (suspend)."""
        self.offloads += 1



def _slo_s(records: list[Any]) -> float | None:
    slo = config.get("slo-s")
    if slo is not None:
        return float(slo)
    # The natural deadline: the playback time of one chunk.
    periods = [r.chunk_period_s for r in records]
    return min(periods) if periods else None


def plugin_frame(plugin: Any, scheduler: Any, last_seq: int) -> DashboardFrame:
    """This tick's frame from a running turboserve plugin (``plugin.registry``, ``plugin.dashboard``)."""
    everyone = plugin.registry.records(include_closed=True)
    records = [r for r in everyone if r.status is not SessionStatus.CLOSED]
    feed: DashboardFeed | None = getattr(plugin, "dashboard", None)
    # From the bounded chunk log, not registry.stats(): that sorts every session's
    # recent latencies, too much for a 500 ms tick on the scheduler's event loop.
    p99, worst = feed.chunk_log.latency_summary() if feed else (None, None)
    return build_frame(
        time.time(),
        sorted(scheduler.workers),
        records,
        chunks=feed.chunk_log.since(last_seq) if feed else (),
        slo_s=_slo_s(records),
        # Counters since the plugin started: closed sessions count too.
        chunks_total=feed.chunk_log.total if feed else None,
        migrations=sum(r.migrations for r in everyone),
        offloads=feed.offloads if feed else 0,
        latency_p99_s=p99,
        latency_max_s=worst,
    )


def plugin_frame_source(scheduler: Any):
    """A page source reading the turboserve plugin of ``scheduler`` at every tick.

    Without the plugin the frames show the workers only.
    """

    def source(last_seq: int) -> DashboardFrame:
        plugin = scheduler.plugins.get(PLUGIN_NAME)
        if plugin is None or not hasattr(plugin, "registry"):
            return DashboardFrame(now_s=time.time(), workers=tuple(sorted(scheduler.workers)))
        return plugin_frame(plugin, scheduler, last_seq)

    return source
