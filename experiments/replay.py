"""Trace replay against the live Dask cluster, or the simulator on the same footing.

``turboserve replay TRACE --backend live|sim --out DIR --time-scale X --workers N --seed S``

``live`` starts a :class:`framework.Server` on a LocalCluster (tiny model on CPU unless
configured otherwise) with the closed control loop (:class:`framework.controller.Controller`)
and session-aware autoscaling (:class:`framework.adaptive.SessionAdaptive`), and plays
the trace's sessions against it: ``open`` opens a session, ``active`` streams chunks at
playback cadence (chunk ``i+1`` is requested at ``max(t_request_i + period, t_done_i)``,
the simulator's rule), ``idle`` pauses it, ``close`` closes it.

Time runs ``X`` times faster than the trace (``--time-scale``, trace seconds per wall
second): events, the playback cadence and the control tick are compressed, and the
controller's policies see trace seconds. Every time and duration in the outputs is in
trace seconds (wall seconds times ``X``), the unit of the simulator's results, so the two
compare directly; with ``X = 1`` they are wall seconds.

``sim`` runs the simulator with the same policies and parameters, with the step-time
profile measured on this machine (the live run's own chunks when given, else
``kernels/profiles/tiny-cpu.csv`` if present, else a short calibration of the model
here; ``--config replay.profile=DIR/profile.csv`` and ``--config replay.startup-s=S``
take a live run's measurements), multiplied by ``X``. Both write the output folder of
:func:`experiments.results.write_outputs` (same columns), plus ``decisions.parquet``
(the control decisions, accepted or refused, with reasons) and ``profile.csv``.

The pieces live in :mod:`experiments.replay_common` (result record, trace sessions,
settings), :mod:`experiments.replay_profiles`, :mod:`experiments.live_replay`,
:mod:`experiments.sim_replay` and :mod:`experiments.parity`; every public name stays
importable from here.
"""

from __future__ import annotations

import argparse
import pathlib

import pandas as pd

import framework.config  # noqa: F401  (registers the turboserve defaults before any dask.config.set)
from experiments.live_replay import replay_live
from experiments.parity import compare, decision_counts, parity
from experiments.replay_common import (
    DECISION_COLUMNS,
    ReplayResult,
    burst_trace,
    control_settings,
    session_slo,
)
from experiments.replay_profiles import (
    calibrate_live,
    default_profile,
    measure_profile,
    profile_from_chunks,
    read_profile,
)
from experiments.results import write_outputs
from experiments.sim_replay import replay_sim

__all__ = [
    "DECISION_COLUMNS", "ReplayResult", "burst_trace", "calibrate_live", "compare", "control_settings",
    "decision_counts", "default_profile", "measure_profile", "parity", "profile_from_chunks", "read_profile",
    "replay_command", "replay_live", "replay_sim", "session_slo", "write_replay",
]


def write_replay(result: ReplayResult, out_dir: str | pathlib.Path, *, seed: int, trace_name: str,
                 plots: bool = True) -> pathlib.Path:
    """Write the output folder, ``decisions.parquet`` and ``profile.csv`` of a replay."""
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


def replay_command(args: argparse.Namespace) -> int:
    """``turboserve replay TRACE --backend live|sim --out DIR --time-scale X --workers N --seed S``."""
    from traces.io import read_trace

    path = pathlib.Path(args.trace)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
    trace = read_trace(path)
    name = path.stem
    if args.backend == "live":
        result = replay_live(trace, time_scale=args.time_scale, workers=args.workers, seed=args.seed,
                             trace_name=name)
    elif args.backend == "sim":
        import dask.config

        profile_csv = dask.config.get("turboserve.replay.profile", default=None)
        startup = dask.config.get("turboserve.replay.startup-s", default=None)
        result = replay_sim(trace, time_scale=args.time_scale, workers=args.workers, seed=args.seed,
                            trace_name=name, profile=read_profile(profile_csv) if profile_csv else None,
                            startup_s=None if startup is None else float(startup))
    else:
        raise ValueError(f"unknown backend {args.backend!r}; use 'live' or 'sim'")
    write_replay(result, args.out, seed=args.seed, trace_name=name)
    s = result.summary
    print(f"{result.backend}: {len(result.chunks)} chunks, p99 {s['p99_latency_s']:.3g} s, "
          f"max {s['max_latency_s']:.3g} s, "
          f"SLO {s['slo_attainment']:.1%}, {s['gpu_hours'] * 3600:.0f} GPU-s, {s['migrations']} migrations "
          f"-> {args.out}")
    return 0
