"""Simulated trace replay: the discrete-event simulator on the live replay's footing."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from experiments.replay_common import ReplayResult, control_settings, initial_workers
from experiments.replay_profiles import default_profile, scaled_model
from policies.semantics import DECISION_COLUMNS


def replay_sim(
    trace: pd.DataFrame,
    *,
    time_scale: float = 1.0,
    workers: int | None = None,
    seed: int = 0,
    trace_name: str = "trace",
    profile: tuple[tuple[int, float], ...] | None = None,
    decision_profile: tuple[tuple[int, float], ...] | None = None,
    startup_s: float | None = None,
    migration_s: float | None = None,
    control: dict[str, Any] | None = None,
) -> ReplayResult:
    """Simulate ``trace`` with the live replay's policies, bounds and (scaled) step times.

    ``profile`` (wall seconds per batch size) defaults to :func:`default_profile`;
    ``decision_profile`` (default ``profile``) is the curve the policies predict steps
    with (a live replay's ``stats["decision_profile"]``: what its controller decided with);
    step times and ``startup_s`` (wall seconds a new worker takes; default the
    controller's ``worker_startup_s``) are multiplied by ``time_scale`` into trace
    seconds, as the live run experiences them. So is ``migration_s`` (wall seconds a
    migration stalls its session, e.g. a live replay's ``summary["migration_s"]``; None
    or nan: ``turboserve.simulator.migration-fixed-s``), the simulator's fixed cost per
    migration.
    """
    from experiments.sim.config import PolicySet, SimConfig
    from experiments.sim.engine import Simulator
    from experiments.sim.run import summary_of
    from experiments.sim.workload import prepare

    settings = control_settings(trace, time_scale=time_scale, profile=None, **(control or {}))
    if profile is None:
        profile = default_profile(prepare(trace).model, settings.max_batch)
    n0 = initial_workers(settings, workers)
    startup = settings.worker_startup_s if startup_s is None else startup_s
    policies = PolicySet.of(settings.placement, settings.autoscaling, settings.offload,
                            placement_params=settings.placement_params,
                            autoscaling_params=settings.autoscaling_params,
                            offload_params=settings.offload_params)
    cfg = SimConfig.from_config(
        initial_workers=n0, min_workers=settings.minimum, max_workers=settings.maximum,
        interval_s=settings.interval_s, max_batch=settings.max_batch, worker_startup_s=startup * time_scale,
        gpu_memory_bytes=float(settings.worker_memory_bytes) + 64 * 1024**2,
        slo_s=(control or {}).get("slo_s"),
        migration_fixed_s=None if migration_s is None or math.isnan(migration_s) else migration_s * time_scale,
    )
    decide = None if decision_profile is None else scaled_model(decision_profile, time_scale)
    result = Simulator(prepare(trace), policies, cfg, latency=scaled_model(profile, time_scale),
                       decision_latency=decide).run()
    summary = summary_of(result, trace=trace_name, gpus=max(n0, int(result.intervals["n_workers"].max())))
    summary["policy"] = settings.label
    acc = result.decisions[result.decisions["accepted"]]
    summary.update(backend="sim", time_scale=time_scale, migration_s=cfg.migration_fixed_s / time_scale, sessions=len(result.session_slo_s),
                   scale_events=int((acc["action"] == "ScaleTo").sum()))
    decisions = result.decisions.loc[:, list(DECISION_COLUMNS)]
    return ReplayResult("sim", result.chunks, result.intervals, decisions, summary, tuple(profile),
                        {"counters": result.counters, "workers": result.workers})
