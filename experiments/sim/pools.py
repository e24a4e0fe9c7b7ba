"""Traces that mix model presets: one pool of GPUs per model, simulated side by side.

A GPU holds one model's weights, so sessions of different presets never share a step.
A mixed trace is split by the ``model`` of each session's ``open`` row; each pool gets
its own share of the GPUs (in proportion to its oracle peak demand, at least one) and
its own copy of the policies; the pool results are merged into one run (workers named
``<model>/sim-wN``, interval rows summed over pools).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
import pandas as pd

from experiments.sim.config import PolicySet, SimConfig
from experiments.sim.engine import SimResult, Simulator
from experiments.sim.workload import Workload, prepare
from policies.types import BatchLatencyModel

_COUNTS = ["n_workers", "n_active", "n_idle", "n_suspended"]
_ADDITIVE = ["migrations", "cost_gpu_s"]


def split_by_model(trace: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows of each session grouped by the model of its ``open`` row (sorted model names)."""
    if "model" not in trace.columns:
        return {"tiny": trace}
    opens = trace[trace["event"] == "open"].drop_duplicates("session_id")
    model_of = opens.set_index("session_id")["model"].fillna("tiny").astype(str)
    models = trace["session_id"].map(model_of).fillna("tiny")
    return {m: trace[models == m].reset_index(drop=True) for m in sorted(models.unique())}


def share_gpus(gpus: int, demand: dict[str, int]) -> dict[str, int]:
    """Split ``gpus`` over pools in proportion to ``demand`` (largest remainders; >= 1 each)."""
    if not demand:
        return {}
    if len(demand) == 1:
        return {next(iter(demand)): gpus}
    if gpus < len(demand):
        raise ValueError(f"{gpus} GPUs cannot hold {len(demand)} model pools {sorted(demand)}; give at least one each")
    total = sum(max(d, 1) for d in demand.values())
    raw = {m: (gpus - len(demand)) * max(d, 1) / total for m, d in demand.items()}
    out = {m: 1 + math.floor(r) for m, r in raw.items()}
    left = gpus - sum(out.values())
    for m in sorted(raw, key=lambda m: (-(raw[m] - math.floor(raw[m])), m))[:left]:
        out[m] += 1
    return out


def run_pools(
    pools: dict[str, Workload],
    setup: Callable[[str, int], tuple[PolicySet, SimConfig]],
    gpus_of: dict[str, int],
    latency_of: Callable[[str], BatchLatencyModel | None] = lambda model: None,
) -> SimResult:
    """Simulate each pool with ``setup(model, pool_gpus) -> (policies, config)`` and merge."""
    results = {}
    for model, wl in pools.items():
        policies, config = setup(model, gpus_of[model])
        results[model] = Simulator(wl, policies, config, latency=latency_of(model)).run()
    return merge(results)


def prepare_pools(trace: pd.DataFrame) -> dict[str, Workload]:
    """:func:`~experiments.sim.workload.prepare` each model's part of ``trace``."""
    return {m: prepare(df, model=m) for m, df in split_by_model(trace).items()}


def merge(results: dict[str, SimResult]) -> SimResult:
    """One :class:`SimResult` from per-pool results (a single pool is returned as is)."""
    if len(results) == 1:
        return next(iter(results.values()))
    models = list(results)

    def prefixed(df: pd.DataFrame, model: str, column: str) -> pd.DataFrame:
        df = df.copy()
        df[column] = [f"{model}/{w}" if w else w for w in df[column]]
        return df

    chunks = pd.concat([prefixed(results[m].chunks, m, "worker") for m in models], ignore_index=True)
    decisions = pd.concat([prefixed(results[m].decisions, m, "worker") for m in models], ignore_index=True)
    decisions = decisions.sort_values("time_s", kind="stable").reset_index(drop=True)
    workers = pd.concat([prefixed(results[m].workers, m, "worker") for m in models], ignore_index=True)
    times = np.unique(np.concatenate([results[m].intervals["time_s"].to_numpy() for m in models]))
    total = pd.DataFrame(0.0, index=times, columns=_COUNTS + _ADDITIVE)
    for m in models:
        iv = results[m].intervals.set_index("time_s")
        counts = iv[_COUNTS].reindex(times).ffill().fillna(0)
        counts.loc[counts.index > iv.index.max()] = 0
        total[_COUNTS] += counts
        total[_ADDITIVE] += iv[_ADDITIVE].reindex(times).fillna(0)
    intervals = total.reset_index(names="time_s")
    for col in _COUNTS + ["migrations"]:
        intervals[col] = intervals[col].astype(np.int64)
    counters: dict = {}
    refused: Counter[str] = Counter()
    for m in models:
        for key, value in results[m].counters.items():
            if key == "refused_by_reason":
                refused.update(value)
            elif key == "max_abandoned_wait_s":
                counters[key] = max(counters.get(key, 0.0), value)
            else:
                counters[key] = counters.get(key, 0) + value
    counters["refused_by_reason"] = dict(sorted(refused.items()))
    first = results[models[0]]
    return SimResult(
        chunks=chunks,
        intervals=intervals,
        latency_s=np.concatenate([results[m].latency_s for m in models]),
        slo_s=np.concatenate([results[m].slo_s for m in models]),
        chunk_index=np.concatenate([results[m].chunk_index for m in models]),
        decisions=decisions,
        counters=counters,
        gpu_seconds=float(sum(results[m].gpu_seconds for m in models)),
        end_s=max(results[m].end_s for m in models),
        config=first.config,
        policy=first.policy,
        session_slo_s={k: v for m in models for k, v in results[m].session_slo_s.items()},
        workers=workers,
        burst_first=np.concatenate([results[m].burst_first for m in models]),
        degraded=np.concatenate([results[m].degraded for m in models]),
        request_s=np.concatenate([results[m].request_s for m in models]),
    )
