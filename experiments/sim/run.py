"""One-call helpers: simulate a trace DataFrame and summarise the result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from experiments.results import latency_stats, summary_row
from experiments.sim.config import PolicySet, SimConfig
from experiments.sim.engine import SimResult, Simulator
from experiments.sim.workload import prepare
from policies.types import BatchLatencyModel


def simulate(
    trace: pd.DataFrame,
    policies: PolicySet,
    config: SimConfig | None = None,
    *,
    latency: BatchLatencyModel | None = None,
    model: str | None = None,
) -> SimResult:
    """Replay ``trace`` (trace schema) through ``policies`` on a simulated cluster.

    ``config`` defaults to :meth:`SimConfig.from_config` (the dask config); ``latency``
    defaults to the profile of the trace's model preset.
    """
    cfg = config if config is not None else SimConfig.from_config()
    return Simulator(prepare(trace, model=model), policies, cfg, latency=latency).run()


def summary_of(result: SimResult, *, trace: str, gpus: int) -> dict[str, Any]:
    """The summary row of a simulated run (contract columns, then the simulator's extras).

    With a measurement window (``result.config.measure_from_s`` = ``W`` > 0) the row
    covers ``[W, end]``: latency statistics of the chunks asked for from ``W`` on,
    GPU-seconds of the workers' lifetimes clipped to it, and the migrations, offloads,
    degraded chunks and peak workers within it; the counts of refusals and rejections
    stay the whole run's. The row then has ``measure_from_s``.
    """
    start = float(result.config.measure_from_s)
    if start >= result.end_s > 0:
        raise ValueError(f"measure_from_s={start:g} is at or after the run's end ({result.end_s:g} s); "
                         "give a window that starts before it")
    c = result.counters
    if start > 0 and len(result.request_s) != len(result.latency_s):
        raise ValueError(f"the run kept {len(result.request_s)} request times for {len(result.latency_s)} chunks: "
                         "simulate it with measure_from_s set (or record_chunks) to summarise a window")
    keep = result.request_s >= start if start > 0 else slice(None)
    stats = latency_stats(result.latency_s[keep], result.slo_s[keep], result.chunk_index[keep],
                          result.burst_first[keep])
    iv = result.intervals
    extra = {
        "degraded_chunks": int(result.degraded[keep].sum()) if start > 0 else int(c.get("degraded_chunks", 0)),
        "offloads": _offloads_from(result, start) if start > 0 else int(c.get("offloads", 0)),
        "resumes": int(c.get("resumes", 0)),
        "rejected": int(c.get("rejected", 0)),
        "refused_actions": int(c.get("refused", 0)),
        "never_served": int(c.get("never_served", 0)),
        "abandoned_requests": int(c.get("abandoned_requests", 0)),
        "max_abandoned_wait_s": float(c.get("max_abandoned_wait_s", 0.0)),
        "gb_moved": float(c.get("bytes_moved", 0)) / 1e9,
        "peak_workers": int(iv.loc[iv["time_s"] >= start, "n_workers"].max()) if len(iv) else 0,
        "decide_ms_per_tick": 1e3 * float(c.get("decide_s", 0.0)) / max(int(c.get("ticks", 1)), 1),
    }
    if start > 0:
        extra["measure_from_s"] = start
        gpu_seconds = window_gpu_seconds(result.workers, start, result.end_s)
        migrations = int(iv.loc[iv["time_s"] > start, "migrations"].sum())
    else:
        gpu_seconds, migrations = result.gpu_seconds, int(c.get("migrations", 0))
    return summary_row(trace=trace, policy=result.policy, gpus=gpus, stats=stats, gpu_seconds=gpu_seconds,
                       migrations=migrations, extra=extra)


def window_gpu_seconds(workers: pd.DataFrame, start_s: float, end_s: float) -> float:
    """GPU-seconds of ``workers`` (``started_s``, ``released_s``) within ``[start_s, end_s]``."""
    if workers.empty:
        return 0.0
    lo = np.maximum(workers["started_s"].to_numpy(float), start_s)
    hi = np.minimum(workers["released_s"].to_numpy(float), end_s)
    return float(np.clip(hi - lo, 0.0, None).sum())


def _offloads_from(result: SimResult, start_s: float) -> int:
    d = result.decisions
    return int(((d["action"] == "Offload") & d["accepted"].astype(bool) & (d["time_s"] >= start_s)).sum())
