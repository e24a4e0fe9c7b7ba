"""What the live and the simulated replay share: the result record and its output folder, the trace's sessions, the settings.

:class:`ReplayResult` is what either backend returns and :func:`write_replay` writes;
:func:`trace_sessions` reads a trace into per-session event lists; :func:`control_settings`
resolves the control loop's :class:`~framework.control_settings.ControlSettings` for a
replay, so both backends decide with the same policies, bounds and SLO.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import framework.config  # noqa: F401  (registers the turboserve defaults before any dask.config.set)


@dataclass(slots=True)
class ReplayResult:
    """What one replay (live or simulated) produced; every time in trace seconds.

    Attributes
    ----------
    chunks, intervals
        The contract tables (:data:`~experiments.results.CHUNK_COLUMNS`,
        :data:`~experiments.results.INTERVAL_COLUMNS`).
    decisions
        ``time_s, action, session_id, worker, accepted, reason`` per control action.
    summary
        The summary row (contract columns first).
    profile
        ``((batch_size, step_s), ...)`` in wall seconds: the step times the run used
        (sim) or the median step times its workers showed (live, calibration included).
    stats
        Backend details: controller counters, errors, worker start-up times.
    """

    backend: str
    chunks: pd.DataFrame
    intervals: pd.DataFrame
    decisions: pd.DataFrame
    summary: dict[str, Any]
    profile: tuple[tuple[int, float], ...]
    stats: dict[str, Any] = field(default_factory=dict)


def burst_trace(
    *, base: int = 1, burst: int = 3, burst_at_s: float = 20.0, burst_len_s: float = 60.0,
    tail_s: float = 120.0, chunk_frames: int = 12, fps: int = 4, model: str = "tiny",
) -> pd.DataFrame:
    """A small deterministic trace: ``base`` long sessions and a burst of ``burst`` more.

    The base sessions open at 0 and close at the end; the burst sessions open at
    ``burst_at_s`` (one second apart), and go idle after ``burst_len_s`` for good
    (closing at the end), which is when an autoscaler should give workers back.
    """
    end = burst_at_s + burst_len_s + tail_s
    rows = []
    for i in range(base):
        rows += [(0.0, f"base{i}", "open"), (end, f"base{i}", "close")]
    for i in range(burst):
        t = burst_at_s + i
        rows += [(t, f"burst{i}", "open"), (t + burst_len_s, f"burst{i}", "idle"), (end, f"burst{i}", "close")]
    df = pd.DataFrame(rows, columns=["time_s", "session_id", "event"])
    df["client_id"] = "c0"
    df["model"] = model
    is_open = df["event"] == "open"
    for col, value in (("chunk_frames", chunk_frames), ("height", 64), ("width", 64), ("fps", fps)):
        df[col] = pd.array(np.where(is_open, value, pd.NA), dtype="Int64")
    return df.sort_values(["time_s", "session_id"], kind="stable").reset_index(drop=True)


def trace_sessions(trace: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per session: its events (time, kind), chunk period (trace s), model, geometry."""
    df = trace.sort_values("time_s", kind="stable")
    out: dict[str, dict[str, Any]] = {}
    for row in df.itertuples(index=False):
        sid = str(row.session_id)
        s = out.setdefault(sid, {"events": []})
        s["events"].append((float(row.time_s), str(row.event)))
        if row.event == "open":
            s["period"] = float(row.chunk_frames) / float(row.fps)
            s["model"] = str(getattr(row, "model", "tiny") or "tiny")
            s["height"] = _int_or_none(getattr(row, "height", None))
            s["width"] = _int_or_none(getattr(row, "width", None))
    missing = [sid for sid, s in out.items() if "period" not in s]
    if missing:
        raise ValueError(f"sessions {missing[:3]} have no open row with chunk_frames and fps")
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def session_slo(trace: pd.DataFrame) -> dict[str, float]:
    """Per-session latency target in trace seconds: the playback time of one chunk."""
    return {sid: s["period"] for sid, s in trace_sessions(trace).items()}


def control_settings(trace: pd.DataFrame, *, time_scale: float, profile: tuple[tuple[int, float], ...] | None,
                     **overrides: Any):
    """The :class:`~framework.control_settings.ControlSettings` of a replay (config + overrides).

    The SLO defaults to the trace's median chunk period (trace seconds); with a
    ``profile`` the controller uses it instead of learning one (the simulator does
    the same, so both decide on the same latency model).
    """
    from framework import config
    from framework.control_settings import ControlSettings

    if not time_scale > 0:
        raise ValueError(f"--time-scale must be > 0 (trace seconds per wall second), got {time_scale!r}")
    periods = sorted(session_slo(trace).values())
    slo = config.get("slo-s")
    kw: dict[str, Any] = {
        "time_scale": time_scale,
        "slo_s": float(slo) if slo is not None else periods[len(periods) // 2],
    }
    if profile is not None:
        kw.update(latency_points=profile, measure=False)
    kw.update(overrides)
    return ControlSettings.from_config(**kw)


def initial_workers(settings: Any, workers: int | None) -> int:
    """Workers at the start of a replay: ``workers``, else the autoscaling minimum (at least 1)."""
    return int(workers if workers is not None else max(settings.minimum, 1))


def summary_slo(trace: pd.DataFrame, slo: float | None = None) -> float | dict[str, float]:
    """``slo``, else the configured ``turboserve.slo-s``, else each session's chunk period (as the simulator)."""
    from framework import config

    slo = config.get("slo-s", slo)
    return float(slo) if slo is not None else session_slo(trace)


def write_replay(result: ReplayResult, out_dir: str | pathlib.Path, *, seed: int, trace_name: str,
                 plots: bool = True) -> pathlib.Path:
    """Write the output folder, ``decisions.parquet`` and ``profile.csv`` of a replay."""
    from experiments.results import write_outputs
    from framework import config

    resolved = {**config.resolved(), "experiment": {
        "kind": "replay", "backend": result.backend, "seed": seed, "trace": trace_name,
        "policy": result.summary["policy"], "time_scale": result.summary.get("time_scale"),
        "profile": [list(p) for p in result.profile],
    }}
    out = write_outputs(out_dir, result.chunks, result.intervals, result.summary, resolved, plots=plots)
    decisions = result.decisions.copy()
    decisions["reason"] = decisions["reason"].astype(str)
    decisions.to_parquet(out / "decisions.parquet", index=False)
    pd.DataFrame(result.profile, columns=["batch_size", "step_s"]).to_csv(out / "profile.csv", index=False)
    return out
