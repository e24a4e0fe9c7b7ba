"""The ``turboserve`` command line: a thin layer over the packages.

``turboserve demo`` streams a few sessions on a local cluster; ``turboserve trace ...``
generates and inspects workloads; ``turboserve experiment ...`` runs the simulator and the
paper table; ``turboserve replay TRACE --backend live|sim`` replays a trace. Every command
reads the same ``dask.config`` keys (``--config key=value`` overrides any of them).

The ``experiments`` package sits above ``framework``; it is imported inside functions
only, so no import loop forms between the two. Everything heavy (dask, torch, diffusers,
pandas) is imported by the command that needs it, after the arguments are parsed, so
``turboserve --help``, ``turboserve config`` and the trace parsers answer at once
(``tests/test_cli_speed.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


def _demo(args: argparse.Namespace) -> int:
    from framework.demo import run_demo

    try:
        result = run_demo(
            n_sessions=args.sessions,
            length_s=args.seconds,
            max_workers=args.workers,
            out_dir=args.out,
            prompts=args.prompt or None,
            model=args.model,
        )
    except ValueError as exc:
        print(f"turboserve demo: {exc}", file=sys.stderr)
        return 2
    return 1 if result["errors"] else 0


def _replay(args: argparse.Namespace) -> int:
    from experiments.replay import replay_command

    return replay_command(args)


def _config(args: argparse.Namespace) -> int:
    import yaml

    from framework import config

    print(yaml.safe_dump(config.resolved(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (subcommand modules register themselves)."""
    parser = argparse.ArgumentParser(
        prog="turboserve",
        description="Serve streaming video generation on Dask: sessions, coalesced chunk steps, "
        "offload, migration-aware placement and load-driven autoscaling.",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a turboserve config key, e.g. --config engine.max-batch=4 (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="a short burst on a local cluster with the closed loop: what it did, plotted, and the videos")
    demo.add_argument("--sessions", type=int, default=3, help="sessions of the burst (default 3)")
    demo.add_argument("--seconds", type=float, default=30.0, help="length of the burst in seconds (default 30)")
    demo.add_argument("--workers", type=int, default=3, help="most workers the autoscaler may start (default 3)")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable; default: built-in prompts)")
    demo.add_argument("--model", default="tiny-trained",
                      help="model preset (default tiny-trained: the small checkpoint trained on CPU that ships in "
                           "the package; its prompts read 'a <colour> square moving <direction>')")
    demo.add_argument("--out", default="turboserve-demo", help="output folder (default ./turboserve-demo)")
    demo.set_defaults(func=_demo)

    replay = sub.add_parser("replay", help="replay a trace against the live cluster or the simulator")
    replay.add_argument("trace", help="trace file (Parquet or CSV, the trace schema)")
    replay.add_argument("--backend", choices=["live", "sim"], default="sim")
    replay.add_argument("--out", required=True, help="output folder (chunks.parquet, summary.csv, ...)")
    replay.add_argument("--time-scale", type=float, default=1.0, help="live: trace seconds per wall second")
    replay.add_argument("--workers", type=int, default=None, help="initial workers (live) / GPUs (sim)")
    replay.add_argument("--seed", type=int, default=0)
    replay.set_defaults(func=_replay)

    cfg = sub.add_parser("config", help="print the resolved turboserve configuration")
    cfg.set_defaults(func=_config)

    for register in _command_groups():
        register(sub)
    return parser


def _command_groups() -> list[Callable[[argparse._SubParsersAction], None]]:
    groups = []
    for module in ("traces.commands", "experiments.commands"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        groups.append(mod.register)
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turboserve`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging

    import dask.config

    from framework import config

    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # distributed sets its own loggers to INFO: without -v a command's local cluster
        # would print its start and close (some thirty lines) around the answer
        handler.setLevel(level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        overrides = dict(config.parse_override(item) for item in args.config)
        with dask.config.set(overrides):
            rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `turboserve trace stats t.parquet | head`: the reader has all it wants
        # Python's recipe: point stdout at devnull so the flush at exit raises nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, FileNotFoundError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__module__.startswith(("framework", "workers", "storage", "traces", "experiments")):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
