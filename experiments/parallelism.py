"""``turboserve experiment parallelism``: fixed parallel degrees against the adaptive policy.

Each policy runs on the same mixed trace (wan-1.3b and wan-14b sessions) on a fixed
fleet of ``--gpus`` GPUs, at several load scales:

- ``fixed-1``, ``fixed-2``, ``fixed-4``: every GPU in groups of that degree
  (``policies.parallelism.FixedDegree``), the uniform degrees that divide both Wan
  models' heads (12 and 40; no uniform degree above 4 does);
- ``static-per-model``: each model at one fixed degree, its own best
  (:func:`static_degree`: the degree among its allowed ones that serves the most
  sessions per GPU within the SLO; 1.3B at 1 and 14B at 8 where batching is cheap), a
  stronger baseline than any uniform degree;
- ``adaptive``: each model at the degree it needs (``policies.parallelism.Adaptive``:
  by deadline, load and transformation cost) among its allowed degrees, every divisor
  of its heads up to ``turboserve.policies.parallelism-max-degree`` (8;
  ``framework.parallelism.model_degrees``, as the live control loop);
- ``adaptive-4``, ``adaptive-8``: the same with the maximum 4 or 8 whatever the
  configuration (``adaptive-4`` chooses what ``adaptive`` chose before the default
  maximum became 8: 1.3B at 1, 14B at 4).

A GPU holds one model's weights, so the fleet is split into one pool per model
(:mod:`experiments.sim.pools`); each policy splits it by the GPUs its degrees need at the
peak of each model's demand (peak active sessions x GPUs per session, a pool a multiple
of its degree). Placement ``least-loaded``, offload ``idle-timeout`` and a fixed fleet
are the same for all; only the parallelism policy differs.

The summary has the usual result columns per (scale, policy) run, plus the SLO
attainment of each model, the sessions served and **sessions per GPU-hour**. The
capacity table then reads the runs at equal SLO attainment: for each policy, the
largest load scale at which both the whole run and the 14B chunks meet
``--target`` attainment, and its sessions per GPU-hour; the ratios are against the best
uniform fixed degree that reaches the target at all (``vs_best_fixed``) and against
``static-per-model`` (``vs_static_per_model``). The oracle rows are the bound with the
same step-time model: GPU-hours of ``ceil(active / slots(k)) * k`` GPUs per model at
every instant. ``--oracle-only`` adds the bound of every policy whose degrees divide the
model's heads up to 4 and 8 (:func:`any_degree_oracle_row`): no such policy serves the
trace with every chunk on time on fewer GPU-hours. It is a ratio of ideal policies, not a
bound on a measured ratio (a real fixed degree may fall further short of its oracle).
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from experiments.paper_table import TraceInput, load_traces
from experiments.results import run_label, write_outputs
from experiments.sim.config import PolicySet, PolicySpec, SimConfig
from experiments.sim.engine import Simulator
from experiments.sim.models import model_cost, parallel_model
from experiments.sim.oracle import active_series
from experiments.sim.pools import merge, prepare_pools, share_gpus
from experiments.sim.run import summary_of
from framework.parallelism import model_degrees
from policies.parallelism import Adaptive, best_degree, slots
from policies.types import Snapshot, WorkerView

#: ``degree`` of a policy whose fixed degree is each model's own best (:func:`static_degree`).
PER_MODEL = "per-model"

POLICIES: dict[str, PolicySpec] = {
    "fixed-1": PolicySpec("parallelism", "fixed", {"degree": 1}),
    "fixed-2": PolicySpec("parallelism", "fixed", {"degree": 2}),
    "fixed-4": PolicySpec("parallelism", "fixed", {"degree": 4}),
    "static-per-model": PolicySpec("parallelism", "fixed", {"degree": PER_MODEL, "max_degree": None}),
    "adaptive": PolicySpec("parallelism", "adaptive", {"max_degree": None}),
    "adaptive-4": PolicySpec("parallelism", "adaptive", {"max_degree": 4}),
    "adaptive-8": PolicySpec("parallelism", "adaptive", {"max_degree": 8}),
}
"""The compared parallelism policies by label (module docstring). ``max_degree``: the
policy's degrees are the model's, every divisor of its heads up to that (None: the
configured ``turboserve.policies.parallelism-max-degree``); wan-14b up to 8: 1, 2, 4, 5, 8,
wan-1.3b: 1, 2, 3, 4, 6."""

#: Labels of the uniform fixed degrees: "the best fixed degree" of the acceptance.
UNIFORM_FIXED = ("fixed-1", "fixed-2", "fixed-4")


def spec_for(label: str, model: str, config: SimConfig | None = None) -> PolicySpec:
    """``POLICIES[label]`` for ``model``: a ``max_degree`` becomes the model's allowed degrees
    (:func:`framework.parallelism.model_degrees`), a per-model degree its :func:`static_degree`
    under ``config`` (default :meth:`SimConfig.from_config`)."""
    spec = POLICIES[label]
    if "max_degree" not in spec.params:
        return spec
    params = {k: v for k, v in spec.params.items() if k != "max_degree"}
    params["degrees"] = model_degrees(model, spec.params["max_degree"])
    if params.get("degree") == PER_MODEL:
        params["degree"] = static_degree(model, params["degrees"], config if config is not None else SimConfig.from_config())
    return PolicySpec(spec.kind, spec.name, params)

CAPACITY_COLUMNS = ("trace", "policy", "capacity_scale", "sessions_per_gpu_hour", "instream_attainment",
                    "instream_attainment_14b", "ttfc_p99_s", "vs_best_fixed", "vs_static_per_model",
                    "oracle_sessions_per_gpu_hour", "oracle_vs_best_fixed", "oracle_vs_static_per_model")


# ---------------------------------------------------------------- per-model facts


def model_config(model: str, config: SimConfig) -> SimConfig:
    """``config`` with the parallel step model of ``model``."""
    return config.with_(parallel=parallel_model(model))


def model_snapshot(model: str, config: SimConfig) -> Snapshot:
    """A one-worker snapshot of ``model`` under ``config``, for the pure capacity rules."""
    cost = model_cost(model)
    memory = int(config.gpu_memory_bytes - cost.weights_bytes)
    return Snapshot(
        now_s=0.0, workers=(WorkerView("ref", memory_bytes=memory, max_batch=config.max_batch),), sessions=(),
        slo_s=config.slo_s if config.slo_s is not None else _period(model),
        latency=config.latency.model_for(model), parallel=parallel_model(model),
    )


def _period(model: str) -> float:
    from kernels.presets import get_preset

    preset = get_preset(model)
    return preset.frames_per_chunk / preset.default_fps


def degree_for(label: str, model: str, config: SimConfig) -> int:
    """The degree ``label`` runs ``model`` at (the adaptive policy: its target for the model)."""
    spec = spec_for(label, model, config)
    if spec.name == "fixed":
        return int(spec.params["degree"])
    return static_degree(model, Adaptive(**spec.params).degrees, config)


def static_degree(model: str, degrees: Sequence[int], config: SimConfig) -> int:
    """The one degree among ``degrees`` that serves ``model`` best: the most sessions per GPU
    within the SLO (:func:`policies.parallelism.best_degree`, the adaptive policy's target on
    an unbounded fleet; the smallest on ties)."""
    snap = model_snapshot(model, config)
    return best_degree(snap, max_batch=config.max_batch, memory_bytes=snap.workers[0].memory_bytes,
                       state_bytes=model_cost(model).state_bytes(), degrees=tuple(degrees))


def unit_slots(model: str, degree: int, config: SimConfig) -> int:
    """Sessions a unit of ``degree`` GPUs serves within the SLO (0: not even one)."""
    snap = model_snapshot(model, config)
    return slots(snap, degree, max_batch=config.max_batch, memory_bytes=snap.workers[0].memory_bytes,
                 state_bytes=model_cost(model).state_bytes())


def gpus_per_session(model: str, degree: int, config: SimConfig) -> float:
    """GPUs one session takes at ``degree`` (a unit that meets no SLO still serves one)."""
    return degree / max(unit_slots(model, degree, config), 1)


def split_fleet(gpus: int, peaks: dict[str, int], degrees: dict[str, int], config: SimConfig) -> dict[str, int]:
    """GPUs per model pool: by peak demand in GPUs, each pool a multiple of its degree (>= one unit)."""
    demand = {m: max(int(round(1000 * peaks[m] * gpus_per_session(m, degrees[m], config))), 1) for m in peaks}
    shares = share_gpus(gpus, demand)
    out = {m: max(degrees[m], shares[m] // degrees[m] * degrees[m]) for m in shares}
    if sum(out.values()) > gpus:
        raise ValueError(f"{gpus} GPUs cannot hold one unit of every pool at degrees {degrees}; give more GPUs")
    return out


# ---------------------------------------------------------------- one run


def run_policy(trace: TraceInput, label: str, gpus: int, config: SimConfig, *,
               record_chunks: bool = True) -> tuple[dict[str, Any], pd.DataFrame | None, pd.DataFrame]:
    """Simulate ``label`` on ``trace``: the summary row, the chunk table, the interval table."""
    pools = prepare_pools(trace.frame)
    end = float(trace.frame["time_s"].max())
    peaks = {m: int(active_series(wl)[1].max(initial=0)) for m, wl in pools.items()}
    degrees = {m: degree_for(label, m, config) for m in pools}
    fleet = split_fleet(gpus, peaks, degrees, config)
    results, per_model = {}, {}
    t0 = time.perf_counter()
    for model, wl in pools.items():
        n = fleet[model]
        cfg = model_config(model, config).with_(initial_workers=n, min_workers=n, max_workers=n, end_s=end,
                                                record_chunks=record_chunks)
        policies = PolicySet(PolicySpec("placement", "least-loaded"), PolicySpec("autoscaling", "fixed", {"n": n}),
                             PolicySpec("offload", "idle-timeout"), name=label,
                             parallelism=spec_for(label, model, config))
        result = Simulator(wl, policies, cfg).run()
        results[model] = result
        per_model[model] = (instream_attainment(result), _served(result), int(len(wl.session_ids)))
    merged = merge(results)
    row = summary_of(merged, trace=trace.name, gpus=gpus)
    served = sum(v[1] for v in per_model.values())
    c = merged.counters
    nan = (math.nan,)
    row.update({
        "scale": trace.scale,
        "sessions": sum(v[2] for v in per_model.values()),
        "sessions_served": served,
        "sessions_per_gpu_hour": served / row["gpu_hours"] if row["gpu_hours"] > 0 else math.nan,
        "instream_attainment": instream_attainment(merged),
        "instream_attainment_13b": per_model.get("wan-1.3b", nan)[0],
        "instream_attainment_14b": per_model.get("wan-14b", nan)[0],
        "degrees": ",".join(f"{m}:{degrees[m]}" for m in sorted(degrees)),
        "pool_gpus": ",".join(f"{m}:{fleet[m]}" for m in sorted(fleet)),
        "transformations": int(c.get("transformations", 0)),
        "transform_gb": float(c.get("transform_bytes", 0)) / 1e9,
        "transform_session_pause_s": float(c.get("transform_session_pause_s", 0.0)),
        "sim_wall_s": round(time.perf_counter() - t0, 2),
    })
    return row, (merged.chunks if record_chunks else None), merged.intervals


def instream_attainment(result: Any) -> float:
    """Share of in-stream chunks (not the first of a burst) within their SLO: the deadline a viewer sees."""
    instream = ~(result.burst_first.astype(bool) | (result.chunk_index == 0))
    if not instream.any():
        return math.nan
    return float((result.latency_s[instream] <= result.slo_s[instream] + 1e-9).mean())


def _served(result: Any) -> int:
    """Sessions that got at least one chunk (the trace's sessions less those never served)."""
    return int(result.counters["sessions"] - result.counters["never_served"])


def peak_gpus(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """GPUs provisioned for the peak of per-model ``(times, need)`` step series: one pool per
    model (the sum of the pools' peaks) and one fleet whose GPUs change model and degree as
    the mix moves (the peak of the sum)."""
    pooled = int(sum(need.max(initial=0) for _, need in series))
    grid = np.unique(np.concatenate([t for t, _ in series])) if series else np.zeros(0)
    shared = sum(need[np.clip(np.searchsorted(t, grid, side="right") - 1, 0, None)] * (grid >= t[0])
                 for t, need in series if len(t))
    return pooled, (int(np.max(shared, initial=0)) if len(grid) else 0)


def oracle_row(trace: TraceInput, label: str, gpus: int, config: SimConfig) -> dict[str, Any]:
    """The bound of ``label``'s degrees: ``ceil(active / slots(k)) * k`` GPUs per model at every instant."""
    pools = prepare_pools(trace.frame)
    end = float(trace.frame["time_s"].max())
    gpu_s = 0.0
    meets = True
    series = []
    for model, wl in pools.items():
        k = degree_for(label, model, config)
        per_unit = unit_slots(model, k, config)
        meets &= per_unit > 0
        per_unit = max(per_unit, 1)
        times, active = active_series(wl)
        durations = np.diff(np.append(times, end))
        need = np.ceil(active / per_unit) * k
        gpu_s += float((need * np.clip(durations, 0, None)).sum())
        series.append((times, need))
    pooled_peak, shared_peak = peak_gpus(series)
    sessions = int(sum(len(wl.session_ids) for wl in pools.values()))
    hours = gpu_s / 3600.0
    return {"trace": trace.name, "policy": f"oracle:{label}", "gpus": gpus, "scale": trace.scale,
            "gpu_hours": hours, "sessions": sessions, "meets_deadline": bool(meets),
            "peak_gpus_pooled": pooled_peak, "peak_gpus_shared": shared_peak,
            "sessions_per_gpu_hour": sessions / hours if hours > 0 else math.nan}


def cover_gpus(slots_by_degree: dict[int, int], n_max: int) -> np.ndarray:
    """``need[n]``: the fewest GPUs whose units (any mix of degrees) hold ``n`` sessions, ``n = 0..n_max``.

    A unit of degree ``k`` holds ``slots_by_degree[k]`` sessions (degrees holding none are
    skipped); the least total degree covering ``n`` (an unbounded knapsack, exact).
    """
    units = [(k, s) for k, s in sorted(slots_by_degree.items()) if s > 0]
    if not units:
        raise ValueError(f"no degree serves a session within the SLO: {slots_by_degree}")
    need = np.zeros(n_max + 1, dtype=np.int64)
    for n in range(1, n_max + 1):
        need[n] = min(k + need[max(n - s, 0)] for k, s in units)
    return need


def any_degree_oracle_row(trace: TraceInput, gpus: int, config: SimConfig, max_degree: int = 8) -> dict[str, Any]:
    """The bound of *every* parallelism policy whose groups split a model's heads (degree <= ``max_degree``).

    At every instant each model's active sessions are held by the fewest GPUs any mix of
    units of those degrees needs (:func:`cover_gpus` with each degree's :func:`unit_slots`),
    transformations free and instant: no policy of degrees <= ``max_degree`` under this
    step-time model serves the trace's sessions on fewer GPU-hours, nor on fewer GPUs at the
    peak (one pool per model: ``peak_gpus_pooled``; GPUs that change model: ``peak_gpus_shared``).
    ``degrees`` lists the degrees each model may take and the sessions a unit of each holds.
    """
    pools = prepare_pools(trace.frame)
    end = float(trace.frame["time_s"].max())
    gpu_s, series, used = 0.0, [], []
    for model, wl in pools.items():
        per = {k: unit_slots(model, k, config) for k in model_degrees(model, max_degree)}
        times, active = active_series(wl)
        need = cover_gpus(per, int(active.max(initial=0)))[active]
        gpu_s += float((need * np.clip(np.diff(np.append(times, end)), 0, None)).sum())
        series.append((times, need))
        used.append(f"{model}:" + "/".join(f"{k}x{s}" for k, s in per.items() if s > 0))
    pooled_peak, shared_peak = peak_gpus(series)
    sessions = int(sum(len(wl.session_ids) for wl in pools.values()))
    hours = gpu_s / 3600.0
    return {"trace": trace.name, "policy": f"oracle:any-degree<={max_degree}", "gpus": gpus, "scale": trace.scale,
            "gpu_hours": hours, "sessions": sessions, "meets_deadline": True,
            "peak_gpus_pooled": pooled_peak, "peak_gpus_shared": shared_peak,
            "sessions_per_gpu_hour": sessions / hours if hours > 0 else math.nan, "degrees": " ".join(used)}


# ---------------------------------------------------------------- the experiment


def capacity_table(summary: pd.DataFrame, oracles: pd.DataFrame, target: float, admission_s: float) -> pd.DataFrame:
    """Per (trace, policy): the largest scale that meets the SLO.

    Meeting it: in-stream attainment at least ``target`` over all chunks and over the
    14B chunks, and a p99 time to first chunk of at most ``admission_s`` (a full fleet
    shows as sessions waiting for admission, not as late in-stream chunks).

    ``vs_best_fixed``: sessions per GPU-hour at that point over the best uniform fixed
    degree's (:data:`UNIFORM_FIXED`; NaN when none reaches the target);
    ``vs_static_per_model``: over ``static-per-model``'s (NaN when it was not run or never
    reaches it). The oracle columns are the bound of each policy's degrees at the largest
    scale run (the same demand for all), against the best uniform fixed degree whose units
    meet every model's deadline, and against ``static-per-model``'s bound.
    """
    rows = []
    for (trace, policy), runs in summary.groupby(["trace", "policy"], sort=False):
        att14 = runs["instream_attainment_14b"].fillna(1.0)
        ok = runs[(runs["instream_attainment"] >= target) & (att14 >= target) & (runs["ttfc_p99_s"] <= admission_s)]
        row = {"trace": trace, "policy": policy, "capacity_scale": math.nan, "sessions_per_gpu_hour": math.nan,
               "instream_attainment": runs["instream_attainment"].max(),
               "instream_attainment_14b": runs["instream_attainment_14b"].max(), "ttfc_p99_s": math.nan}
        if not ok.empty:
            best = ok.sort_values(["scale", "sessions_per_gpu_hour"]).iloc[-1]
            row.update({"capacity_scale": best["scale"], "sessions_per_gpu_hour": best["sessions_per_gpu_hour"],
                        "instream_attainment": best["instream_attainment"],
                        "instream_attainment_14b": best["instream_attainment_14b"], "ttfc_p99_s": best["ttfc_p99_s"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    for trace, part in table.groupby("trace", sort=False):
        fixed = part[part["policy"].isin(UNIFORM_FIXED)]
        static = part.loc[part["policy"] == "static-per-model", "sessions_per_gpu_hour"]
        table.loc[part.index, "vs_best_fixed"] = part["sessions_per_gpu_hour"] / fixed["sessions_per_gpu_hour"].max()
        table.loc[part.index, "vs_static_per_model"] = part["sessions_per_gpu_hour"] / static.max()
        # the bound at the largest scale a fixed degree that meets every deadline was run
        # at (else the largest run): the same demand for every policy
        o = oracles[oracles["trace"] == trace]
        meets_all = o.get("meets_deadline", pd.Series(True, index=o.index)).astype(bool)
        fixed_ok = o[o["policy"].str.removeprefix("oracle:").isin(UNIFORM_FIXED) & meets_all]
        o = o[o["scale"] == (fixed_ok if not fixed_ok.empty else o)["scale"].max()]
        bound = dict(zip(o["policy"].str.removeprefix("oracle:"), o["sessions_per_gpu_hour"]))
        meets = dict(zip(o["policy"].str.removeprefix("oracle:"), o.get("meets_deadline", pd.Series(True, index=o.index))))
        best_fixed = max((v for k, v in bound.items() if k in UNIFORM_FIXED and meets.get(k, True)), default=math.nan)
        table.loc[part.index, "oracle_sessions_per_gpu_hour"] = [bound.get(p, math.nan) for p in part["policy"]]
        table.loc[part.index, "oracle_vs_best_fixed"] = table.loc[part.index, "oracle_sessions_per_gpu_hour"] / best_fixed
        table.loc[part.index, "oracle_vs_static_per_model"] = (
            table.loc[part.index, "oracle_sessions_per_gpu_hour"] / bound.get("static-per-model", math.nan))
    return table.loc[:, list(CAPACITY_COLUMNS)]


def parallelism_experiment(
    traces: Sequence[str | pathlib.Path | pd.DataFrame | TraceInput],
    *,
    gpus: int = 64,
    scales: Sequence[float] = (0.5, 1.0, 1.5),
    policies: Sequence[str] = tuple(POLICIES),
    target: float = 0.99,
    admission_s: float = 10.0,
    config: SimConfig | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    out_dir: str | pathlib.Path | None = None,
    plots: bool = False,
    record_chunks: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every policy at every scale on every trace; returns (summary, capacity table).

    With ``out_dir`` it writes ``summary.csv`` (one row per run, the usual columns and
    the parallelism ones), ``capacity.csv``, ``oracle.csv``, ``runs/``, ``results.zarr``
    and ``config.yaml``.
    """
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown parallelism policies {unknown}; known: {list(POLICIES)}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if not 0 < target <= 1:
        raise ValueError(f"target attainment must be in (0, 1], got {target}")
    config = config if config is not None else SimConfig.from_config()
    rows, oracle_rows, chunks, intervals = [], [], {}, {}
    for scale in scales:
        for trace in load_traces(list(traces), duration_s=duration_s, scale=float(scale), seed=seed):
            name = trace.name
            for label in policies:
                row, ch, iv = run_policy(trace, label, gpus, config, record_chunks=record_chunks)
                rows.append(row)
                if out_dir is not None:  # each finished run at once: a long sweep cut short keeps its rows
                    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(rows).to_csv(pathlib.Path(out_dir) / "summary.partial.csv", index=False)
                key = run_label(name, f"{label}@{scale:g}")
                if ch is not None:
                    chunks[key] = ch
                intervals[key] = iv
                oracle_rows.append(oracle_row(trace, label, gpus, config))
    summary = pd.DataFrame(rows)
    oracles = pd.DataFrame(oracle_rows)
    capacity = capacity_table(summary, oracles, target, admission_s)
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        table = summary.assign(policy=[f"{p}@{s:g}" for p, s in zip(summary["policy"], summary["scale"])],
                               parallelism=summary["policy"])
        write_outputs(out, chunks, intervals, table, {
            "gpus": gpus, "scales": list(scales), "target": target, "admission_s": admission_s,
            "policies": list(policies),
            "latency": config.latency.label(), "max_batch": config.max_batch, "seed": seed,
            "transform_fixed_s": config.transform_fixed_s, "duration_s": duration_s,
        }, plots=plots)
        capacity.to_csv(out / "capacity.csv", index=False)
        oracles.to_csv(out / "oracle.csv", index=False)
    return summary, capacity


def capacity_from(dirs: Sequence[str | pathlib.Path], target: float = 0.99,
                  admission_s: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The capacity table of earlier runs (no simulation): their ``summary.csv`` and ``oracle.csv``.

    For a grid run as several commands (more scales or policies later); returns
    (summary, oracles, capacity). A run found in two folders counts once (the last).
    """
    summaries, oracles = [], []
    for d in dirs:
        d = pathlib.Path(d)
        table = pd.read_csv(d / "summary.csv")
        if "parallelism" in table:  # the written summary labels runs policy@scale
            table = table.assign(policy=table["parallelism"])
        summaries.append(table.assign(source=str(d)))
        if (d / "oracle.csv").is_file():
            oracles.append(pd.read_csv(d / "oracle.csv"))
    if not summaries:
        raise ValueError("give at least one folder with a summary.csv of `turboserve experiment parallelism`")
    summary = pd.concat(summaries, ignore_index=True).drop_duplicates(["trace", "policy", "scale"], keep="last")
    summary = summary.sort_values(["trace", "scale"], kind="stable").reset_index(drop=True)
    oracle = (pd.concat(oracles, ignore_index=True).drop_duplicates(["trace", "policy", "scale"], keep="last")
              if oracles else pd.DataFrame(columns=["trace", "policy", "scale", "sessions_per_gpu_hour"]))
    return summary, oracle, capacity_table(summary, oracle, target, admission_s)


def oracle_table(
    traces: Sequence[str | pathlib.Path | pd.DataFrame | TraceInput],
    *,
    gpus: int = 64,
    scales: Sequence[float] = (1.0,),
    policies: Sequence[str] = tuple(POLICIES),
    config: SimConfig | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    any_degrees: Sequence[int] = (4, 8),
) -> pd.DataFrame:
    """Only the oracle rows (no simulation), with each policy's bound over the best fixed degree
    whose units meet every model's deadline (``vs_best_fixed``).

    ``any_degrees``: for each ``k``, a row ``oracle:any-degree<=k``, the bound of every policy
    whose groups have a degree dividing the model's heads up to ``k``
    (:func:`any_degree_oracle_row`), not only the degrees of ``policies``.
    """
    config = config if config is not None else SimConfig.from_config()
    rows = []
    for scale in scales:
        for trace in load_traces(list(traces), duration_s=duration_s, scale=float(scale), seed=seed):
            rows += [oracle_row(trace, label, gpus, config) for label in policies]
            rows += [any_degree_oracle_row(trace, gpus, config, k) for k in any_degrees]
    table = pd.DataFrame(rows)
    for _, part in table.groupby(["trace", "scale"], sort=False):
        fixed = part[part["policy"].str.removeprefix("oracle:").isin(UNIFORM_FIXED) & part["meets_deadline"]]
        static = part.loc[part["policy"] == "oracle:static-per-model", "sessions_per_gpu_hour"]
        table.loc[part.index, "vs_best_fixed"] = part["sessions_per_gpu_hour"] / fixed["sessions_per_gpu_hour"].max()
        table.loc[part.index, "vs_static_per_model"] = part["sessions_per_gpu_hour"] / static.max()
    return table


def format_capacity(capacity: pd.DataFrame) -> str:
    """The capacity table as aligned text."""
    return capacity.to_string(index=False, float_format=lambda x: f"{x:.3g}")
