"""CPU of frontier runs, this checkout against another one, side by side (issue 9's frontier speed).

Run ``python -m experiments.bench_frontier_cpu --against DIR`` where ``DIR`` is another
checkout of the repository (``git archive <commit> | tar -x -C DIR``). Each repeat runs
the points once in a fresh process per checkout, this one and ``DIR`` alternately, so
that both see the same minutes of a shared machine (its speed moves by a quarter between
hours: only the ratio of runs made side by side compares). A point is one run of
:func:`experiments.frontier.run_point` on the azure-code scenario (an hour, fitted to
64 GPUs, seed 0: the trace of the frontier's speed target), with the parametric profile
``--batch-cost``/``--t1-s`` and ``--startup-s``; the trace is prepared once per process,
outside the timing. Prints, per point, the median process CPU (user + system) of each
checkout, their ratio, and whether the two rows are equal field for field (the
wall-clock ``sim_wall_s`` aside): a speed-up must not change a result.

``--points`` lists ``family:knob[:valve]`` (the families of
:data:`experiments.frontier.FAMILIES`, ``"turboserve (no valve)"`` and
``static-iso-cost``; ``valve``: TurboServe with the quality valve). ``--profile N``
runs the points once here under :mod:`cProfile` instead and prints the ``N`` functions
of most cumulative time (the profiler adds about a call's worth to every call: its
shares overstate the code of many small calls).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

DEFAULT_POINTS = "turboserve:1.0:valve,hpa+migration-aware:0.8,turboserve (no valve):1.0"


def _child(points: list[str], batch_cost: float, t1_s: float, startup_s: float, profile: int = 0) -> None:
    """Run ``points`` here (the checkout on ``sys.path``) and print one JSON line per point
    (``profile``: print the top functions of a cProfile of the runs instead)."""
    import cProfile
    import pstats
    import resource

    import framework.config  # noqa: F401  (config defaults)
    from experiments.commands import sim_config
    from experiments.frontier import Point, run_point
    from experiments.paper_table import load_traces, prepare_trace

    flags = argparse.Namespace(profile=None, t1_s=t1_s, batch_cost=batch_cost, gpu_class="h100",
                               startup_s=startup_s, quality_valve=False, measure_from_s=None)
    base = sim_config(flags).with_(quality_valve=False)
    (trace,) = load_traces(["azure-code"], duration_s=3600.0, scale="fit", seed=0, model="wan-1.3b", gpus=64,
                           config=base)
    prepared = prepare_trace(trace, 64, config=base)
    profiler = cProfile.Profile() if profile else None
    for spec in points:
        family, knob, *valve = spec.split(":")
        point = Point("azure-code", 0, family, float(knob), valve=valve == ["valve"])
        before = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.enable()
        row = run_point(point, prepared, 64, base, "idle-timeout")
        if profiler is not None:
            profiler.disable()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        row.pop("sim_wall_s", None)
        print(json.dumps({"point": spec, "cpu_s": cpu, "row": row}, default=str), flush=True)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)


def _run_in(tree: pathlib.Path, args: argparse.Namespace) -> list[dict]:
    """The JSON lines of one child process running the points on the code of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-P", str(pathlib.Path(__file__).resolve()), "--child", "--points", args.points,
           "--batch-cost", str(args.batch_cost), "--t1-s", str(args.t1_s), "--startup-s", str(args.startup_s)]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the points failed on {tree} (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _fields(row: dict) -> str:
    """A row as comparable text (NaN equals NaN, key order aside)."""
    return json.dumps(row, sort_keys=True, default=str)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=pathlib.Path, help="the other checkout (a folder holding the repository)")
    parser.add_argument("--points", default=DEFAULT_POINTS, help=f"family:knob[:valve],... (default {DEFAULT_POINTS!r})")
    parser.add_argument("--batch-cost", type=float, default=0.1, help="a of step(b) = t1 (1 + a (b - 1)) (default 0.1)")
    parser.add_argument("--t1-s", type=float, default=0.344, help="t1 seconds (default 0.344, H100)")
    parser.add_argument("--startup-s", type=float, default=10.0, help="worker start-up seconds (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each point per checkout (default 3)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="run the points once here under cProfile; print the N top functions by cumulative time")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    points = [p for p in args.points.split(",") if p]
    if args.child or args.profile:
        _child(points, args.batch_cost, args.t1_s, args.startup_s, args.profile)
        return
    if args.against is None or not (args.against / "experiments" / "frontier.py").is_file():
        parser.error(f"--against must name another checkout of the repository, got {args.against}")
    trees = {"this": pathlib.Path(__file__).resolve().parents[1], "other": args.against.resolve()}
    cpu: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            for line in _run_in(tree, args):
                cpu.setdefault((name, line["point"]), []).append(line["cpu_s"])
                rows[(name, line["point"])] = line["row"]
    print(f"azure-code, 1 h, 64 GPUs, seed 0; a={args.batch_cost:g}, t1={args.t1_s:g} s, start-up {args.startup_s:g} s; "
          f"median CPU s of {args.repeats} (this: {trees['this']}, other: {trees['other']})")
    print(f"{'point':42s} {'this':>7s} {'other':>7s} {'this/other':>10s}  rows")
    for p in points:
        mine, theirs = statistics.median(cpu[("this", p)]), statistics.median(cpu[("other", p)])
        same = "equal" if _fields(rows[("this", p)]) == _fields(rows[("other", p)]) else "DIFFER"
        print(f"{p:42s} {mine:7.2f} {theirs:7.2f} {mine / theirs:10.3f}  {same}")


if __name__ == "__main__":
    main()
