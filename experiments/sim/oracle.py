"""The offline oracle: a lower bound on GPU cost for a trace, and the latency it implies.

The oracle knows the whole trace and pays nothing for mechanisms: at every instant it
runs exactly ``ceil(active / b*)`` GPUs (at most ``gpus``), where ``b*`` is the largest
batch whose predicted step meets the SLO and whose state fits a GPU; idle sessions cost
nothing (offloaded for free), workers start instantly, sessions are spread evenly. No
online policy can provision fewer GPU-seconds while meeting the SLO with this latency
model, so it bounds cost from below; its latency is what that packing gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from experiments.sim.workload import Workload
from policies.types import BatchLatencyModel


@dataclass(frozen=True, slots=True)
class OracleResult:
    """Cost and latency of the oracle on one trace.

    Attributes
    ----------
    gpu_seconds
        Integral of the oracle's GPU count.
    peak_gpus
        Its largest GPU count without the ``gpus`` cap (the static peak a trace needs).
    b_star
        Sessions per GPU it packs.
    max_latency_s, p99_latency_s, p50_latency_s, slo_attainment
        Over the chunks it would serve (chunk-weighted).
    """

    gpu_seconds: float
    peak_gpus: int
    b_star: int
    max_latency_s: float
    p99_latency_s: float
    p50_latency_s: float
    slo_attainment: float


def best_batch(latency: BatchLatencyModel, slo_s: float, max_batch: int, state_bytes: int, memory_bytes: float) -> int:
    """Largest batch ``b <= max_batch`` with ``predict(b) <= slo_s`` and ``b`` states in memory (>= 1)."""
    b_star = 1
    for b in range(2, max_batch + 1):
        if latency.predict(b) > slo_s or b * state_bytes > memory_bytes:
            break
        b_star = b
    return b_star


def active_series(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """``(times, active)``: the number of active sessions from each event time on."""
    wants = np.zeros(len(workload.session_ids), dtype=bool)
    active = 0
    counts = np.empty(len(workload.times), dtype=np.int64)
    for k, (i, code) in enumerate(zip(workload.session_index.tolist(), workload.event_code.tolist())):
        now_active = code <= 1
        if now_active != wants[i]:
            active += 1 if now_active else -1
            wants[i] = now_active
        counts[k] = active
    return workload.times, counts


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, q * cum[-1])])


def oracle_bound(
    workload: Workload,
    latency: BatchLatencyModel,
    *,
    slo_s: float,
    max_batch: int,
    state_bytes: int,
    memory_bytes: float,
    gpus: int | None = None,
    end_s: float | None = None,
) -> OracleResult:
    """Compute the :class:`OracleResult` of ``workload`` (see the module docstring)."""
    b_star = best_batch(latency, slo_s, max_batch, state_bytes, memory_bytes)
    times, active = active_series(workload)
    end = workload.end_s if end_s is None else end_s
    durations = np.diff(np.append(times, end))
    keep = durations > 0
    durations, active = durations[keep], active[keep]
    need = np.ceil(active / b_star).astype(np.int64)
    peak = int(need.max()) if need.size else 0
    gpus_used = np.minimum(need, gpus) if gpus is not None else need
    period = float(np.median(workload.period_s)) if len(workload.period_s) else 1.0
    busy = active > 0
    if not busy.any():
        return OracleResult(float((gpus_used * durations).sum()), peak, b_star, *(4 * [math.nan]))
    batch = np.ceil(active[busy] / np.maximum(gpus_used[busy], 1)).astype(int)
    lat = np.array([latency.predict(int(b)) for b in batch])
    chunks = active[busy] * durations[busy] / period
    return OracleResult(
        gpu_seconds=float((gpus_used * durations).sum()),
        peak_gpus=peak,
        b_star=b_star,
        max_latency_s=float(lat.max()),
        p99_latency_s=_weighted_quantile(lat, chunks, 0.99),
        p50_latency_s=_weighted_quantile(lat, chunks, 0.5),
        slo_attainment=float(chunks[lat <= slo_s + 1e-9].sum() / chunks.sum()),
    )
