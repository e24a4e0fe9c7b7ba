"""Trace statistics: concurrency over time, session and idle-period distributions, plots.

Examples
--------
>>> from traces.generator import generate
>>> from traces.spec import ClientSpec, WorkloadSpec
>>> df = generate(WorkloadSpec(clients=(ClientSpec("c0", rate=0.2),), duration_s=900.0))
>>> s = trace_stats(df)
>>> s.sessions == df["session_id"].nunique()
True
>>> s.peak_open >= s.peak_active
True
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from traces.io import TraceArrays

# Change of the open and active counts caused by each event kind (open, active, idle, close);
# a close of an active session is corrected below.
_D_OPEN = np.array([1, 0, 0, -1])
_D_ACTIVE = np.array([1, 1, -1, 0])


@dataclass(frozen=True, slots=True)
class TraceStats:
    """Summary statistics of a trace (see :func:`trace_stats`).

    Concurrency means are time-weighted over ``[0, duration_s]``; ``active_share`` is the
    share of session-time spent active. ``arrival_rate`` and ``interarrival_cv`` (the CV
    of the gaps between consecutive opens, all clients together) leave out opens at the
    trace's first instant: a warm-started trace opens its already-running sessions there.
    Session percentiles include sessions cut at the end of the trace.
    """

    sessions: int
    events: int
    clients: int
    duration_s: float
    arrival_rate: float
    peak_open: int
    mean_open: float
    peak_active: int
    mean_active: float
    active_share: float
    interarrival_cv: float
    session_p50_s: float
    session_p90_s: float
    session_p99_s: float
    idle_p50_s: float
    idle_p90_s: float
    idle_p99_s: float

    def as_dict(self) -> dict[str, Any]:
        """The statistics as a plain ``dict``."""
        return asdict(self)


def _deltas(arrays: TraceArrays) -> tuple[np.ndarray, np.ndarray]:
    """The change in open and in active sessions at each event."""
    d_open = _D_OPEN[arrays.code]
    d_active = _D_ACTIVE[arrays.code].copy()
    # A close ends an active period only when the session's previous event was open/active.
    close_rows = np.flatnonzero(arrays.code == 3)
    if len(close_rows):
        prev = arrays.previous_code()[close_rows]
        d_active[close_rows] = np.where((prev == 0) | (prev == 1), -1, 0)
    return d_open, d_active


def concurrency(df: pd.DataFrame, step_s: float = 60.0) -> pd.DataFrame:
    """Open and active sessions sampled every ``step_s`` seconds.

    Returns a frame with columns ``time_s, open, active``: the counts just after all
    events at or before ``time_s``.
    """
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s!r}")
    arrays = TraceArrays.of(df)
    t = arrays.time
    d_open, d_active = _deltas(arrays)
    end = float(t[-1]) if len(t) else 0.0
    grid = np.arange(0.0, end + step_s, step_s)
    idx = np.searchsorted(t, grid, side="right") - 1
    n_open = np.concatenate([[0], np.cumsum(d_open)])[idx + 1]
    n_active = np.concatenate([[0], np.cumsum(d_active)])[idx + 1]
    return pd.DataFrame({"time_s": grid, "open": n_open, "active": n_active})


def _peak_and_mean(t: np.ndarray, delta: np.ndarray, duration: float) -> tuple[int, float]:
    if not len(t):
        return 0, 0.0
    level = np.cumsum(delta)
    # Only the level after the last event at a given time counts (simultaneous events).
    last_at_time = np.ones(len(t), dtype=bool)
    last_at_time[:-1] = t[1:] != t[:-1]
    peak = int(level[last_at_time].max())
    if duration <= 0:
        return peak, float(peak)
    widths = np.diff(np.concatenate([t, [duration]]))
    return peak, float(np.sum(level * widths) / duration)


def _percentiles(x: np.ndarray) -> tuple[float, float, float]:
    if not len(x):
        return (float("nan"),) * 3
    p = np.percentile(x, [50, 90, 99])
    return float(p[0]), float(p[1]), float(p[2])


def trace_stats(df: pd.DataFrame) -> TraceStats:
    """Summary statistics of a valid trace (a :class:`TraceStats`)."""
    arrays = TraceArrays.of(df)
    t = arrays.time
    d_open, d_active = _deltas(arrays)
    duration = float(t[-1]) if len(t) else 0.0
    peak_open, mean_open = _peak_and_mean(t, d_open, duration)
    peak_active, mean_active = _peak_and_mean(t, d_active, duration)
    opens = t[arrays.code == 0]  # already in time order
    arrivals = opens[opens > t[0]] if len(t) else opens
    gaps = np.diff(arrivals)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else float("nan")
    open_t, close_t = arrays.open_close()
    lifetimes = close_t - open_t
    _, is_idle, start, end = arrays.periods()
    lengths = end - start
    active_time, idle_time = float(lengths[~is_idle].sum()), float(lengths[is_idle].sum())
    total = active_time + idle_time
    life_p = _percentiles(lifetimes)
    idle_p = _percentiles(lengths[is_idle])
    return TraceStats(
        sessions=int(len(opens)),
        events=int(len(df)),
        clients=int(pd.unique(df["client_id"]).size),
        duration_s=duration,
        arrival_rate=float(len(arrivals) / (duration - t[0])) if duration > t[0] else float("nan"),
        peak_open=peak_open,
        mean_open=mean_open,
        peak_active=peak_active,
        mean_active=mean_active,
        active_share=active_time / total if total > 0 else float("nan"),
        interarrival_cv=cv,
        session_p50_s=life_p[0],
        session_p90_s=life_p[1],
        session_p99_s=life_p[2],
        idle_p50_s=idle_p[0],
        idle_p90_s=idle_p[1],
        idle_p99_s=idle_p[2],
    )


def format_stats(stats: TraceStats) -> str:
    """A two-column text table of ``stats`` (what ``turboserve trace stats`` prints)."""
    rows = []
    for key, value in stats.as_dict().items():
        if isinstance(value, float):
            text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.6g}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_trace(df: pd.DataFrame, path: str | os.PathLike[str], *, step_s: float | None = None) -> None:
    """Write a PNG overview of a trace: concurrency, arrival rate, and duration CDFs.

    ``step_s`` is the sampling step of the time series (default: about 500 points).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = TraceArrays.of(df)
    t = arrays.time
    duration = float(t[-1]) if len(t) else 1.0
    step = step_s or max(duration / 500.0, 1.0)
    conc = concurrency(df, step)
    opens = t[arrays.code == 0]
    _, is_idle, start, end = arrays.periods()
    lengths = end - start
    open_t, close_t = arrays.open_close()
    stats = trace_stats(df)

    fig, axes = plt.subplots(3, 1, figsize=(9, 10))
    ax = axes[0]
    ax.plot(conc["time_s"], conc["open"], label="open sessions")
    ax.plot(conc["time_s"], conc["active"], label="active sessions")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("sessions")
    ax.legend()
    ax.set_title(f"{stats.sessions} sessions, {stats.clients} clients, {duration:.0f} s")
    ax = axes[1]
    bins = np.arange(0.0, duration + step, step)
    counts, edges = np.histogram(opens, bins=bins)
    ax.step(edges[:-1], counts / step, where="post")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("session opens per second")
    ax = axes[2]
    for label, x in (
        ("session lifetime", close_t - open_t),
        ("active period", lengths[~is_idle]),
        ("idle period", lengths[is_idle]),
    ):
        if len(x):
            xs = np.sort(x)
            ax.plot(np.maximum(xs, 1e-3), np.arange(1, len(xs) + 1) / len(xs), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("CDF")
    ax.legend()
    fig.tight_layout()
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def session_lifetimes(df: pd.DataFrame) -> np.ndarray:
    """Open-to-close time of every session of a valid trace, in order of opening."""
    open_t, close_t = TraceArrays.of(df).open_close()
    return close_t - open_t
