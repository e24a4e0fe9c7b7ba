"""One-call helpers: simulate a trace DataFrame and summarise the result."""

from __future__ import annotations

from typing import Any

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
    """The summary row of a simulated run (contract columns, then the simulator's extras)."""
    stats = latency_stats(result.latency_s, result.slo_s, result.chunk_index, result.burst_first)
    c = result.counters
    extra = {
        "degraded_chunks": int(c.get("degraded_chunks", 0)),
        "offloads": int(c.get("offloads", 0)),
        "resumes": int(c.get("resumes", 0)),
        "rejected": int(c.get("rejected", 0)),
        "refused_actions": int(c.get("refused", 0)),
        "never_served": int(c.get("never_served", 0)),
        "abandoned_requests": int(c.get("abandoned_requests", 0)),
        "max_abandoned_wait_s": float(c.get("max_abandoned_wait_s", 0.0)),
        "gb_moved": float(c.get("bytes_moved", 0)) / 1e9,
        "peak_workers": int(result.intervals["n_workers"].max()) if len(result.intervals) else 0,
        "decide_ms_per_tick": 1e3 * float(c.get("decide_s", 0.0)) / max(int(c.get("ticks", 1)), 1),
    }
    return summary_row(
        trace=trace, policy=result.policy, gpus=gpus, stats=stats,
        gpu_seconds=result.gpu_seconds, migrations=int(c.get("migrations", 0)), extra=extra,
    )
