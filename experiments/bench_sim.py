"""Benchmark of the simulator's speed: wall time per simulated hour at 64 and 1024 GPUs.

Run ``python -m experiments.bench_sim`` (``--quick``: the 64-GPU case only;
``--hours 24 --gpus 1024``: one custom case). Prints, per case: the trace size, the
wall time to generate it, and for each policy the simulation wall time, chunks, chunks
per second and the ratio of simulated to wall time, and the process CPU time (on a
shared machine the cleaner number: other jobs stretch the wall time, not the CPU time).
Chunk rows are not kept (``record_chunks=False``), as for long runs.
"""

from __future__ import annotations

import argparse
import time

import framework.config  # noqa: F401  (config defaults)
from experiments.paper_table import POLICY_LABELS, load_traces, run_trace


def bench_case(scenario: str, hours: float, gpus: int, policies: list[str], seed: int = 0) -> list[dict]:
    """Generate ``scenario`` fitted to ``gpus`` for ``hours`` and time each policy's simulation."""
    t0 = time.perf_counter()
    (trace,) = load_traces([scenario], duration_s=hours * 3600, scale="fit", seed=seed, model="wan-1.3b", gpus=gpus)
    gen_s = time.perf_counter() - t0
    n_sessions = trace.frame["session_id"].nunique()
    print(f"\n{scenario}: {hours:g} h at {gpus} GPUs (scale {trace.scale}), {n_sessions} sessions, "
          f"{len(trace.frame)} events; trace generation + fit {gen_s:.1f} s")
    rows = []
    for policy in policies:
        t1, c1 = time.perf_counter(), time.process_time()
        (row,), _, _ = run_trace(trace, gpus, policies=[policy], record_chunks=False, with_oracle=False)
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        rows.append({"policy": policy, "wall_s": wall, "cpu_s": cpu, "chunks": row["chunks"]})
        print(f"  {policy:22s} wall {wall:8.1f} s  cpu {cpu:8.1f} s  chunks {int(row['chunks']):>11,d}  "
              f"{row['chunks'] / wall:>9,.0f} chunks/s  simulated/wall {hours * 3600 / wall:8.1f}x  "
              f"decide {row['decide_ms_per_tick']:.2f} ms/tick")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 1 h at 64 GPUs")
    parser.add_argument("--hours", type=float, default=None, help="custom case: trace length in hours")
    parser.add_argument("--gpus", type=int, default=None, help="custom case: cluster size")
    parser.add_argument("--scenario", default="steady", help="scenario (default steady; diurnal for 24 h)")
    parser.add_argument("--policy", action="append", help="policies (default: all four for 64 GPUs, turboserve else)")
    args = parser.parse_args(argv)
    if args.hours is not None or args.gpus is not None:
        cases = [(args.scenario, args.hours or 1.0, args.gpus or 64, args.policy or ["turboserve"])]
    else:
        cases = [("steady", 1.0, 64, args.policy or list(POLICY_LABELS))]
        if not args.quick:
            cases.append(("steady", 1.0, 1024, args.policy or ["turboserve"]))
    for scenario, hours, gpus, policies in cases:
        bench_case(scenario, hours, gpus, policies)


if __name__ == "__main__":
    main()
