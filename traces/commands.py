"""The ``turboserve trace`` command group: generate, inspect, convert and list traces.

Wired into the main CLI with :func:`register`; each leaf command stores its handler in
``args.func`` (``func(args) -> int`` exit code). Bad input (an unknown scenario, an
invalid trace, a missing file) raises ``ValueError`` (``TraceError`` is one) or
``FileNotFoundError`` with a one-line message; ``turboserve``'s ``main`` (and
:func:`main` here) prints it as ``error: ...`` and exits with status 2.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="turboserve")
>>> _ = register(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["trace", "list"])
>>> args.func.__name__
'cmd_list'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def cmd_generate(args: argparse.Namespace) -> int:
    """``trace generate``: write a scenario's or a YAML spec's trace to ``--out``."""
    from dataclasses import replace

    from traces.generator import generate
    from traces.spec_io import load_spec
    from traces.io import write_trace
    from traces.scenarios import scenario

    started = time.perf_counter()
    if args.scenario:
        df = scenario(args.scenario, duration_s=args.duration, scale=args.scale, seed=args.seed,
                      model=args.model, data_dir=args.data_dir)
    else:
        if args.model is not None:
            raise ValueError("--model applies to --scenario only; set the mix in the spec")
        spec = load_spec(args.spec)
        spec = replace(
            spec,
            duration_s=args.duration if args.duration is not None else spec.duration_s,
            scale=spec.scale * args.scale,
            seed=args.seed,
        )
        df = generate(spec)
    write_trace(df, args.out)
    print(
        f"wrote {len(df)} events, {df['session_id'].nunique()} sessions, "
        f"{float(df['time_s'].max()) if len(df) else 0.0:.0f} s to {args.out} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """``trace stats``: print a trace's statistics (a table, or JSON with ``--json``)."""
    from traces.io import read_trace
    from traces.stats import format_stats, plot_trace, trace_stats

    df = read_trace(args.file)
    stats = trace_stats(df)
    print(json.dumps(stats.as_dict(), indent=2) if args.json else format_stats(stats))
    if args.plot:
        plot_trace(df, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``trace convert``: read a trace (validating it) and write it in another format."""
    from traces.io import read_trace, write_trace

    df = read_trace(args.input)
    write_trace(df, args.output)
    print(f"wrote {len(df)} events to {args.output}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``trace validate``: check a trace file; prints ``ok`` or fails naming the bad row."""
    from traces.io import read_trace

    df = read_trace(args.file)
    print(f"ok: {len(df)} events, {df['session_id'].nunique()} sessions")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``trace list``: the named scenarios with a one-line description each."""
    from traces.scenarios import DESCRIPTIONS, SCENARIOS

    width = max(map(len, SCENARIOS))
    for name in SCENARIOS:
        print(f"{name:<{width}}  {DESCRIPTIONS[name]}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``trace`` command group to an ``argparse`` subparsers object.

    Returns the ``trace`` parser. Leaf commands: ``generate``, ``stats``, ``convert``,
    ``validate``, ``list``; each sets ``func``.
    """
    trace = subparsers.add_parser(
        "trace", help="workload traces: generate, inspect, convert",
        description="Generate, inspect and convert workload traces (see traces/README.md).",
    )
    sub = trace.add_subparsers(dest="trace_command", metavar="COMMAND", required=True)

    gen = sub.add_parser("generate", help="generate a trace from a scenario or a YAML spec")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", metavar="NAME", help="a named scenario (see 'trace list')")
    source.add_argument("--spec", metavar="YAML", help="a workload spec file")
    gen.add_argument("--duration", type=float, default=None, metavar="S",
                     help="trace length in seconds (default: the scenario's or spec's)")
    gen.add_argument("--scale", type=float, default=1.0,
                     help="load multiplier (scenarios: 1 is about 64 GPUs of load)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--model", default=None,
                     help="run every session on this model preset (tiny, wan-1.3b, wan-14b)")
    gen.add_argument("--data-dir", default=None,
                     help="folder of the real traces (default $TURBOSERVE_DATA_DIR or ../shared/data)")
    gen.add_argument("--out", required=True, metavar="FILE", help="output .parquet or .csv")
    gen.set_defaults(func=cmd_generate)

    stats = sub.add_parser("stats", help="print statistics of a trace file")
    stats.add_argument("file", metavar="FILE")
    stats.add_argument("--plot", metavar="PATH", default=None, help="also write a PNG overview")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=cmd_stats)

    convert = sub.add_parser("convert", help="convert a trace between .parquet and .csv")
    convert.add_argument("input", metavar="IN")
    convert.add_argument("output", metavar="OUT")
    convert.set_defaults(func=cmd_convert)

    check = sub.add_parser("validate", help="check a trace file against the schema")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_validate)

    lister = sub.add_parser("list", help="list the named scenarios")
    lister.set_defaults(func=cmd_list)
    return trace


def main(argv: list[str] | None = None) -> int:
    """Run the ``trace`` commands standalone: ``python -m traces.commands trace ...``.

    Errors of bad input are printed as one ``error: ...`` line on stderr (exit status 2),
    as ``turboserve``'s own ``main`` does.
    """
    parser = argparse.ArgumentParser(prog="turboserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
