"""Serving benchmark: what the Dask path costs per chunk, and what coalescing buys.

Two measurements, each side by side in one run (interleaved, so the load of a shared
machine hits both sides alike):

1. **Per-chunk overhead.** The bare engine step (``model.step`` on one session, in this
   process, one torch thread like a Dask worker) against the whole path of one chunk
   (``Session.submit().result()``: client -> worker actor -> engine thread -> batched
   step -> outbox -> long-poll -> client) on a one-worker LocalCluster. The overhead of
   a chunk is its client-side wall time minus its own step time (``t_done_s -
   t_start_s``, measured on the worker).
2. **Coalescing.** Chunk throughput of ``--sessions`` sessions on one worker, each asking
   for its next chunk as soon as it got the last, with ``turboserve.engine.batching``
   on and off (two one-worker clusters, rounds alternating between them).

Run: ``.venv/bin/python experiments/bench_serving.py [--chunks 8] [--sessions 4]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPT = "a red fox running through snow"


class BareModel:
    """The bare model in this process, one torch thread like a Dask worker."""

    def __init__(self, model_name: str) -> None:
        from kernels.model import StreamingVideoModel

        self.model = StreamingVideoModel.from_preset(model_name, device="cpu", weights_seed=0, num_threads=1)
        self.state = self.model.new_session(PROMPT, 0)
        self.model.step([self.state])  # warm-up

    def step_s(self) -> float:
        t0 = time.perf_counter()
        self.model.step([self.state])
        return time.perf_counter() - t0


def chunk_s(session) -> tuple[float, float]:
    """Client wall time and worker step time of one chunk fetched alone."""
    t0 = time.perf_counter()
    chunk = session.submit().result()
    return time.perf_counter() - t0, chunk.t_done_s - chunk.t_start_s


class Streams:
    """``n`` sessions on one worker, each asking for its next chunk as soon as it has the last."""

    def __init__(self, server, n: int) -> None:
        worker = server.workers()[0]
        self.sessions = [server.open_session(PROMPT, seed=i, worker=worker) for i in range(n)]
        for s in self.sessions:  # warm-up
            s.submit().result()

    def run(self, chunks_each: int) -> tuple[int, float, list[int]]:
        """Chunks made, seconds taken and batch sizes seen for ``chunks_each`` per session."""
        t0 = time.perf_counter()
        left = {s.id: chunks_each for s in self.sessions}
        futures = {s.id: (s, s.submit()) for s in self.sessions}
        sizes: list[int] = []
        while futures:
            for sid, (s, fut) in list(futures.items()):
                if not fut.done():
                    continue
                sizes.append(fut.result().batch_size)
                left[sid] -= 1
                if left[sid]:
                    futures[sid] = (s, s.submit())
                else:
                    del futures[sid]
            time.sleep(0.001)
        return len(sizes), time.perf_counter() - t0, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunks", type=int, default=8, help="chunks per measurement (default 8)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions for the coalescing test (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the coalescing test")
    args = parser.parse_args()

    from framework import Server

    med = statistics.median
    with Server.local(n_workers=1, model=args.model, dashboard_address=":0") as on_server:
        bare = BareModel(args.model)
        session = on_server.open_session(PROMPT, seed=0)
        session.submit().result()  # warm-up
        bare_s, wall_s, step_s = [], [], []
        for _ in range(args.chunks):  # interleaved, so load on the machine hits both alike
            bare_s.append(bare.step_s())
            wall, step = chunk_s(session)
            wall_s.append(wall)
            step_s.append(step)
        session.close()
        overhead = [w - s for w, s in zip(wall_s, step_s)]
        print(f"per-chunk, one session, model {args.model!r}, {args.chunks} chunks, interleaved (median):")
        print(f"  bare model.step            {1e3 * med(bare_s):8.1f} ms")
        print(f"  step inside the engine     {1e3 * med(step_s):8.1f} ms")
        print(f"  whole path submit->chunk   {1e3 * med(wall_s):8.1f} ms")
        print(
            f"  overhead (path - step)     {1e3 * med(overhead):8.1f} ms"
            f"  = {med(overhead) / med(bare_s):.1%} of a bare step"
        )

        # The baseline cluster starts only now, so that it does not load the machine above.
        off_server = Server.local(n_workers=1, model=args.model, batching=False, dashboard_address=":0")
        try:
            on, off = Streams(on_server, args.sessions), Streams(off_server, args.sessions)
            _compare(on, off, args)
        finally:
            off_server.close()


def _compare(on: Streams, off: Streams, args: argparse.Namespace) -> None:
    """Alternate rounds of the two clusters and print their throughputs."""
    totals = {"on": [0, 0.0, []], "off": [0, 0.0, []]}
    for _ in range(args.rounds):
        for name, streams in (("on", on), ("off", off)):
            n, secs, sizes = streams.run(args.chunks)
            totals[name][0] += n
            totals[name][1] += secs
            totals[name][2] += sizes
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    print(f"throughput, {args.sessions} sessions on one worker, {args.rounds} x {args.chunks} chunks each:")
    for name in ("on", "off"):
        print(f"  batching {name:4s} {rate[name]:6.2f} chunks/s  (mean batch {statistics.mean(totals[name][2]):.2f})")
    print(f"  ratio on/off  {rate['on'] / rate['off']:6.2f}x")


if __name__ == "__main__":
    main()
