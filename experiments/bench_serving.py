"""Serving benchmark: the live server against the bare batched model, side by side in one run.

Everything is measured in one run, each live measurement next to the bare one it is
compared with (the machine is shared and noisy: compare within a run, not across runs):

1. **Worker environment.** The model step inside a worker started the way turboserve
   starts them (:class:`framework.worker_env.ServingNanny`) against one started by
   Dask's plain nanny (``MALLOC_TRIM_THRESHOLD_=65536``), and the bare step in this
   process: step time measured on the worker (``t_done_s - t_start_s``) and the whole
   path of a chunk (``submit().result()``), one session, interleaved.
2. **Chunk rate against the bare batched model.** ``S`` sessions (1, 4, 8) on ``W``
   workers (1, 2), placed evenly. *Closed loop*: each session asks for its next chunk as
   soon as it has the last one. *Back to back*: rounds of ``S`` ``submit()`` calls made
   one after the other, then all results. The bare reference is ``model.step`` over
   ``S / W`` sessions in this process, with one torch thread like a worker; live and
   bare alternate in blocks (two chunks per session, two bare steps) and the rates are
   totals over the blocks. For ``W = 2`` the bare rate is doubled (two workers run in
   parallel on two cores, which assumes nothing else runs). Printed per row: live and
   bare chunks/s and their ratio, the mean batch the engines formed (steps and chunks
   from their counters) against the batch the simulator assumes (every due session of a
   worker in one step: ``S / W``), client-side chunk latency, and the overhead per chunk
   (``1/live rate - 1/bare rate``). No periodic checkpoints (``checkpoint_every=0``).

Run: ``.venv/bin/python -m experiments.bench_serving [--chunks 6] [--sessions 1,4,8]
[--workers 1,2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

PROMPT = "a red fox running through snow"


class BareModel:
    """The bare batched model in this process, one torch thread like a Dask worker.

    Each batch size has its own sessions, stepped together, so that (like the live
    sessions of one step) they are at the same chunk and their caches have one length.
    """

    def __init__(self, model_name: str, sizes: list[int]) -> None:
        from kernels.model import StreamingVideoModel

        self.model = StreamingVideoModel.from_preset(model_name, device="cpu", weights_seed=0, num_threads=1)
        self.states = {b: [self.model.new_session(PROMPT, i) for i in range(b)] for b in sorted(set(sizes))}
        for states in self.states.values():
            self.model.step(states)  # warm-up, as every live session made a chunk first

    def step_s(self, batch: int) -> float:
        """Seconds of one batched step over ``batch`` sessions (advances them)."""
        t0 = time.perf_counter()
        self.model.step(self.states[batch])
        return time.perf_counter() - t0


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

    def line(self) -> str:
        overhead = 1e3 * (1 / self.live_rate - 1 / self.bare_rate)
        rounds = "" if self.steps_per_round is None else f"  steps/round/worker {self.steps_per_round:4.2f}"
        return (
            f"  W={self.workers} S={self.sessions} {self.mode:12s} live {self.live_rate:6.2f}  bare {self.bare_rate:6.2f}"
            f"  ratio {self.live_rate / self.bare_rate:5.2f}x  mean batch {self.mean_batch:4.2f} / {self.assumed_batch:4.2f}"
            f" ({self.mean_batch / self.assumed_batch:4.2f}x)  latency p50 {self.p50_ms:6.0f} max {self.max_ms:6.0f} ms"
            f"  overhead {overhead:+6.1f} ms/chunk{rounds}"
        )


def _engine_counts(server) -> dict[str, tuple[int, int]]:
    from workers.plugin import get_host

    def counts(dask_worker):
        m = get_host(dask_worker).metrics().get("tiny")
        return (0, 0) if m is None else (m.steps, m.chunks)

    return server.client.run(counts)


def _mean_batch(before: dict, after: dict, workers: list[str]) -> float:
    # A worker that restarted in between (it lost its counters) counts for nothing.
    steps = sum(after.get(w, (0, 0))[0] - before.get(w, (0, 0))[0] for w in workers if w in after and w in before)
    chunks = sum(after.get(w, (0, 0))[1] - before.get(w, (0, 0))[1] for w in workers if w in after and w in before)
    return chunks / steps if steps else 0.0


async def _closed_loop(sessions, n: int) -> list[tuple[float, object]]:
    async def one(s):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            chunk = await s.asubmit()
            out.append((time.perf_counter() - t0, chunk))
        return out

    return [x for xs in await asyncio.gather(*(one(s) for s in sessions)) for x in xs]


def run_config(server, bare: BareModel, workers: list[str], n_sessions: int, chunks: int, seed0: int) -> list[Row]:
    """Closed-loop and back-to-back rows for ``n_sessions`` on ``workers``.

    Live and bare alternate in blocks of two chunks per session and two bare steps, so
    that a change in the machine's load hits both sides alike; the rates are totals
    over the blocks.
    """
    sessions = [server.open_session(PROMPT, seed=seed0 + i, worker=workers[i % len(workers)])
                for i in range(n_sessions)]
    per_worker = max(1, n_sessions // len(workers))
    assumed = n_sessions / len(workers)
    block = 2
    rows = []
    try:
        server.client.sync(_closed_loop, sessions, 1)  # warm-up: every session made a chunk
        for mode in ("closed-loop", "back-to-back"):
            before = _engine_counts(server)
            live_s, bare_s, bare_chunks = 0.0, 0.0, 0
            got, starts = [], []
            for _ in range(max(1, chunks // block)):
                for _ in range(block):
                    bare_s += bare.step_s(per_worker)
                    bare_chunks += per_worker
                t0 = time.perf_counter()
                if mode == "closed-loop":
                    got += server.client.sync(_closed_loop, sessions, block)
                else:
                    for _ in range(block):
                        t_round = time.perf_counter()
                        futures = [s.submit() for s in sessions]
                        done = [f.result() for f in futures]
                        wall = time.perf_counter() - t_round
                        got += [(wall, c) for c in done]
                        starts.append(len({(c.worker, c.t_start_s) for c in done}) / len(workers))
                live_s += time.perf_counter() - t0
            after = _engine_counts(server)
            bare_rate = bare_chunks / bare_s * len(workers)
            latencies = [1e3 * w for w, _ in got]
            rows.append(Row(len(workers), n_sessions, mode, len(got) / live_s, bare_rate,
                            _mean_batch(before, after, workers), assumed,
                            statistics.median(latencies), max(latencies),
                            statistics.mean(starts) if starts else None))
            print(rows[-1].line(), flush=True)
    finally:
        for s in sessions:
            s.close()
    return rows


def environment(ours, plain, bare: BareModel, chunks: int) -> None:
    """Step and whole-path time of one session: our workers, Dask's plain nanny, bare."""
    import os

    env = {name: srv.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
           for name, srv in (("ours", ours), ("plain", plain))}
    sessions = {"ours": ours.open_session(PROMPT, seed=900, worker=ours.workers()[0]),
                "plain": plain.open_session(PROMPT, seed=900)}
    step = {k: [] for k in sessions}
    path = {k: [] for k in sessions}
    bare_s = []
    try:
        for s in sessions.values():
            s.submit().result()  # warm-up
        for _ in range(chunks):  # interleaved, so load on the machine hits all alike
            bare_s.append(bare.step_s(1))
            for name, s in sessions.items():
                t0 = time.perf_counter()
                chunk = s.submit().result()
                path[name].append(time.perf_counter() - t0)
                step[name].append(chunk.t_done_s - chunk.t_start_s)
    finally:
        for s in sessions.values():
            s.close()
    med = statistics.median
    print(f"worker environment, one session, {chunks} chunks interleaved (median ms):")
    print(f"  bare model.step in this process              {1e3 * med(bare_s):7.1f}")
    for name, label in (("ours", "turboserve worker (ServingNanny)"), ("plain", "Dask's plain nanny")):
        var = sorted(set(env[name].values()))
        print(f"  {label:33s} step {1e3 * med(step[name]):7.1f}  whole path {1e3 * med(path[name]):7.1f}"
              f"   MALLOC_TRIM_THRESHOLD_={var}")
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
    args = parser.parse_args()
    counts = [int(x) for x in args.sessions.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    import dask.config
    from distributed import Nanny

    from framework import Server

    if args.slo_s is not None:
        dask.config.set({"turboserve.slo-s": args.slo_s})

    print(f"model {args.model!r}, engine: batch-window-s {dask.config.get('turboserve.engine.batch-window-s')}, "
          f"max-batch {dask.config.get('turboserve.engine.max-batch')}, "
          f"slo {dask.config.get('turboserve.slo-s')} (null: chunk playback time)", flush=True)
    bare = BareModel(args.model, [1] + [max(1, s // w) for s in counts for w in worker_counts if s >= w])
    # No periodic checkpoints (checkpoint_every=0): the rows compare the engine with the model.
    with Server.local(n_workers=max(worker_counts), model=args.model, dashboard_address=":0",
                      checkpoint_every=0) as server:
        if not args.skip_env:
            with Server.local(n_workers=1, model=args.model, dashboard_address=":0", checkpoint_every=0,
                              worker_class=Nanny) as plain:
                environment(server, plain, bare, args.chunks)
        print(f"chunk rate against the bare batched model (chunks/s; {args.chunks} chunks per session):", flush=True)
        all_workers = server.workers()
        seed = 0
        for w in worker_counts:
            for s in counts:
                if s < w:  # fewer sessions than workers: the W=1 row says it
                    continue
                run_config(server, bare, all_workers[:w], s, args.chunks, seed)
                seed += s


if __name__ == "__main__":
    main()
