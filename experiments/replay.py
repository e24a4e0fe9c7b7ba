"""Trace replay against the live Dask cluster, or the simulator on the same footing.

``turboserve replay TRACE --backend live|sim --out DIR --time-scale X --workers N --seed S``

``live`` starts a :class:`framework.Server` on a LocalCluster (tiny model on CPU unless
configured otherwise) with the closed control loop (:class:`framework.controller.ControlLoop`)
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

This module is the command only; the pieces live in :mod:`experiments.replay_common`
(result record, output folder, trace sessions, settings), :mod:`experiments.replay_profiles`,
:mod:`experiments.live_replay`, :mod:`experiments.sim_replay` and :mod:`experiments.parity`:
import them from there.
"""

from __future__ import annotations

import argparse
import pathlib

import framework.config  # noqa: F401  (registers the turboserve defaults before any dask.config.set)
from experiments.live_replay import replay_live
from experiments.replay_common import write_replay
from experiments.replay_profiles import read_profile
from experiments.sim_replay import replay_sim

__all__ = ["replay_command"]


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
        from framework import config

        profile_csv = config.get("replay.profile")
        startup = config.get("replay.startup-s")
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
