"""Serving benchmark: the live server against the bare batched model, side by side in one run.

Everything is measured in one run, each live measurement next to the bare one it is
compared with (the machine is shared and noisy: compare within a run, not across runs):

1. **Worker environment.** The model step inside a worker started the way turboserve
   starts them (:class:`framework.worker_env.ServingNanny`) against one started by
   Dask's plain nanny (``MALLOC_TRIM_THRESHOLD_=65536``), and the bare step in this
   process: step time measured on the worker (``t_done_s - t_start_s``) and the whole
   path of a chunk (``submit().result()``), one session, interleaved; and the worker
   process's minor page faults per chunk (``getrusage``), which load does not blur.
2. **Chunk rate against the bare batched model.** ``S`` sessions (1, 4, 8) on ``W``
   workers (1, 2), placed evenly. *Closed loop*: each session asks for its next chunk as
   soon as it has the last one. *Back to back*: rounds of ``S`` ``submit()`` calls made
   one after the other, then all results. The bare reference is ``model.step`` over
   ``S / W`` sessions in this process, with one torch thread like a worker; live and
   bare alternate in blocks (``--block`` chunks per session, as many bare steps) and the
   rates are totals over the blocks. A live block starts with the engines idle and
   counts the chunks the engines made within it: a step still running when a block
   ends (a chunk made ahead of its request) counts for no block, so short blocks
   understate the live rate. For ``W = 2`` the bare rate is doubled (two workers run in
   parallel on two cores, which assumes nothing else runs). Printed per row: live and
   bare chunks/s and their ratio, the mean batch the engines formed (steps and chunks
   from their counters) against the batch the simulator assumes (every due session of a
   worker in one step: ``S / W``), client-side chunk latency, the overhead per chunk
   (``1/live rate - 1/bare rate``) and how busy the engines were (model-step seconds
   over wall seconds). No periodic checkpoints (``checkpoint_every=0``), no control loop.

``--prearm 0,1`` runs the rows once per ``turboserve.engine.prearm-chunks`` value (one
cluster each; ``--start-with-joins 0,1`` likewise, for each prearm value), ``--load N`` with N busy-loop processes of its own for the whole run.
``--timeline`` adds a line per row saying where the time went (:func:`timeline_line`).
After the worker environment (not with ``--skip-env``),
:func:`experiments.bench_chunk_paths.chunk_paths` compares a chunk fetched through its
:class:`distributed.Future` with one streamed directly (wall, CPU and Dask's bookkeeping
per chunk; with ``--pin`` once more with the session's worker alone on one core).
``--paths-only`` runs this comparison alone, as ``python -m experiments.bench_chunk_paths``
does (which also has ``--gc-freeze``).

Run: ``.venv/bin/python -m experiments.bench_serving [--chunks 6] [--block 4]
[--sessions 1,4,8] [--workers 1,2] [--prearm 0,1] [--load 0] [--timeline] [--pin] [--paths-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass

from experiments.bare_model import PROMPT, BareModel
from experiments.bench_chunk_paths import chunk_paths, start_load
from experiments.bench_chunk_paths import run as run_paths


@dataclass(frozen=True, slots=True)
class Row:
    """One live measurement against its bare reference."""

    workers: int
    sessions: int
    mode: str
    live_rate: float
    bare_rate: float
    mean_batch: float
    assumed_batch: float
    p50_ms: float
    max_ms: float
    steps_per_round: float | None = None
    busy: float = float("nan")

    def line(self) -> str:
        overhead = 1e3 * (1 / self.live_rate - 1 / self.bare_rate)
        rounds = "" if self.steps_per_round is None else f"  steps/round/worker {self.steps_per_round:4.2f}"
        return (
            f"  W={self.workers} S={self.sessions} {self.mode:12s} live {self.live_rate:6.2f}  bare {self.bare_rate:6.2f}"
            f"  ratio {self.live_rate / self.bare_rate:5.2f}x  mean batch {self.mean_batch:4.2f} / {self.assumed_batch:4.2f}"
            f" ({self.mean_batch / self.assumed_batch:4.2f}x)  latency p50 {self.p50_ms:6.0f} max {self.max_ms:6.0f} ms"
            f"  overhead {overhead:+6.1f} ms/chunk  engine busy {100 * self.busy:3.0f}%{rounds}"
        )


def _engine_counts(server) -> dict[str, tuple[int, int, float]]:
    from workers.host_lookup import get_host

    def counts(dask_worker):
        m = get_host(dask_worker).metrics().get("tiny")
        return (0, 0, 0.0) if m is None else (m.steps, m.chunks, m.busy_s)

    return server.client.run(counts)


def _deltas(before: dict, after: dict, workers: list[str]) -> tuple[int, int, float]:
    # A worker that restarted in between (it lost its counters) counts for nothing.
    both = [w for w in workers if w in after and w in before]
    return tuple(sum(after[w][i] - before[w][i] for w in both) for i in range(3))


def _wait_idle(server, workers: list[str], timeout: float = 120.0) -> None:
    """Until the engines of ``workers`` have nothing left to make (chunks made ahead included)."""
    from workers.host_lookup import get_host

    def idle(dask_worker):
        engine = get_host(dask_worker)._engines.get("tiny")
        return engine is None or engine.idle()

    deadline = time.monotonic() + timeout
    while not all(server.client.run(idle, workers=workers).values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engines of {workers} did not go idle in {timeout} s")
        time.sleep(0.02)


async def _closed_loop(sessions, n: int, block: int = 0) -> list[tuple[float, object, float, int]]:
    async def one(s):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            chunk = await s.asubmit()
            out.append((time.perf_counter() - t0, chunk, time.time(), block))
        return out

    return [x for xs in await asyncio.gather(*(one(s) for s in sessions)) for x in xs]


def timeline_line(got: list[tuple], bare_step_s: float) -> str:
    """Where a row's wall time went, from the chunk records' clocks (one machine, one clock).

    ``got`` holds ``(latency, chunk, time the client had it, block)``. Per worker and
    block, consecutive steps (chunks with one ``t_start_s``) give the step time (against
    the bare step of the same batch) and the idle time between two steps, split along
    the path of each session whose chunks were in both: the step's end to the client
    having the chunk (engine -> actor -> Dask task -> scheduler -> client gather), the
    client to its next request reaching the engine, and that request to the next step's
    start (the batching window). Means in ms, so that step + idle is the cycle the rate
    comes from.
    """
    steps: dict[tuple[str, int, float], list] = {}
    received: dict[tuple[str, int], tuple[float, object]] = {}
    for _, chunk, t_recv, block in got:
        steps.setdefault((chunk.worker, block, chunk.t_start_s), []).append(chunk)
        received[(chunk.session_id, chunk.index)] = (t_recv, chunk)
    step_s, idle, to_client, to_request, to_start = [], [], [], [], []
    runs: dict[tuple[str, int], list[float]] = {}
    for worker, block, start in steps:
        runs.setdefault((worker, block), []).append(start)
    for (worker, block), starts in runs.items():
        starts.sort()
        for a, b in itertools.pairwise(starts):
            first = steps[(worker, block, a)][0]
            step_s.append(first.t_done_s - first.t_start_s)
            idle.append(b - first.t_done_s)
            for chunk in steps[(worker, block, b)]:
                prev = received.get((chunk.session_id, chunk.index - 1))
                if prev is None or prev[1].t_start_s != a:  # not served by step a (made ahead, ...)
                    continue
                to_client.append(prev[0] - first.t_done_s)
                to_request.append(chunk.t_request_s - prev[0])
                to_start.append(b - chunk.t_request_s)

    def ms(xs: list[float]) -> str:
        return f"{1e3 * statistics.mean(xs):6.1f}" if xs else "     -"

    ratio = statistics.mean(step_s) / bare_step_s if step_s else float("nan")
    return (f"      timeline (mean ms): step {ms(step_s)} (bare {1e3 * bare_step_s:6.1f}, {ratio:4.2f}x)  idle between "
            f"steps {ms(idle)}: step end -> client has chunk {ms(to_client)}, -> its next request at the engine "
            f"{ms(to_request)}, -> step start {ms(to_start)}")


def run_config(server, bare: BareModel, workers: list[str], n_sessions: int, chunks: int, seed0: int,
               block: int = 4, timeline: bool = False) -> list[Row]:
    """Closed-loop and back-to-back rows for ``n_sessions`` on ``workers``.

    Live and bare alternate in blocks of ``block`` chunks per session and as many bare steps, so
    that a change in the machine's load hits both sides alike; the rates are totals
    over the blocks. A live block starts with the engines idle and its rate counts the
    chunks the engines made within it (so chunks made ahead of their request after a
    block ends count for no block, and no engine works while the bare model runs).
    """
    sessions = [server.open_session(PROMPT, seed=seed0 + i, worker=workers[i % len(workers)])
                for i in range(n_sessions)]
    per_worker = max(1, n_sessions // len(workers))
    assumed = n_sessions / len(workers)
    rows = []
    try:
        server.client.sync(_closed_loop, sessions, 1)  # warm-up: every session made a chunk
        for mode in ("closed-loop", "back-to-back"):
            live_s, bare_s, bare_chunks = 0.0, 0.0, 0
            made, steps, busy_s = 0, 0, 0.0
            got, starts = [], []
            for i_block in range(max(1, chunks // block)):
                _wait_idle(server, workers)
                for _ in range(block):
                    bare_s += bare.step_s(per_worker)
                    bare_chunks += per_worker
                before = _engine_counts(server)
                t0 = time.perf_counter()
                if mode == "closed-loop":
                    got += server.client.sync(_closed_loop, sessions, block, i_block)
                else:
                    for _ in range(block):
                        t_round = time.perf_counter()
                        futures = [s.submit() for s in sessions]
                        done = [(f.result(), time.time()) for f in futures]
                        wall = time.perf_counter() - t_round
                        got += [(wall, c, t_recv, i_block) for c, t_recv in done]
                        done = [c for c, _ in done]
                        starts.append(len({(c.worker, c.t_start_s) for c in done}) / len(workers))
                after = _engine_counts(server)
                live_s += time.perf_counter() - t0
                d_steps, d_chunks, d_busy = _deltas(before, after, workers)
                steps, made, busy_s = steps + d_steps, made + d_chunks, busy_s + d_busy
            bare_rate = bare_chunks / bare_s * len(workers)
            latencies = [1e3 * w for w, *_ in got]
            busy = busy_s / (live_s * len(workers))
            rows.append(Row(len(workers), n_sessions, mode, made / live_s, bare_rate,
                            made / steps if steps else 0.0, assumed,
                            statistics.median(latencies), max(latencies),
                            statistics.mean(starts) if starts else None, busy))
            print(rows[-1].line(), flush=True)
            if timeline:
                print(timeline_line(got, bare_s / (bare_chunks / per_worker)), flush=True)
    finally:
        for s in sessions:
            s.close()
    return rows


def _minor_faults(server, worker: str | None) -> int:
    """The worker process's minor page faults so far (``getrusage``; load does not change them)."""
    import resource

    ran = server.client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                            workers=[worker] if worker else None)
    return next(iter(ran.values()))


def environment(ours, plain, bare: BareModel, chunks: int) -> None:
    """Step and whole-path time of one session: our workers, Dask's plain nanny, bare.

    Also the worker's minor page faults per chunk (measured around each chunk's round
    trip): the allocator setting's effect, which a loaded machine does not blur as it
    blurs the times."""
    import os

    env = {name: srv.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
           for name, srv in (("ours", ours), ("plain", plain))}
    sessions = {"ours": ours.open_session(PROMPT, seed=900, worker=ours.workers()[0]),
                "plain": plain.open_session(PROMPT, seed=900)}
    step = {k: [] for k in sessions}
    path = {k: [] for k in sessions}
    faults = {k: [] for k in sessions}
    bare_s = []
    servers = {"ours": ours, "plain": plain}
    worker = {"ours": ours.workers()[0], "plain": None}
    try:
        for s in sessions.values():
            s.submit().result()  # warm-up
        for _ in range(chunks):  # interleaved, so load on the machine hits all alike
            bare_s.append(bare.step_s(1))
            for name, s in sessions.items():
                f0 = _minor_faults(servers[name], worker[name])
                t0 = time.perf_counter()
                chunk = s.submit().result()
                path[name].append(time.perf_counter() - t0)
                step[name].append(chunk.t_done_s - chunk.t_start_s)
                faults[name].append(_minor_faults(servers[name], worker[name]) - f0)
    finally:
        for s in sessions.values():
            s.close()
    med = statistics.median
    print(f"worker environment, one session, {chunks} chunks interleaved (median ms):")
    print(f"  bare model.step in this process              {1e3 * med(bare_s):7.1f}")
    for name, label in (("ours", "turboserve worker (ServingNanny)"), ("plain", "Dask's plain nanny")):
        var = sorted(set(env[name].values()))
        print(f"  {label:33s} step {1e3 * med(step[name]):7.1f}  whole path {1e3 * med(path[name]):7.1f}"
              f"  minor page faults/chunk {med(faults[name]):8.0f}   MALLOC_TRIM_THRESHOLD_={var}")
    print(f"  step plain/ours {med(step['plain']) / med(step['ours']):5.2f}x   "
          f"whole path plain/ours {med(path['plain']) / med(path['ours']):5.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunks", type=int, default=6, help="chunks per session per measurement (default 6)")
    parser.add_argument("--sessions", default="1,4,8", help="session counts (default 1,4,8)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--skip-env", action="store_true", help="skip the worker-environment comparison")
    parser.add_argument("--slo-s", type=float, default=None,
                        help="per-chunk deadline (turboserve.slo-s); default: the configured one. The engine "
                             "does not wait for a batch that would make a chunk miss a deadline it can meet")
    parser.add_argument("--block", type=int, default=4,
                        help="chunks per session in one live block, between bare blocks (default 4)")
    parser.add_argument("--prearm", default=None,
                        help="engine.prearm-chunks values, one cluster each, e.g. 0,1 (default: the configured one)")
    parser.add_argument("--start-with-joins", default=None,
                        help="engine.start-with-joins values, one cluster each, e.g. 0,1 (default: the configured one)")
    parser.add_argument("--timeline", action="store_true",
                        help="after each row, where its time went: step time against the bare step, and the idle "
                             "time between steps split along the chunk's path (median ms)")
    parser.add_argument("--pin", action="store_true",
                        help="also measure the chunk's path with the session's worker alone on one core and the "
                             "client, scheduler and other workers on the others (as deployed: they do not share a "
                             "GPU worker's host cores)")
    parser.add_argument("--paths-only", action="store_true",
                        help="only the chunk's path through its future against the direct one (wall and CPU per "
                             "chunk; with --pin also pinned); --chunks of them, at least 12")
    parser.add_argument("--load", type=int, default=0,
                        help="start this many busy-loop processes for the whole run, to measure the path on a "
                             "loaded machine reproducibly (default 0)")
    args = parser.parse_args()
    hogs = start_load(args.load)
    try:
        _run(args)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _run(args: argparse.Namespace) -> None:
    if args.paths_only:  # the comparison on its own, as experiments.bench_chunk_paths runs it
        run_paths(args.model, max(args.chunks, 12), pin=args.pin, load=args.load)
        return
    counts = [int(x) for x in args.sessions.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    import dask.config
    from distributed import Nanny

    from framework import Server

    if args.slo_s is not None:
        dask.config.set({"turboserve.slo-s": args.slo_s})
    if args.prearm is None:
        args.prearm = str(dask.config.get("turboserve.engine.prearm-chunks"))

    print(f"busy-loop processes: {args.load}; model {args.model!r}, engine: batch-window-s {dask.config.get('turboserve.engine.batch-window-s')}, "
          f"max-batch {dask.config.get('turboserve.engine.max-batch')}, "
          f"slo {dask.config.get('turboserve.slo-s')} (null: chunk playback time)", flush=True)
    bare = BareModel(args.model, [1] + [max(1, s // w) for s in counts for w in worker_counts if s >= w])
    env_done = args.skip_env
    if args.start_with_joins is None:
        args.start_with_joins = str(int(dask.config.get("turboserve.engine.start-with-joins", False)))
    variants = [(int(p), int(j)) for p in args.prearm.split(",") for j in args.start_with_joins.split(",")]
    for prearm, joins in variants:
        # No periodic checkpoints (checkpoint_every=0): the rows compare the engine with the model.
        with dask.config.set({"turboserve.engine.prearm-chunks": prearm,
                              "turboserve.engine.start-with-joins": bool(joins)}), Server.local(
            n_workers=max(worker_counts), model=args.model, dashboard_address=":0", checkpoint_every=0, adaptive=False
        ) as server:
            if not env_done:
                env_done = True
                with Server.local(n_workers=1, model=args.model, dashboard_address=":0", checkpoint_every=0, adaptive=False,
                                  worker_class=Nanny) as plain:
                    environment(server, plain, bare, args.chunks)
                chunk_paths(server, bare, max(args.chunks, 12))
                if args.pin:
                    chunk_paths(server, bare, max(args.chunks, 12), pin=True)
            print(f"chunk rate against the bare batched model (chunks/s; {args.chunks} chunks per session; "
                  f"engine.prearm-chunks {prearm}, start-with-joins {joins}):", flush=True)
            all_workers = server.workers()
            seed = 0
            for w in worker_counts:
                for s in counts:
                    if s < w:  # fewer sessions than workers: the W=1 row says it
                        continue
                    run_config(server, bare, all_workers[:w], s, args.chunks, seed, args.block, args.timeline)
                    seed += s


if __name__ == "__main__":
    main()
