"""Degree-2 chunk steps against degree 1 on two CPU processes, and the live transformation time.

Two parts, each printing side-by-side figures measured in the same run:

``kernel``
    Two spawned processes (one torch thread each, as a Dask worker) with the same
    ``tiny`` weights. Each repeat times, alternating, (a) degree 1: both processes
    step a session of their own at the same time (two workers serving alone) and
    (b) degree 2: both step one session together over a gloo group
    (:class:`kernels.parallel.ParallelModel`, Ulysses by heads). Printed per
    resolution: median step seconds of each, the latency ratio ``deg1 / deg2`` (above
    1: a degree-2 chunk comes sooner), the bytes each rank sent per step, and the
    in-process re-shard cost (cut a state by heads and merge it back).
``live``
    A 2-worker ``Server.local``: one session streams chunks at degree 1, the two
    workers merge into a degree-2 group while it streams (``set_parallelism(2)``),
    more chunks, then split back. Printed: the step time of the chunks (``t_done -
    t_start``) at each degree and the seconds each transformation took.

Run::

    python -m experiments.bench_parallel                       # both parts
    python -m experiments.bench_parallel --part kernel --sizes 64,128,256 --repeats 5
    python -m experiments.bench_parallel --part live --live-size 256 --chunks 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import statistics
import time

PROMPT = "a red fox running through snow"


def _rank(rank: int, port: int, size: int, repeats: int, steps: int) -> dict:
    import torch

    from kernels.model import StreamingVideoModel
    from kernels.parallel import ParallelModel, connect_group, merge_shards, reshard_bytes, shard_state

    torch.set_num_threads(1)
    model = StreamingVideoModel.from_preset("tiny", weights_seed=0, num_threads=1)
    group = connect_group("127.0.0.1", port, rank, 2, group_id="bench", timeout_s=600)
    pm = ParallelModel(model, group, rank, 2, timeout_s=600)
    alone = model.new_session(PROMPT, seed=rank, height=size, width=size)
    together = shard_state(model.new_session(PROMPT, seed=7, height=size, width=size), rank, 2)
    model.step([alone])  # warm-up of both paths
    pm.step([together])

    def sync() -> None:  # both ranks start each timed block together
        group.alltoall_base(torch.zeros(2), torch.zeros(2), [1, 1], [1, 1]).wait()

    one, two, sent = [], [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            model.step([alone])
        one.append((time.perf_counter() - t0) / steps)
        sync()
        before = pm.exchange.bytes_sent
        t0 = time.perf_counter()
        for _ in range(steps):
            pm.step([together])
        two.append((time.perf_counter() - t0) / steps)
        sent.append((pm.exchange.bytes_sent - before) / steps)
    out = {"deg1_s": statistics.median(one), "deg2_s": statistics.median(two), "sent": statistics.median(sent)}
    if rank == 0:
        full = model.new_session(PROMPT, seed=9, height=size, width=size)
        for _ in range(steps + repeats):
            model.step([full])
        t0 = time.perf_counter()
        shards = [shard_state(full, r, 2) for r in range(2)]
        out["cut_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        merge_shards(shards)
        out["merge_s"] = time.perf_counter() - t0
        out["reshard_bytes"] = reshard_bytes(full, 2)
        out["state_bytes"] = full.nbytes
    group.close()
    return out


def kernel(sizes: list[int], repeats: int, steps: int) -> None:
    from workers.p2p_group import free_port

    print("kernel: tiny, 1 session, 2 CPU processes with 1 torch thread each (gloo)")
    print(f"{'size':>5} {'deg1 s':>9} {'deg2 s':>9} {'deg1/deg2':>9} {'sent/step':>10} "
          f"{'state':>9} {'re-shard':>9} {'cut ms':>7} {'merge ms':>8}")
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        for size in sizes:
            port = free_port()
            futures = [pool.submit(_rank, r, port, size, repeats, steps) for r in range(2)]
            r0, r1 = (f.result(timeout=1800) for f in futures)
            deg1 = max(r0["deg1_s"], r1["deg1_s"])
            deg2 = max(r0["deg2_s"], r1["deg2_s"])
            print(f"{size:>5} {deg1:>9.4f} {deg2:>9.4f} {deg1 / deg2:>9.2f} {r0['sent'] / 1024:>8.0f}Ki "
                  f"{r0['state_bytes'] / 1024:>7.0f}Ki {r0['reshard_bytes'] / 1024:>7.0f}Ki "
                  f"{r0['cut_s'] * 1e3:>7.2f} {r0['merge_s'] * 1e3:>8.2f}", flush=True)


def live(chunks: int, size: int) -> None:
    from framework import Server

    print(f"live: Server.local, 2 CPU workers, tiny {size}x{size}, {chunks} chunks per phase")
    with Server.local(n_workers=2, model="tiny", dashboard_address=":0", adaptive=False) as server:
        workers = server.workers()
        s = server.open_session(PROMPT, seed=3, height=size, width=size)
        list(s.stream(2))  # warm-up
        rows = []
        before = list(s.stream(chunks))
        pending = s.submit()
        merged = server.set_parallelism(2, workers)
        during = [pending.result(timeout=600), *s.stream(chunks)]
        pending = s.submit()
        split = server.set_parallelism(1, workers)
        after = [pending.result(timeout=600), *s.stream(chunks)]
        s.close()
    for label, cs in (("degree 1 (before)", before), ("degree 2", during[1:]), ("degree 1 (after)", after[1:])):
        step = statistics.median(c.t_done_s - c.t_start_s for c in cs)
        rows.append((label, step))
        print(f"  {label:<18} median step {step:.4f} s over {len(cs)} chunks")
    print(f"  deg1/deg2 step ratio {rows[0][1] / rows[1][1]:.2f}")
    print(f"  merge (set_parallelism(2)) {merged['seconds']:.3f} s; split (set_parallelism(1)) {split['seconds']:.3f} s")
    print(f"  first degree-2 chunk (includes the lazy re-shard): step {during[0].t_done_s - during[0].t_start_s:.4f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("kernel", "live", "both"), default="both")
    ap.add_argument("--sizes", default="64,128,256", help="square resolutions of the kernel part")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per phase of the live part")
    ap.add_argument("--live-size", type=int, default=128, help="square resolution of the live part")
    args = ap.parse_args(argv)
    if args.part in ("kernel", "both"):
        kernel([int(x) for x in args.sizes.split(",")], args.repeats, args.steps)
    if args.part in ("live", "both"):
        live(args.chunks, args.live_size)


if __name__ == "__main__":
    main()
