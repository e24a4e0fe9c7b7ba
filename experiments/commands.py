"""``turboserve experiment ...`` subcommands and the simulator back end of ``turboserve replay``.

``register(subparsers)`` adds::

    turboserve experiment paper-table (--trace FILE | --scenario NAME)... --gpus 64 --out DIR [--seed N]
    turboserve experiment sweep (--trace FILE | --scenario NAME)... [--policy P]... [--gpus N]...
                                [--seed N]... [--workers N] [--out DIR]
    turboserve experiment frontier (--trace FILE | --scenario NAME)... --gpus N --seeds 0,1,2 --out DIR
    turboserve experiment parallelism (--trace FILE | --scenario NAME)... --gpus N --scales 0.5,1 --out DIR

Every one takes the latency and start-up flags ``--profile NAME``, ``--batch-cost A``
(``step(b) = t1 (1 + A (b - 1))``), ``--t1-s T``, ``--startup-s S`` and ``--quality-valve``,
and the measurement window ``--measure-from-s W`` (summaries and oracles over ``[W, end]``
of runs that still start at 0).

Errors are raised as ``ValueError``/``FileNotFoundError`` with a one-line message; the
CLI's ``main`` prints them.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas loads in the commands that use it: `turboserve --help` stays fast
    import pandas as pd


def _scale(text: str) -> float | str:
    if text == "fit":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be a number > 0 or 'fit', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--scale must be > 0, got {text!r}")
    return value


def _batch(text: str) -> int | str:
    if text == "slo":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-batch must be an integer or 'slo', got {text!r}") from None


def _traces(args: argparse.Namespace) -> list[str]:
    traces = [*(args.trace or []), *(args.scenario or [])]
    if not traces:
        raise ValueError("give at least one --trace FILE or --scenario NAME")
    for path in args.trace or []:
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"trace file {path!r} does not exist")
    return traces


def _add_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", action="append", metavar="FILE", help="trace file (Parquet/CSV; repeatable)")
    p.add_argument("--scenario", action="append", metavar="NAME", help="named scenario (repeatable)")
    p.add_argument("--duration-s", type=float, default=3600.0, help="scenario length in seconds (default 3600)")
    p.add_argument("--scale", type=_scale, default="fit",
                   help="scenario load scale, or 'fit' (default): the scale whose peak demand is about --gpus")
    p.add_argument("--model", default="wan-1.3b",
                   help="run every scenario session on this preset (default wan-1.3b; 'mix' keeps the scenario's mix)")
    p.add_argument("--max-batch", type=_batch, default="slo",
                   help="per-worker batch cap: 'slo' (default: largest batch meeting the SLO) or an integer")
    _add_latency_options(p)


def _positive(what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not value >= 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number >= 0, got {text!r}")
        return value
    return parse


def _add_latency_options(p: argparse.ArgumentParser) -> None:
    """The latency space shared by every experiment command (``LatencySpec`` + start-up)."""
    g = p.add_argument_group("latency and start-up model")
    g.add_argument("--profile", default=None, metavar="NAME",
                   help="latency profile name or CSV (default: the model's own profile)")
    g.add_argument("--batch-cost", type=_positive("--batch-cost"), default=None, metavar="A",
                   help="use the parametric profile step(b) = t1 * (1 + A (b - 1)) (A: 0.1 batch-friendly .. 1 compute-bound)")
    g.add_argument("--t1-s", type=_positive("--t1-s"), default=None, metavar="T",
                   help="batch-1 step seconds of the parametric profile (default: the published figure for --gpu-class)")
    g.add_argument("--gpu-class", default="h100", help="GPU class of the published t1 (h100, gb200, gb300; default h100)")
    g.add_argument("--startup-s", type=_positive("--startup-s"), default=None, metavar="S",
                   help="worker start-up seconds (default turboserve.simulator.worker-startup-s)")
    g.add_argument("--quality-valve", action="store_true",
                   help="degrade (fewer denoising steps) a step that would miss the SLO; counted as degraded chunks")
    g.add_argument("--measure-from-s", type=_positive("--measure-from-s"), default=None, metavar="W",
                   help="measure from W seconds on: latencies of the chunks asked for from then, GPU-hours and "
                        "counts after it, the oracle over the same window; each run still starts at 0, so every "
                        "policy enters the window with the cluster it provisioned itself (default 0: the whole run)")


def sim_config(args: argparse.Namespace):
    """The :class:`~experiments.sim.config.SimConfig` the latency/start-up flags describe."""
    from experiments.sim.config import SimConfig
    from experiments.sim.latency import LatencySpec

    if args.t1_s is not None and args.t1_s <= 0:
        raise ValueError(f"--t1-s must be > 0 seconds, got {args.t1_s}")
    spec = LatencySpec(profile=args.profile, t1_s=args.t1_s, batch_cost=args.batch_cost, gpu=args.gpu_class)
    overrides = {"latency": spec, "worker_startup_s": args.startup_s,
                 "measure_from_s": args.measure_from_s}
    if args.quality_valve:
        overrides["quality_valve"] = True
    return SimConfig.from_config(**overrides)


def _paper_table(args: argparse.Namespace) -> int:
    from experiments.paper_table import POLICY_LABELS, paper_table

    paper_table(
        _traces(args), gpus=args.gpus, out_dir=args.out, seed=args.seed, duration_s=args.duration_s,
        scale=args.scale, model=None if args.model == "mix" else args.model,
        policies=args.policy or POLICY_LABELS, max_batch=args.max_batch, plots=not args.no_plots,
        config=sim_config(args),
    )
    print(f"wrote {args.out}/summary.csv, runs/, results.zarr and plots")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from experiments.paper_table import POLICY_LABELS
    from experiments.sweep import sweep, sweep_jobs

    jobs = sweep_jobs(
        _traces(args), args.policy or [*POLICY_LABELS, "oracle"], args.gpus or [64], args.seed or [0],
        duration_s=args.duration_s, scale=args.scale, model=None if args.model == "mix" else args.model,
        max_batch=args.max_batch, config=sim_config(args),
    )
    table = sweep(jobs, n_workers=args.workers, out_dir=args.out, progress=not args.no_progress)
    cols = [c for c in ("trace", "policy", "gpus", "seed", "max_latency_s", "p99_latency_s", "slo_attainment",
                        "gpu_hours", "migrations") if c in table.columns]
    import pandas as pd

    with pd.option_context("display.width", 200):
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _frontier(args: argparse.Namespace) -> int:
    from experiments.frontier import DEFAULT_FAMILIES, format_frontier, format_headline, format_standard, frontier

    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    table, head = frontier(
        _traces(args), gpus=args.gpus, seeds=args.seeds, out_dir=args.out, config=sim_config(args),
        families=args.family or DEFAULT_FAMILIES, duration_s=args.duration_s, scale=args.scale,
        model=None if args.model == "mix" else args.model, baseline_offload=args.baseline_offload,
        n_workers=args.workers, progress=not args.no_progress,
    )
    print(format_frontier(table))
    print()
    print(format_standard(table))
    print()
    print(format_headline(head))
    print(f"wrote {args.out}/frontier.csv, headline.csv, frontier.png, config.yaml ({len(table)} runs)")
    return 0


def _waits(args: argparse.Namespace) -> int:
    import pandas as pd

    from experiments.waits import explain, summary

    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    traces = _traces(args)
    if len(traces) != 1:
        raise ValueError(f"give one --scenario or --trace, got {len(traces)}")
    table, header = explain(traces[0], family=args.family, knob=args.knob, gpus=args.gpus, seed=args.seed,
                            config=sim_config(args), duration_s=args.duration_s, scale=args.scale,
                            model=None if args.model == "mix" else args.model, max_batch=args.max_batch)
    print(header)
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(summary(table, max_workers=args.gpus).to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out} ({len(table)} chunks: kind, cause, latency of each)")
    return 0


def _parallelism(args: argparse.Namespace) -> int:
    from experiments.parallelism import POLICIES, format_capacity, parallelism_experiment

    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if args.capacity_from:
        from experiments.parallelism import capacity_from

        summary, oracles, capacity = capacity_from(args.capacity_from, target=args.target, admission_s=args.admission_s)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(out / "summary.csv", index=False)
        oracles.to_csv(out / "oracle.csv", index=False)
        capacity.to_csv(out / "capacity.csv", index=False)
        print(format_capacity(capacity))
        print(f"wrote {args.out}/summary.csv, oracle.csv, capacity.csv")
        return 0
    config = sim_config(args)
    if args.oracle_only:
        from experiments.parallelism import oracle_table

        table = oracle_table(_traces(args), gpus=args.gpus, scales=args.scales, policies=args.policy or list(POLICIES),
                             config=config, duration_s=args.duration_s, seed=args.seed)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "oracle.csv", index=False)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"wrote {args.out}/oracle.csv")
        return 0
    summary, capacity = parallelism_experiment(
        _traces(args), gpus=args.gpus, scales=args.scales, policies=args.policy or list(POLICIES),
        target=args.target, admission_s=args.admission_s, config=config, duration_s=args.duration_s,
        seed=args.seed, out_dir=args.out, plots=not args.no_plots,
    )
    cols = ["policy", "scale", "instream_attainment", "instream_attainment_13b", "instream_attainment_14b",
            "ttfc_p99_s", "sessions_served", "sessions_per_gpu_hour", "degrees", "pool_gpus", "transformations"]
    print(summary.loc[:, cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print()
    print(format_capacity(capacity))
    print(f"wrote {args.out}/summary.csv, capacity.csv, oracle.csv, runs/, results.zarr, config.yaml")
    return 0


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers > 0, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``experiment`` command group to the ``turboserve`` parser."""
    exp = subparsers.add_parser("experiment", help="simulated experiments: the paper table and sweeps")
    sub = exp.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    exp.set_defaults(func=lambda args: (exp.print_help(), 0)[1])

    pt = sub.add_parser("paper-table", help="TurboServe vs static peak, HPA baselines and the oracle")
    _add_trace_options(pt)
    pt.add_argument("--gpus", type=int, default=64, help="cluster size (default 64)")
    pt.add_argument("--out", required=True, help="output folder")
    pt.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    pt.add_argument("--policy", action="append", metavar="LABEL",
                    help="only these policies (repeatable): static-peak, hpa+least-loaded, hpa+migration-aware, "
                         "turboserve, or placement+autoscaling+offload")
    pt.add_argument("--no-plots", action="store_true", help="skip the PNG/HTML plots")
    pt.set_defaults(func=_paper_table)

    fr = sub.add_parser("frontier", help="cost-tail frontiers: each policy family over its knob, and the headline table")
    _add_trace_options(fr)
    fr.add_argument("--gpus", type=int, default=64, help="cluster size (default 64)")
    fr.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    fr.add_argument("--family", action="append", metavar="NAME",
                    help="only these policy families (repeatable; see experiments.frontier.FAMILIES)")
    fr.add_argument("--baseline-offload", choices=("idle-timeout", "never"), default="idle-timeout",
                    help="idle offload of the baselines (default idle-timeout, as TurboServe)")
    fr.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: the cores; 0: none)")
    fr.add_argument("--out", required=True, help="output folder")
    fr.add_argument("--no-progress", action="store_true", help="no progress bar")
    fr.set_defaults(func=_frontier)

    wt = sub.add_parser("waits", help="where one run's admission waits (TTFC, resume) and stalls come from, by cause")
    _add_trace_options(wt)
    wt.add_argument("--gpus", type=int, default=64, help="cluster size (default 64)")
    wt.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    wt.add_argument("--family", default="turboserve", help="policy family (experiments.frontier.FAMILIES; default turboserve)")
    wt.add_argument("--knob", type=float, default=None, help="the family's knob value (default: its standard one)")
    wt.add_argument("--out", default=None, metavar="CSV", help="also write every waited-for chunk with its cause")
    wt.set_defaults(func=_waits)

    pa = sub.add_parser("parallelism", help="fixed parallel degrees vs the adaptive policy on a model mix")
    pa.add_argument("--trace", action="append", metavar="FILE", help="trace file (Parquet/CSV; repeatable)")
    pa.add_argument("--scenario", action="append", metavar="NAME", help="named scenario (repeatable), e.g. mixed-14b-share")
    pa.add_argument("--duration-s", type=float, default=None, help="scenario length in seconds (default: its own)")
    pa.add_argument("--scales", type=_floats, default=[0.5, 1.0], help="comma-separated load scales (default 0.5,1)")
    pa.add_argument("--gpus", type=int, default=64, help="fleet size (default 64)")
    pa.add_argument("--policy", action="append", metavar="LABEL",
                    help="only these (repeatable): fixed-1, fixed-2, fixed-4, static-per-model, adaptive, "
                         "adaptive-4, adaptive-8 (experiments.parallelism.POLICIES)")
    pa.add_argument("--target", type=float, default=0.99, help="in-stream SLO attainment to meet (default 0.99)")
    pa.add_argument("--admission-s", type=float, default=10.0, help="p99 time to first chunk to meet (default 10 s)")
    pa.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    pa.add_argument("--out", required=True, help="output folder")
    pa.add_argument("--no-plots", action="store_true", help="skip the PNG/HTML plots")
    pa.add_argument("--oracle-only", action="store_true",
                    help="only the oracle bound of each policy's degrees (no simulation; seconds)")
    pa.add_argument("--capacity-from", action="append", metavar="DIR",
                    help="no simulation: the capacity table of earlier runs' summary.csv and oracle.csv "
                         "(repeatable; a grid run as several commands)")
    _add_latency_options(pa)
    pa.set_defaults(func=_parallelism)

    sw = sub.add_parser("sweep", help="policy x trace x GPUs x seed as Dask batch jobs on a LocalCluster")
    _add_trace_options(sw)
    sw.add_argument("--policy", action="append", metavar="LABEL", help="policy label (repeatable; default: all + oracle)")
    sw.add_argument("--gpus", action="append", type=int, help="cluster size (repeatable; default 64)")
    sw.add_argument("--seed", action="append", type=int, help="seed (repeatable; default 0)")
    sw.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default 2)")
    sw.add_argument("--out", default=None, help="output folder (summary.csv, results.zarr, plots)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=_sweep)


def run_sim_replay(
    trace_df: pd.DataFrame,
    policy_set: Any = None,
    out_dir: str | pathlib.Path | None = None,
    *,
    gpus: int | None = None,
    trace_name: str = "trace",
    config: Any = None,
    seed: int = 0,
    max_batch: int | str = "slo",
    plots: bool = True,
) -> dict[str, Any]:
    """Replay ``trace_df`` in the simulator and write the output folder (``turboserve replay --backend sim``).

    Parameters
    ----------
    trace_df
        A trace in the trace schema.
    policy_set
        A :class:`~experiments.sim.config.PolicySet`, a paper label (``turboserve``,
        ``static-peak``, ...), a ``placement+autoscaling+offload`` triple, or None: the
        configured ``turboserve.policies.*``.
    out_dir
        Output folder (chunks.parquet, intervals.parquet, summary.csv, config.yaml,
        results.zarr, plots); None writes nothing.
    gpus
        Most workers (default ``turboserve.autoscale.maximum``).
    config
        A :class:`~experiments.sim.config.SimConfig` (default: from the dask config).
    seed
        Recorded in ``config.yaml`` (the simulator itself draws no random numbers).

    Returns
    -------
    The summary row (contract columns first).
    """
    import framework.config as tconfig
    from experiments.paper_table import TraceInput, run_trace
    from experiments.results import write_outputs

    import pandas as pd

    if not isinstance(trace_df, pd.DataFrame) or trace_df.empty:
        raise ValueError("run_sim_replay needs a non-empty trace DataFrame (trace schema)")
    if policy_set is None:
        policy_set = "+".join(str(tconfig.get(f"policies.{k}")) for k in ("placement", "autoscaling", "offload"))
    n = int(gpus if gpus is not None else tconfig.get("autoscale.maximum"))
    rows, chunks, intervals = run_trace(TraceInput(trace_name, trace_df), n, policies=[policy_set], config=config,
                                        max_batch=max_batch, with_oracle=False)
    row = rows[0]
    if out_dir is not None:
        (label,) = chunks
        resolved = {**tconfig.resolved(), "experiment": {"kind": "replay", "backend": "sim", "gpus": n, "seed": seed,
                                                          "policy": row["policy"], "trace": trace_name}}
        write_outputs(out_dir, chunks[label], intervals[label], row, resolved, plots=plots)
    return row
