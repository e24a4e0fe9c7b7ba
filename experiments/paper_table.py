"""The paper table: TurboServe against the baselines and the oracle, on a set of traces.

Runs, for each trace, in the simulator with the same latency model and mechanism costs:

==========================  ==================  ==============  ============
label                       placement           autoscaling     offload
==========================  ==================  ==============  ============
``static-peak``             least-loaded        fixed(gpus)     never
``hpa+least-loaded``        least-loaded        hpa             never
``hpa+migration-aware``     migration-aware     hpa             never
``turboserve``              migration-aware     load-driven     idle-timeout
``oracle``                  offline lower bound on cost (see :mod:`experiments.sim.oracle`)
==========================  ==================  ==============  ============

Every run gets the same cluster bounds (at most ``gpus`` workers; autoscaled runs start
with ``turboserve.autoscale.minimum`` warm workers, static peak with all ``gpus``), the
same per-worker batch cap and the same mechanism costs (``turboserve.simulator.*``).
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from experiments.results import run_label, summary_row, write_outputs
from experiments.sim.config import PolicySet, PolicySpec, SimConfig
from experiments.sim.models import model_cost
from experiments.sim.oracle import best_batch, oracle_bound, oracle_peak
from experiments.sim.pools import prepare_pools, run_pools, share_gpus
from experiments.sim.result import SimResult
from experiments.sim.run import summary_of
from framework import config as tconfig

POLICY_LABELS = ("static-peak", "hpa+least-loaded", "hpa+migration-aware", "turboserve")
ORACLE = "oracle"


@dataclass(frozen=True, slots=True)
class TraceInput:
    """A named trace DataFrame (trace schema)."""

    name: str
    frame: pd.DataFrame
    scale: float | None = None  # the load scale a scenario was generated at


def load_traces(
    traces: Sequence[str | pathlib.Path | pd.DataFrame | TraceInput | tuple[str, pd.DataFrame]],
    *,
    duration_s: float | None = None,
    scale: float | str = 1.0,
    seed: int = 0,
    model: str | None = None,
    gpus: int | None = None,
    config: SimConfig | None = None,
    max_batch: int | str = "slo",
) -> list[TraceInput]:
    """Resolve trace files, scenario names and DataFrames into :class:`TraceInput` s, scaled.

    A string naming an existing file is read with :func:`traces.io.read_trace`; any other
    string is a scenario name for :func:`traces.scenarios.scenario` (with ``duration_s``,
    ``seed``, ``model``). ``scale`` applies to both: a scenario is generated at that
    load scale; a trace file (or DataFrame) is scaled by whole sessions with
    :func:`traces.transform.scale_sessions` (seeded: ``scale < 1`` keeps each session
    with that probability, so the arrival, idle and close pattern of the kept sessions
    is the trace's own). ``scale="fit"`` picks the scale whose peak demand (the
    oracle's peak GPU count under ``config``'s latency model) is about ``gpus``, as
    ServeGen scales rates to a cluster. Raises FileNotFoundError / ValueError with the name.
    """
    if scale == "fit" and gpus is None:
        raise ValueError("scale='fit' needs gpus (the cluster size to fit the peak to)")
    out = []
    for k, item in enumerate(traces):
        if isinstance(item, TraceInput):
            out.append(item)
            continue
        if isinstance(item, tuple):
            name, make = str(item[0]), _scaler(item[1], seed)
        elif isinstance(item, pd.DataFrame):
            name, make = f"trace{k}", _scaler(item, seed)
        else:
            path = pathlib.Path(item)
            if path.is_file():
                from traces.io import read_trace

                name, make = path.stem, _scaler(read_trace(path), seed)
            elif path.suffix in (".parquet", ".csv") or path.parent != pathlib.Path("."):
                raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
            else:
                from traces.scenarios import SCENARIOS, scenario

                if str(item) not in SCENARIOS:
                    raise ValueError(f"{str(item)!r} is neither a trace file nor a scenario; scenarios: {SCENARIOS}")

                def make(x: float, _name: str = str(item)) -> pd.DataFrame:
                    return scenario(_name, duration_s=duration_s, scale=x, seed=seed, model=model)

                name = str(item)
        if scale == "fit":
            x, df = fit_scale(make, gpus, config, max_batch)
            out.append(TraceInput(name, df, x))
        else:
            out.append(TraceInput(name, make(float(scale)), float(scale)))
    return out


def _scaler(frame: pd.DataFrame, seed: int):
    from traces.transform import scale_sessions

    return lambda x: scale_sessions(frame, x, seed=seed)


def fit_scale(make, gpus: int, config: SimConfig | None, max_batch: int | str = "slo") -> tuple[float, pd.DataFrame]:
    """``(scale, trace)`` with the trace's peak demand within 5% of ``gpus`` (a few secant steps).

    Peak demand grows about linearly with the scale (not exactly: sampling noise,
    per-client windows); after four steps the closest trace is kept.
    """
    x, df = 1.0, make(1.0)
    best = None
    for _ in range(5):
        peak = max(peak_gpus(df, config, max_batch), 1)
        err = abs(peak - gpus)
        if best is None or err < best[0]:
            best = (err, x, df)
        if err <= 0.05 * gpus:
            break
        x *= gpus / peak
        df = make(x)
    _, x, df = best
    return round(x, 4), df


def peak_gpus(trace: pd.DataFrame, config: SimConfig | None = None, max_batch: int | str = "slo") -> int:
    """The oracle's peak GPU count for ``trace`` (summed over model pools)."""
    base = config if config is not None else SimConfig.from_config()
    return sum(oracle_peak(wl, **_oracle_args(model, wl, base, max_batch)) for model, wl in prepare_pools(trace).items())


def _oracle_args(model: str, wl, base: SimConfig, max_batch: int | str) -> dict:
    """The oracle's view of one model pool: its latency, SLO, batch cap, state and memory."""
    cost = model_cost(model)
    return dict(
        latency=base.latency.model_for(model),
        slo_s=base.slo_s if base.slo_s is not None else float(pd.Series(wl.period_s).median()),
        max_batch=slo_batch_cap(model, base) if max_batch == "slo" else int(max_batch),
        state_bytes=_state_bytes(model, wl),
        memory_bytes=base.gpu_memory_bytes - cost.weights_bytes,
    )


def _oracles(pools: dict, base: SimConfig, max_batch: int | str, end: float | None, gpus_of: dict | None):
    caps, oracles = {}, {}
    for model, wl in pools.items():
        args = _oracle_args(model, wl, base, max_batch)
        caps[model] = args["max_batch"]
        oracles[model] = oracle_bound(wl, **args, end_s=end, gpus=None if gpus_of is None else gpus_of[model],
                                      startup_s=base.worker_startup_s, start_s=base.measure_from_s)
    return caps, oracles


def _state_bytes(model: str, wl) -> int:
    cost = model_cost(model)
    return int(max(cost.state_bytes(h, w) for h, w in set(zip(wl.height, wl.width))))  # each size once


def slo_batch_cap(model: str, config: SimConfig) -> int:
    """The largest batch whose predicted step meets the SLO (at the model's reference size)."""
    cost = model_cost(model)
    latency = config.latency.model_for(model)
    slo = config.slo_s if config.slo_s is not None else 0.75
    return best_batch(latency, slo, config.max_batch, cost.state_bytes(), config.gpu_memory_bytes - cost.weights_bytes)


def valve_batch_cap(model: str, config: SimConfig) -> int:
    """The largest batch whose *degraded* step (``valve_step_ratio`` of the full one) meets the SLO."""
    cost = model_cost(model)
    slo = config.slo_s if config.slo_s is not None else 0.75
    return best_batch(config.latency.model_for(model), slo / config.valve_step_ratio, config.max_batch,
                      cost.state_bytes(), config.gpu_memory_bytes - cost.weights_bytes)


def policy_sets(gpus: int, *, new_session_bytes: int, worker_memory: int, max_batch: int) -> dict[str, PolicySet]:
    """The four simulated policy sets for a pool of ``gpus`` workers, parameters from the config."""
    from framework.control_settings import default_policy_params

    placement = {"new_session_bytes": int(new_session_bytes)}
    migration = {**placement, "min_gain": float(tconfig.get("control.migration-gain"))}
    sizes = {"max_batch": max_batch, "worker_memory": worker_memory}
    hpa = default_policy_params("least-loaded", "hpa", "never", **sizes)["autoscaling"]
    # TurboServe: the live loop's parameters (one mapping from the config). It keeps the
    # in-stream worst case low: it moves an active session only to fix a worker that
    # misses the SLO, an idle resident session keeps its batch slot, and a drained worker
    # waits for its active sessions' bursts to end (their idle state is offloaded)
    # instead of moving them. The baselines' migration-aware placement keeps its own rules.
    turbo = default_policy_params("migration-aware", "load-driven", "idle-timeout", **sizes)
    turboserve_placement = {**placement, **turbo["placement"]}
    load_driven, offload = turbo["autoscaling"], turbo["offload"]
    return {
        "static-peak": PolicySet.of("least-loaded", "fixed", "never", placement_params=placement,
                                    autoscaling_params={"n": gpus}, name="static-peak"),
        "hpa+least-loaded": PolicySet.of("least-loaded", "hpa", "never", placement_params=placement,
                                         autoscaling_params=hpa, name="hpa+least-loaded"),
        "hpa+migration-aware": PolicySet.of("migration-aware", "hpa", "never", placement_params=migration,
                                            autoscaling_params=hpa, name="hpa+migration-aware"),
        "turboserve": PolicySet.of("migration-aware", "load-driven", "idle-timeout", placement_params=turboserve_placement,
                                   autoscaling_params=load_driven, offload_params=offload, name="turboserve"),
    }


def resolve_policy(label: Any, sets: dict[str, PolicySet], gpus: int) -> PolicySet:
    """A paper label (:data:`POLICY_LABELS`) or a ``"placement+autoscaling+offload"`` triple
    of registry names (built with the same parameters as the paper sets); a
    :class:`PolicySet` is returned as is; a callable is a builder called with
    ``(sets, gpus)`` (the pool's paper sets and GPU count)."""
    if isinstance(label, PolicySet):
        return label
    if callable(label):  # a builder: (the pool's paper sets, its GPUs) -> PolicySet
        return label(sets, gpus)
    if label in sets:
        return sets[label]
    parts = label.split("+")
    if len(parts) != 3:
        raise ValueError(
            f"unknown policy {label!r}; use one of {list(POLICY_LABELS)} or 'placement+autoscaling+offload'"
        )
    placement, autoscaling, offload = parts
    by_role = {
        ("placement", "migration-aware"): sets["turboserve"].placement,
        ("autoscaling", "hpa"): sets["hpa+least-loaded"].autoscaling,
        ("autoscaling", "load-driven"): sets["turboserve"].autoscaling,
        ("autoscaling", "fixed"): sets["static-peak"].autoscaling,
        ("offload", "idle-timeout"): sets["turboserve"].offload,
    }
    base_placement = sets["static-peak"].placement
    specs = []
    for kind, name in (("placement", placement), ("autoscaling", autoscaling), ("offload", offload)):
        spec = by_role.get((kind, name))
        if spec is None:
            params = dict(base_placement.params) if kind == "placement" else {}
            spec = PolicySpec(kind, name, params)
        specs.append(spec)
    return PolicySet(*specs, name=label)


@dataclass(frozen=True, slots=True)
class PreparedTrace:
    """What every run of one trace on ``gpus`` GPUs shares, computed once (:func:`prepare_trace`).

    The model pools (:func:`experiments.sim.pools.prepare_pools`), their GPU shares, SLO
    batch caps and oracles, the sessions active at time 0 and the device bytes of the
    largest session state of each pool. A frontier
    runs some thirty policies on each (trace, seed): they share this instead of each
    preparing the trace again. ``config`` is the one the caps and oracles were computed
    with; :func:`run_trace` refuses a config that differs in what they depend on.
    """

    trace: TraceInput
    gpus: int
    max_batch: int | str
    config: SimConfig
    pools: dict[str, Any]  # model -> experiments.sim.workload.Workload
    end_s: float
    share: dict[str, int]
    caps: dict[str, int]
    oracles: dict[str, Any]  # model -> experiments.sim.oracle.OracleResult
    at_start: dict[str, int]
    state_bytes: dict[str, int]

    @property
    def name(self) -> str:
        return self.trace.name


def _oracle_inputs(config: SimConfig) -> tuple:
    """The fields of a config the caps and oracles of a :class:`PreparedTrace` depend on."""
    return (config.latency, config.slo_s, config.max_batch, config.gpu_memory_bytes, config.worker_startup_s,
            config.measure_from_s)


def prepare_trace(trace: TraceInput, gpus: int, *, config: SimConfig | None = None,
                  max_batch: int | str = "slo") -> PreparedTrace:
    """The :class:`PreparedTrace` of ``trace`` on ``gpus`` GPUs (``config``: default from the dask config)."""
    base = config if config is not None else SimConfig.from_config()
    pools = prepare_pools(trace.frame)
    end = float(trace.frame["time_s"].max())
    _, uncapped = _oracles(pools, base, max_batch, end, None)
    share = share_gpus(gpus, {m: o.peak_gpus for m, o in uncapped.items()})
    caps, oracles = _oracles(pools, base, max_batch, end, share)
    at_start = {m: initial_active(wl) for m, wl in pools.items()}
    nbytes = {m: _state_bytes(m, wl) for m, wl in pools.items()}
    return PreparedTrace(trace, gpus, max_batch, base, pools, end, share, caps, oracles, at_start, nbytes)


def run_trace(
    trace: TraceInput | PreparedTrace,
    gpus: int,
    *,
    policies: Sequence[str | PolicySet] = POLICY_LABELS,
    config: SimConfig | None = None,
    max_batch: int | str = "slo",
    record_chunks: bool = True,
    with_oracle: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Simulate ``policies`` (labels of :data:`POLICY_LABELS`) and the oracle on one trace.

    ``max_batch="slo"`` caps every worker at the SLO batch ``b*`` of its model (what an
    operator would configure for a latency target); an int caps it there. ``trace`` may
    be a :class:`PreparedTrace` (:func:`prepare_trace`) for these ``gpus``, ``max_batch``
    and a ``config`` that differs from its own at most in what the oracles do not use
    (the quality valve, say); a ValueError says what differs otherwise.

    Returns summary rows, chunk tables and interval tables (keyed by run label).
    """
    for label in policies:  # fail before simulating anything
        if isinstance(label, PolicySet) or callable(label):
            continue
        if label not in POLICY_LABELS and len(label.split("+")) != 3:
            raise ValueError(f"unknown policy {label!r}; use one of {list(POLICY_LABELS)} or 'placement+autoscaling+offload'")
    base = config if config is not None else SimConfig.from_config()
    if isinstance(trace, PreparedTrace):
        prepared = trace
        if (prepared.gpus, prepared.max_batch) != (gpus, max_batch):
            raise ValueError(f"trace {prepared.name!r} was prepared for gpus={prepared.gpus}, max_batch="
                             f"{prepared.max_batch!r}, not gpus={gpus}, max_batch={max_batch!r}; prepare it again")
    else:
        prepared = prepare_trace(trace, gpus, config=base, max_batch=max_batch)
    trace, oracles = prepared.trace, prepared.oracles
    rows, chunks, intervals = [], {}, {}
    for label in policies:
        t0 = time.perf_counter()
        result = simulate(prepared, label, base, record_chunks=record_chunks)
        row = summary_of(result, trace=trace.name, gpus=gpus)
        row["sim_wall_s"] = round(time.perf_counter() - t0, 2)
        row["scale"] = trace.scale
        rows.append(row)
        key = run_label(trace.name, result.policy)
        if record_chunks:
            chunks[key] = result.chunks
        intervals[key] = result.intervals
    if with_oracle:
        rows.append({**_oracle_row(trace.name, gpus, oracles), "scale": trace.scale})
    return rows, chunks, intervals


def simulate(prepared: PreparedTrace, policy: str | PolicySet | Callable[..., PolicySet], config: SimConfig,
             *, record_chunks: bool = True) -> SimResult:
    """One run of ``policy`` on a prepared trace, as :func:`run_trace` makes it: its whole :class:`SimResult`.

    ``policy``: a label of :data:`POLICY_LABELS`, a ``placement+autoscaling+offload``
    label, a :class:`PolicySet` or a builder of one. Every pool gets its batch cap
    ``b*`` (the valve's batch cap on the quality valve) and starts warm at the size its
    load at time 0 needs. ``config`` may differ from ``prepared.config`` only where the
    oracles do not look (the quality valve, say); a ValueError says so otherwise.
    """
    if _oracle_inputs(prepared.config) != _oracle_inputs(config):
        raise ValueError(f"trace {prepared.name!r} was prepared with another latency, SLO, batch cap, GPU memory, "
                         "start-up time or measurement window than this config; prepare it with this config")
    caps, minimum = prepared.caps, int(tconfig.get("autoscale.minimum"))

    def setup(model: str, pool_gpus: int) -> tuple[PolicySet, SimConfig]:
        cost = model_cost(model)
        sets = policy_sets(pool_gpus, new_session_bytes=prepared.state_bytes[model],
                           worker_memory=int(config.gpu_memory_bytes - cost.weights_bytes), max_batch=caps[model])
        policies = resolve_policy(policy, sets, pool_gpus)
        static = policies.autoscaling.name == "fixed"
        warm = pool_gpus if static else warm_workers(prepared, model, pool_gpus)
        # With the quality valve a worker's engine may run a degraded step up to the
        # batch whose degraded step meets the SLO; the policies still place and size
        # the cluster for b* (the valve absorbs overflows, it is not capacity to fill).
        cap = valve_batch_cap(model, config) if config.quality_valve and prepared.max_batch == "slo" else caps[model]
        cfg = config.with_(initial_workers=warm, min_workers=min(minimum, pool_gpus), max_workers=pool_gpus,
                           max_batch=cap, placement_batch=min(caps[model], cap), end_s=prepared.end_s,
                           record_chunks=record_chunks)
        return policies, cfg

    return run_pools(prepared.pools, setup, prepared.share)


def warm_workers(prepared: PreparedTrace, model: str, pool_gpus: int) -> int:
    """Workers an autoscaled run of ``model``'s pool starts with, warm.

    The size the load at time 0 needs (the trace starts in steady state), never below
    ``turboserve.autoscale.minimum`` nor above the pool.
    """
    at_start = math.ceil(prepared.at_start[model] / prepared.caps[model])
    return min(max(int(tconfig.get("autoscale.minimum")), at_start, 1), pool_gpus)


def _oracle_row(trace: str, gpus: int, oracles: dict) -> dict[str, Any]:
    # Pools are independent: cost adds up, the worst latency is the worst pool's.
    values = list(oracles.values())
    stats = {
        "max_latency_s": max(o.max_latency_s for o in values),
        "p99_latency_s": max(o.p99_latency_s for o in values),
        "p50_latency_s": max(o.p50_latency_s for o in values),
        "slo_attainment": min(o.slo_attainment for o in values),
    }
    extra = {"peak_workers": sum(o.peak_gpus for o in values), "b_star": ",".join(str(o.b_star) for o in values),
             "gpu_hours_startup": sum(o.gpu_seconds_startup for o in values) / 3600.0}
    return summary_row(trace=trace, policy=ORACLE, gpus=gpus, stats=stats,
                       gpu_seconds=sum(o.gpu_seconds for o in values), migrations=0, extra=extra)


def format_table(summary: pd.DataFrame) -> str:
    """The table as text: the contract columns plus p50, stalls, offloads, and the change
    of max latency and GPU-hours against static peak provisioning of the same trace."""
    df = summary.copy()
    out = []
    for trace, group in df.groupby("trace", sort=False):
        ref = group[group["policy"] == "static-peak"]
        g = group.copy()
        if len(ref):
            r = ref.iloc[0]
            g["d_max_lat_%"] = 100 * (g["max_latency_s"] / r["max_latency_s"] - 1)
            g["d_gpu_h_%"] = 100 * (g["gpu_hours"] / r["gpu_hours"] - 1)
        out.append(g)
    table = pd.concat(out, ignore_index=True)
    cols = ["trace", "policy", "gpus", "max_latency_s", "p99_latency_s", "slo_attainment", "gpu_hours",
            "migrations", "max_latency_after_first_s", "ttfc_p99_s", "offloads", "never_served", "peak_workers",
            "d_max_lat_%", "d_gpu_h_%"]
    cols = [c for c in cols if c in table.columns]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def paper_table(
    traces: Sequence[str | pathlib.Path | pd.DataFrame | TraceInput | tuple[str, pd.DataFrame]],
    gpus: int = 64,
    out_dir: str | pathlib.Path | None = None,
    seed: int = 0,
    *,
    duration_s: float | None = 3600.0,
    scale: float | str = 1.0,
    model: str | None = None,
    policies: Sequence[str] = POLICY_LABELS,
    config: SimConfig | None = None,
    max_batch: int | str = "slo",
    plots: bool = True,
    echo: bool = True,
) -> pd.DataFrame:
    """Run TurboServe, the baselines and the oracle on ``traces``; print and write the table.

    Parameters
    ----------
    traces
        Trace files, scenario names (generated with ``duration_s``, ``scale``, ``seed``,
        ``model``) or DataFrames.
    gpus
        Cluster size: the fixed size of static peak provisioning and the autoscalers' max.
    out_dir
        If given, the output folder (:func:`experiments.results.write_outputs`).
    max_batch
        Per-worker batch cap: ``"slo"`` (the SLO batch ``b*`` of the model) or an int.

    Returns
    -------
    The summary table (one row per trace x policy, oracle included).
    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    inputs = load_traces(traces, duration_s=duration_s, scale=scale, seed=seed, model=model, gpus=gpus, config=config,
                         max_batch=max_batch)
    rows: list[dict[str, Any]] = []
    chunks: dict[str, pd.DataFrame] = {}
    intervals: dict[str, pd.DataFrame] = {}
    with tqdm(total=len(inputs), desc="paper table", unit="trace", disable=not echo) as bar:
        for trace in inputs:
            bar.set_postfix_str(trace.name)
            r, c, i = run_trace(trace, gpus, policies=policies, config=config, max_batch=max_batch)
            rows += r
            chunks.update(c)
            intervals.update(i)
            bar.update()
    summary = pd.DataFrame(rows)
    if echo:
        print(format_table(summary))
    if out_dir is not None:
        cfg = config if config is not None else SimConfig.from_config()
        resolved = {
            **tconfig.resolved(),
            "experiment": {
                "kind": "paper-table", "gpus": gpus, "seed": seed, "duration_s": duration_s, "scale": scale,
                "model": model, "max_batch": max_batch, "traces": [t.name for t in inputs],
                "policies": list(policies), "sim_config": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
            },
        }
        write_outputs(out_dir, chunks, intervals, summary, resolved, plots=plots)
    return summary


def initial_active(wl) -> int:
    """Sessions active right after the trace events at the first instant."""
    from experiments.sim.oracle import active_series

    times, active = active_series(wl)
    if not len(times):
        return 0
    k = int((times <= times[0]).sum()) - 1
    return int(active[k])
