"""Cost-tail frontiers: each policy family swept over its main knob, on the same traces.

``turboserve experiment frontier (--trace FILE | --scenario NAME)... --gpus N --seeds 0,1,2
--out DIR`` runs, for every trace and seed, every family at every value of its knob in
the simulator, and writes:

- ``DIR/frontier.csv``: one row per run (``trace, policy, knob, seed, gpu_hours,
  instream_max_s, instream_p99_s, ttfc_p99_s, slo_attainment, chunks,
  degraded_chunks`` and more columns of the summary);
- ``DIR/headline.csv``: TurboServe against each baseline family
  (:func:`experiments.headline.headline`), for the in-stream worst case and p99;
- ``DIR/frontier.png``: GPU-hours against the in-stream worst case and p99, one line per
  family (its points ordered by knob), per trace;
- ``DIR/config.yaml``: the resolved configuration and the experiment's settings.

The families (:data:`FAMILIES`) are the standard configurations of real systems, all
batching (coalesced steps are part of every baseline, as in the paper), with their
documented defaults as the standard knob value, plus ``static-iso-cost`` (a fixed
cluster of TurboServe's mean GPU count) and TurboServe itself. Baselines use the same
idle offload as TurboServe unless ``baseline_offload="never"`` (a config that keeps
idle state on its GPU: memory then binds much earlier). Each trace is loaded and scaled
once (``--scale fit``: its peak demand is about ``--gpus``) and prepared once
(:class:`~experiments.paper_table.PreparedTrace`: pools, caps, oracles, shared by its
runs and its oracle row) while the local cluster (one process per core) starts in a
thread; then the runs go out as Dask tasks over it with a progress bar.

With a measurement window (``SimConfig.measure_from_s`` = ``W``, ``--measure-from-s W``)
every row covers ``[W, end]`` of runs that still start at 0: a run starts warm at the
size its first instant needs, with no load history, and each policy then enters the
window with the cluster and state it provisioned itself. The oracle and the iso-cost
run's mean GPU count cover the same window; ``measure_from_s`` is a column.
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from experiments.headline import headline
from experiments.paper_table import ORACLE, PreparedTrace, TraceInput, load_traces, prepare_trace, run_trace
from experiments.sim.config import PolicySet, PolicySpec, SimConfig

REFERENCE = "turboserve"
FRONTIER_COLUMNS = (
    "trace", "policy", "knob", "seed", "gpu_hours", "instream_max_s", "instream_p99_s", "ttfc_p99_s",
    "slo_attainment", "chunks", "degraded_chunks",
)
_EXTRA_COLUMNS = ("resume_wait_p99_s", "stalls", "max_latency_s", "p99_latency_s", "migrations", "offloads",
                  "never_served", "peak_workers", "scale", "valve", "measure_from_s")


@dataclass(frozen=True, slots=True)
class Family:
    """One policy family: placement + autoscaling (+ offload), swept over one knob.

    ``param`` names the swept parameter of the autoscaler (``share_of_peak`` for static
    provisioning: ``n = round(share * gpus)``); ``default`` is its documented standard
    value, the configuration the headline table compares against.
    """

    name: str
    placement: str
    autoscaling: str
    param: str
    values: tuple[float, ...]
    default: float
    extra: tuple[tuple[str, Any], ...] = ()  # fixed autoscaler parameters (documented defaults)
    placement_extra: tuple[tuple[str, Any], ...] = ()


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("static", "least-loaded", "fixed", "share_of_peak", (0.7, 0.85, 1.0), 1.0),
    # Kubernetes HPA: sync 15 s, tolerance 0.1, 300 s scale-down stabilisation.
    Family("hpa+least-loaded", "least-loaded", "hpa", "target_utilisation", (0.6, 0.8, 1.0), 0.8,
           (("sync_period_s", 15.0), ("tolerance", 0.1), ("downscale_stabilisation_s", 300.0))),
    Family("hpa+migration-aware", "migration-aware", "hpa", "target_utilisation", (0.6, 0.8, 1.0), 0.8,
           (("sync_period_s", 15.0), ("tolerance", 0.1), ("downscale_stabilisation_s", 300.0))),
    # Ray Serve: upscale delay 30 s, downscale delay 600 s, look-back 30 s.
    Family("ray-serve+least-loaded", "least-loaded", "ray-serve", "target_utilisation", (0.6, 0.8, 1.0), 0.8),
    Family("ray-serve+migration-aware", "migration-aware", "ray-serve", "target_utilisation", (0.6, 0.8, 1.0), 0.8),
    # Dynamo planner-like: 180 s adjustment interval, forecast of the next interval's peak.
    Family("predictive+migration-aware", "migration-aware", "predictive", "target_utilisation", (0.6, 0.8, 1.0), 0.8),
    # TurboServe's reference rules (TeleFuser): rho 0.75-0.9, 5 s ticks, at most 3 moves per 5 s.
    Family("turboserve-ref", "migration-aware", "turboserve-ref", "rho", (0.75, 0.85, 0.95), 0.85,
           placement_extra=(("max_migrations", 1),)),
    # TurboServe: the share of b* its budget plans for; placement never puts more than b*
    # active sessions on a worker, so above 1.0 the sessions the budget leaves out wait
    # for admission (cheaper, later first chunks) instead of slowing a stream.
    Family(REFERENCE, "migration-aware", "load-driven", "target_utilisation", (0.9, 1.0, 1.1, 1.25), 1.0),
)}
#: The families a frontier runs by default (``static-iso-cost`` is added after TurboServe).
DEFAULT_FAMILIES = tuple(FAMILIES)
ISO_COST = "static-iso-cost"


def _policy_set(family: Family, knob: float, offload: str, sets: dict[str, PolicySet], gpus: int) -> PolicySet:
    """The :class:`PolicySet` of ``family`` at ``knob``, with the pool's base parameters."""
    base = sets["turboserve"]
    if family.name in (REFERENCE, NO_VALVE):
        placement = dict(base.placement.params)
    elif family.placement == "migration-aware":
        placement = dict(sets["hpa+migration-aware"].placement.params)
    else:
        placement = dict(sets["static-peak"].placement.params)
    placement.update(family.placement_extra)
    sizes = {k: base.autoscaling.params[k] for k in ("worker_max_batch", "worker_memory_bytes")}
    if family.autoscaling == "fixed":
        autoscaling = {"n": max(1, int(round(knob * gpus)))}
    elif family.autoscaling == "hpa":
        autoscaling = {**sets["hpa+least-loaded"].autoscaling.params, family.param: knob}
    elif family.autoscaling == "load-driven":
        autoscaling = {**base.autoscaling.params, family.param: knob}
    else:
        autoscaling = {**sizes, family.param: knob}
    autoscaling.update(family.extra)
    if offload == "never" and family.name not in (REFERENCE, NO_VALVE):
        off = PolicySpec("offload", "never", {})
    else:
        off = base.offload
    return PolicySet(PolicySpec("placement", family.placement, placement),
                     PolicySpec("autoscaling", family.autoscaling, autoscaling), off, name=family.name)


@dataclass(frozen=True, slots=True)
class Point:
    """One run of a frontier: a family at one knob value on one (trace, seed)."""

    trace: str
    seed: int
    family: str
    knob: float
    valve: bool = False


NO_VALVE = f"{REFERENCE} (no valve)"


def _family_of(name: str) -> Family:
    """The :class:`Family` a point's policy name stands for (iso-cost and no-valve rows included)."""
    if name in FAMILIES:
        return FAMILIES[name]
    if name == NO_VALVE:
        return replace(FAMILIES[REFERENCE], name=NO_VALVE)
    if name == ISO_COST:
        return replace(FAMILIES["static"], name=ISO_COST)
    raise ValueError(f"unknown policy family {name!r}; known: {sorted(FAMILIES)}, {ISO_COST!r}, {NO_VALVE!r}")


def run_point(point: Point, trace: TraceInput | PreparedTrace, gpus: int, config: SimConfig, offload: str) -> dict[str, Any]:
    """Simulate one :class:`Point`; its frontier row (``FRONTIER_COLUMNS`` first).

    ``trace``: prepared once per (trace, seed) (:func:`~experiments.paper_table.prepare_trace`,
    with ``config``) where many points share it, as :func:`frontier` does.
    """
    import framework.config  # noqa: F401  (registers the turboserve config defaults on a Dask worker)

    family = _family_of(point.family)
    builder = functools.partial(_policy_set, family, point.knob, offload)
    cfg = config.with_(quality_valve=point.valve)
    rows, _, _ = run_trace(trace, gpus, policies=[builder], config=cfg, record_chunks=False, with_oracle=False)
    row = rows[0]
    out = {"trace": point.trace, "policy": point.family, "knob": point.knob, "seed": point.seed,
           "valve": point.valve}
    for col in FRONTIER_COLUMNS[4:] + _EXTRA_COLUMNS:
        out.setdefault(col, row.get(col, float("nan")))
    out["degraded_chunks"] = int(row.get("degraded_chunks", 0))
    out["measure_from_s"] = cfg.measure_from_s
    out["sim_wall_s"] = row.get("sim_wall_s")
    return out


def frontier(
    traces: Sequence[str | pathlib.Path | pd.DataFrame | TraceInput],
    gpus: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | pathlib.Path | None = None,
    *,
    config: SimConfig | None = None,
    families: Sequence[str] = DEFAULT_FAMILIES,
    duration_s: float | None = 3600.0,
    scale: float | str = "fit",
    model: str | None = "wan-1.3b",
    baseline_offload: str = "idle-timeout",
    valve: bool | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the frontier experiment; return ``(frontier rows, headline table)``.

    Parameters
    ----------
    traces
        Scenario names or trace files (scaled with ``scale``, per seed).
    gpus
        Cluster size; ``scale="fit"`` fits each trace's peak demand to it.
    seeds
        Seeds: of the scenario generator, and of the thinning of trace files.
    config
        Simulator knobs and latency model (:class:`SimConfig`; default from the config).
    families
        Names in :data:`FAMILIES` (``"oracle"`` alone runs only the oracle rows, which
        every frontier has: one per trace and seed, ``policy="oracle"``).
    baseline_offload
        ``"idle-timeout"`` (baselines offload idle state as TurboServe does) or ``"never"``.
    valve
        Run TurboServe with the quality valve (its rows have ``valve=True``); ``None``:
        as ``config.quality_valve`` says. With the valve on, TurboServe also runs
        without it, under the policy name ``turboserve (no valve)``.
    n_workers
        Local Dask worker processes (default: the cores); ``0`` runs in this process.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    unknown = [f for f in families if f not in FAMILIES and f != ORACLE]
    if unknown:
        raise ValueError(f"unknown policy families {unknown}; known: {sorted(FAMILIES)}")
    if baseline_offload not in ("idle-timeout", "never"):
        raise ValueError(f"baseline_offload must be 'idle-timeout' or 'never', got {baseline_offload!r}")
    if not seeds:
        raise ValueError("give at least one seed")
    base = config if config is not None else SimConfig.from_config()
    use_valve = base.quality_valve if valve is None else bool(valve)
    base = base.with_(quality_valve=False)
    t0 = time.perf_counter()
    # The local cluster starts (its workers importing the simulator) while the traces load here.
    runner = _Runner(gpus, base, baseline_offload, n_workers, progress)
    with runner:
        table = _run_frontier(runner, traces, gpus, seeds, base, families, duration_s, scale, model, use_valve)
    loaded = runner.loaded
    table = pd.concat([table, pd.DataFrame([_oracle_row(name, seed, trace, gpus, base)
                                            for (name, seed), trace in loaded.items()])], ignore_index=True)
    table = table.reindex(columns=list(FRONTIER_COLUMNS) + [c for c in table.columns if c not in FRONTIER_COLUMNS])
    head = headline_of(table)
    wall = time.perf_counter() - t0
    if out_dir is not None:
        write_frontier(out_dir, table, head, settings={
            "kind": "frontier", "gpus": gpus, "seeds": list(seeds), "traces": [str(t) for t in traces],
            "families": list(families), "baseline_offload": baseline_offload, "valve": use_valve,
            "scale": scale, "duration_s": duration_s, "model": model, "wall_s": round(wall, 1),
            "scales": {f"{n}@{s}": t.trace.scale for (n, s), t in loaded.items()},
            "sim_config": {f: getattr(base, f) for f in base.__dataclass_fields__},
        })
    return table, head


def _run_frontier(runner: "_Runner", traces: Sequence[Any], gpus: int, seeds: Sequence[int], base: SimConfig,
                  families: Sequence[str], duration_s: float | None, scale: float | str, model: str | None,
                  use_valve: bool) -> pd.DataFrame:
    """Load and prepare the traces, then run every point of :func:`frontier` on ``runner`` (rows in completion order)."""
    # Each (trace, seed) is loaded and prepared once (pools, GPU shares, caps, oracles):
    # every point and the oracle row of that trace share it.
    loaded: dict[tuple[str, int], PreparedTrace] = {}
    for seed in seeds:
        for trace in load_traces(list(traces), duration_s=duration_s, scale=scale, seed=seed, model=model,
                                 gpus=gpus, config=base):
            loaded[(trace.name, seed)] = prepare_trace(trace, gpus, config=base)
    points = []
    for (name, seed) in loaded:
        for fam in (f for f in families if f != ORACLE):
            for knob in FAMILIES[fam].values:
                if fam == REFERENCE:
                    points.append(Point(name, seed, fam, knob, valve=use_valve))
                    if use_valve:
                        points.append(Point(name, seed, NO_VALVE, knob))
                else:
                    points.append(Point(name, seed, fam, knob))
    # TurboServe's runs first: each (trace, seed)'s static run at its mean GPU count
    # (iso-cost) is sent as soon as the standard knob's run is done, beside the others.
    points.sort(key=lambda p: p.family != REFERENCE)
    runner.load(loaded)
    return pd.DataFrame(runner.run(points, "frontier", then=lambda row: _iso_cost_points(row, loaded, gpus)))


def _oracle_row(name: str, seed: int, trace: PreparedTrace, gpus: int, config: SimConfig) -> dict[str, Any]:
    """The offline oracle of one (trace, seed): its GPU-hours bound the cost of any policy."""
    rows, _, _ = run_trace(trace, gpus, policies=[], config=config, record_chunks=False, with_oracle=True)
    row = rows[0]
    return {"trace": name, "policy": ORACLE, "knob": float("nan"), "seed": seed, "gpu_hours": row["gpu_hours"],
            "gpu_hours_startup": row.get("gpu_hours_startup"),
            "slo_attainment": row["slo_attainment"], "peak_workers": row.get("peak_workers"), "scale": trace.trace.scale,
            "measure_from_s": config.measure_from_s}


def _iso_cost_points(row: dict[str, Any], loaded: dict, gpus: int) -> list[Point]:
    """After TurboServe's run at its default knob (``row``): a static run at its mean GPU count."""
    if row["policy"] != REFERENCE or row["knob"] != FAMILIES[REFERENCE].default:
        return []
    prepared = loaded[(row["trace"], row["seed"])]
    hours = (prepared.end_s - prepared.config.measure_from_s) / 3600.0  # the measured window's
    mean_gpus = float(row["gpu_hours"]) / hours if hours > 0 else float(gpus)
    return [Point(row["trace"], row["seed"], ISO_COST, round(max(1, round(mean_gpus)) / gpus, 4))]


class _Runner:
    """Runs points here (``n_workers=0``) or as tasks on one local Dask cluster kept for the experiment.

    The cluster starts in a thread on entering, so that its workers start and import the
    simulator while this process loads the traces; :meth:`load` hands the prepared traces
    over (scattered to every worker) once they are ready.
    """

    def __init__(self, gpus: int, config: SimConfig, offload: str, n_workers: int | None, progress: bool) -> None:
        self.gpus, self.config, self.offload, self.progress = gpus, config, offload, progress
        self.n_workers = n_workers if n_workers is not None else max(1, _cores())
        self.cluster = self.client = None
        self.loaded: dict = {}
        self.traces: dict = {}
        self._starting: Any = None

    def __enter__(self) -> "_Runner":
        if self.n_workers:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1, thread_name_prefix="frontier-cluster")
            self._starting = pool.submit(self._start)
            pool.shutdown(wait=False)  # the thread ends with the start
        return self

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0")
        self.client = Client(self.cluster)
        self.client.run(_import_simulator)

    def __exit__(self, *exc: Any) -> None:
        if self._starting is not None:
            self._starting.exception()  # wait for the start to end, whether it failed or not
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def load(self, loaded: dict) -> None:
        """The prepared traces the points run on, by (trace, seed); sent to every worker."""
        self.loaded = loaded
        if self._starting is not None:
            self._starting.result()  # a cluster that failed to start raises here
            self.traces = {key: self.client.scatter(t, broadcast=True) for key, t in loaded.items()}

    def run(self, points: list[Point], label: str,
            then: Callable[[dict[str, Any]], list[Point]] | None = None) -> list[dict[str, Any]]:
        """The rows of ``points`` (in completion order), with a progress bar.

        ``then(row)``: the points to run once ``row`` is done (sent at once, beside the rest).
        """
        rows: list[dict[str, Any]] = []
        with tqdm(total=len(points), desc=label, unit="run", disable=not self.progress or not points) as bar:
            def done(row: dict[str, Any]) -> list[Point]:
                rows.append(row)
                more = then(row) if then is not None else []
                bar.total += len(more)
                bar.update()
                return more

            if self.client is None:
                queue = list(points)
                while queue:
                    p = queue.pop(0)
                    queue += done(run_point(p, self.loaded[(p.trace, p.seed)], self.gpus, self.config, self.offload))
                return rows
            from distributed import as_completed

            pending = as_completed([self._submit(p) for p in points])
            for fut in pending:
                for p in done(fut.result()):
                    pending.add(self._submit(p))
        return rows

    def _submit(self, p: Point) -> Any:
        return self.client.submit(run_point, p, self.traces[(p.trace, p.seed)], self.gpus, self.config,
                                  self.offload, pure=False)


def _import_simulator() -> None:
    """Import what :func:`run_point` needs (on a worker, as the cluster starts)."""
    import experiments.frontier  # noqa: F401
    import framework.config  # noqa: F401


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_frontier(out_dir: str | pathlib.Path, table: pd.DataFrame, head: pd.DataFrame, *,
                   settings: dict[str, Any], plots: bool = True) -> pathlib.Path:
    """Write ``frontier.csv``, ``headline.csv``, ``config.yaml`` and ``frontier.png`` into ``out_dir``."""
    import yaml

    from experiments.results import _plain
    from framework import config as tconfig

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "frontier.csv", index=False)
    head.to_csv(out / "headline.csv", index=False)
    with (out / "config.yaml").open("w") as f:
        yaml.safe_dump(_plain({**tconfig.resolved(), "experiment": settings}), f, sort_keys=False)
    if plots:
        from experiments.plots import write_frontier_plot

        write_frontier_plot(out / "frontier.png", table)
    return out


#: The admission waits a cost reduction must not buy (``headline(admission=...)``).
ADMISSION_WAITS = ("ttfc_p99_s", "resume_wait_p99_s")


def headline_of(table: pd.DataFrame) -> pd.DataFrame:
    """The headline table of a frontier table: TurboServe against each family at its standard knob."""
    defaults: dict[str, float | None] = {name: f.default for name, f in FAMILIES.items()}
    defaults[ISO_COST] = None  # one point per (trace, seed): compared as it is
    defaults[NO_VALVE] = FAMILIES[REFERENCE].default
    return pd.concat([headline(table, REFERENCE, defaults, tail=tail, admission=ADMISSION_WAITS)
                      for tail in ("instream_max_s", "instream_p99_s")], ignore_index=True)


def format_headline(head: pd.DataFrame) -> str:
    """The headline table as text (percentages)."""
    if head.empty:
        return "(no baseline to compare)"
    same = "cost_reduction_same_admission" in head.columns
    lines = [f"{'baseline':30s} {'tail':15s} {'tail reduction at equal cost':>34s} "
             f"{'cost reduction at equal tail':>34s} {'uncovered':>10s}"
             + (f" {'... and no worse TTFC/resume p99':>34s}" if same else "")]
    for r in head.to_dict("records"):
        def pct(m, lo, hi, n):
            if not math.isfinite(m):
                return "n/a"
            ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if math.isfinite(lo) else ""
            return f"{100 * m:+.1f}%{ci} (n={n})"
        lines.append(
            f"{r['baseline']:30s} {r['tail']:15s} "
            f"{pct(r['tail_reduction'], r['tail_reduction_ci_low'], r['tail_reduction_ci_high'], r['n_tail']):>34s} "
            f"{pct(r['cost_reduction'], r['cost_reduction_ci_low'], r['cost_reduction_ci_high'], r['n_cost']):>34s} "
            f"{r['uncovered_points']:>4d}/{r['points']:<4d}"
            + (f" {pct(r['cost_reduction_same_admission'], r['cost_reduction_same_admission_ci_low'], r['cost_reduction_same_admission_ci_high'], r['n_same_admission']):>34s}"
               if same else ""))
    return "\n".join(lines)


def format_frontier(table: pd.DataFrame) -> str:
    """Each family's points, averaged over seeds per (trace, knob), with the oracle-free columns users read."""
    cols = ["gpu_hours", "instream_max_s", "instream_p99_s", "ttfc_p99_s", "resume_wait_p99_s", "slo_attainment",
            "degraded_chunks", "migrations"]
    cols = [c for c in cols if c in table.columns]
    mean = table.groupby(["trace", "policy", "knob"], sort=False, dropna=False)[cols].mean().reset_index()
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_rows", 1000):
        return mean.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def standard_points(table: pd.DataFrame) -> pd.DataFrame:
    """Each family at its standard knob (iso-cost at its one), per trace, seed means,
    with GPU-hours as a multiple of the oracle's (``x_oracle``; ``x_oracle_startup``: of
    the oracle that pays for worker start-ups, where the table has it) and the degraded share."""
    defaults = {name: f.default for name, f in FAMILIES.items()}
    defaults[NO_VALVE] = FAMILIES[REFERENCE].default
    keep = np.array([
        p in (ISO_COST, ORACLE) or (p in defaults and bool(np.isclose(k, defaults[p])))
        for p, k in zip(table["policy"], table["knob"].astype(float))
    ], dtype=bool)
    part = table[keep]
    cols = ["gpu_hours", "instream_max_s", "instream_p99_s", "ttfc_p99_s", "resume_wait_p99_s", "slo_attainment",
            "degraded_chunks", "chunks"]
    out = part.groupby(["trace", "policy"], sort=False)[cols].mean().reset_index()
    oracle = out[out["policy"] == ORACLE].set_index("trace")["gpu_hours"]
    out.insert(3, "x_oracle", out["gpu_hours"] / out["trace"].map(oracle))
    if "gpu_hours_startup" in part.columns:
        paid = part[part["policy"] == ORACLE].groupby("trace")["gpu_hours_startup"].mean()
        out.insert(4, "x_oracle_startup", out["gpu_hours"] / out["trace"].map(paid))
    out["degraded_%"] = 100 * out["degraded_chunks"] / out["chunks"]
    order = {name: i for i, name in enumerate([*FAMILIES, NO_VALVE, ISO_COST, ORACLE])}
    out = out.sort_values(["trace", "policy"], key=lambda c: c.map(order).fillna(len(order)) if c.name == "policy" else c,
                          kind="stable").reset_index(drop=True)
    return out.drop(columns=["degraded_chunks", "chunks"])


def format_standard(table: pd.DataFrame) -> str:
    """:func:`standard_points` as text."""
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_rows", 1000):
        return standard_points(table).to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.frontier DIR...``: print the tables of frontier output folders."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dirs", nargs="+", help="output folders of `turboserve experiment frontier`")
    args = parser.parse_args(argv)
    for folder in args.dirs:
        table = pd.read_csv(pathlib.Path(folder) / "frontier.csv")
        head = headline_of(table)  # from the runs, so older folders read with today's table
        print(f"== {folder}")
        print(format_standard(table))
        print()
        print(format_headline(head))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
