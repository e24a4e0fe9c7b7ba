"""What a simulated run produced: :class:`SimResult`, and its assembly from the
simulator's typed chunk columns, interval rows, decision log and counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from experiments.sim.config import SimConfig
from experiments.sim.snapshot import build_snapshot, record_interval
from framework.controller import INTERVAL_COLUMNS


@dataclass(slots=True)
class SimResult:
    """What one simulated run produced.

    Attributes
    ----------
    chunks
        One row per chunk, the contract columns (empty when ``record_chunks=False``).
    intervals
        One row per control interval, the contract columns; ``cost_gpu_s`` sums to the
        total GPU-seconds.
    latency_s, slo_s, chunk_index
        Per-chunk latency, target and index (kept even when chunk rows are not).
    burst_first, degraded
        Per chunk: the first of a burst (index 0, or the first after a resume from
        idle; not in-stream) and made by a degraded (quality-valve) step.
    request_s
        Per chunk: when its session asked for it (with chunk rows, or with a measurement
        window, ``SimConfig.measure_from_s``, which selects on it; empty otherwise).
    decisions
        The decision log: ``time_s, action, session_id, worker, accepted, reason``.
    counters
        Migrations, offloads, resumes, rejections, bytes moved, refusals by reason,
        policy decision time.
    gpu_seconds
        Sum of worker lifetimes (start request to release, or the end of the run).
    workers
        One row per worker: ``worker, started_s, released_s`` (the end of the run if never
        released).
    """

    chunks: pd.DataFrame
    intervals: pd.DataFrame
    latency_s: np.ndarray
    slo_s: np.ndarray
    chunk_index: np.ndarray
    decisions: pd.DataFrame
    counters: dict[str, Any]
    gpu_seconds: float
    end_s: float
    config: SimConfig
    policy: str
    session_slo_s: dict[str, float] = field(default_factory=dict)
    workers: pd.DataFrame = field(default_factory=pd.DataFrame)
    burst_first: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    degraded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    request_s: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=float))


def assemble(sim: Any, end: float) -> SimResult:
    """The :class:`SimResult` of a finished run of ``sim`` (a :class:`~experiments.sim.engine.Simulator`)."""
    sim._advance_cost(end)
    if not sim.intervals or sim.intervals[-1][0] < end:
        record_interval(sim, end, build_snapshot(sim, end))
    gpu_seconds = sum((w.released if w.released is not None else end) - w.started for w in sim.workers)
    sids = np.asarray(sim.wl.session_ids, dtype=object)
    sess = np.asarray(sim.c_sess, dtype=np.int64)
    lat = np.asarray(sim.lat, dtype=float)
    slo = np.asarray(sim.slo_of, dtype=float)[sess] if len(sess) else np.zeros(0)
    step_n = np.asarray(sim.s_n, dtype=np.int64)  # a step's chunks are consecutive: its columns repeat per chunk

    def per_chunk(column: Any, dtype: Any) -> np.ndarray:
        return np.repeat(np.asarray(column, dtype=dtype), step_n)

    if sim.cfg.record_chunks:
        chunks = pd.DataFrame(
            {
                "session_id": sids[sess] if len(sess) else np.array([], dtype=object),
                "index": np.asarray(sim.c_index, dtype=np.int64),
                "t_request_s": np.asarray(sim.c_req, dtype=float),
                "t_start_s": per_chunk(sim.s_start, float),
                "t_done_s": per_chunk(sim.s_done, float),
                "latency_s": lat,
                "worker": np.asarray([w.address for w in sim.workers], dtype=object)[per_chunk(sim.s_worker, np.int64)],
                "batch_size": per_chunk(step_n, np.int64),
                "migrated": np.asarray(sim.c_mig, dtype=bool),
            }
        )
    else:
        from experiments.results import empty_chunks

        chunks = empty_chunks()
    intervals = pd.DataFrame(
        sim.intervals,
        columns=list(INTERVAL_COLUMNS),
    )
    decisions = pd.DataFrame(
        sim.decisions, columns=["time_s", "action", "session_id", "worker", "accepted", "reason"]
    )
    counters: dict[str, Any] = dict(sim.counters)
    counters["refused"] = int(sum(sim.refused.values()))
    counters["refused_by_reason"] = dict(sorted(sim.refused.items()))
    counters["decide_s"] = sim.decide_s
    counters["ticks"] = len(sim.intervals)
    counters["sessions"] = len(sim.sessions)
    counters["never_served"] = int(sum(1 for s in sim.sessions if s.opened and s.next_index == 0))
    counters["max_abandoned_wait_s"] = sim.max_abandoned_wait
    return SimResult(
        chunks=chunks,
        intervals=intervals,
        latency_s=lat,
        slo_s=slo,
        chunk_index=np.asarray(sim.c_index, dtype=np.int64),
        decisions=decisions,
        counters=counters,
        gpu_seconds=float(gpu_seconds),
        end_s=float(end),
        config=sim.cfg,
        policy=sim.policy_set.label,
        session_slo_s={s.sid: float(v) for s, v in zip(sim.sessions, sim.slo_of)},
        workers=pd.DataFrame(
            [(w.address, w.started, w.released if w.released is not None else end) for w in sim.workers],
            columns=["worker", "started_s", "released_s"],
        ),
        burst_first=np.asarray(sim.c_first, dtype=bool),
        degraded=per_chunk(sim.s_degraded, bool),
        request_s=np.asarray(sim.c_req, dtype=float),
    )
