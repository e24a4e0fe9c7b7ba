"""Where a chunk future's time goes: its path against the direct stream, hop by hop and by CPU.

:meth:`framework.Session.submit` returns a :class:`framework.chunk_future.ChunkFuture` (a
:class:`distributed.Future` of the task :func:`workers.chunk_futures.chunk_task`), whose
``result()`` asks the session's worker for the chunk directly. This script measures, on
one cluster of two workers (every session on the first), interleaved chunk by chunk so
that the machine's load hits every path alike:

* **paths**, one session, closed loop (ask, wait, repeat), the client's wall time per
  chunk: ``stream(1)`` (the client long-polls the actor), ``submit().result()`` (the
  future, its result from the worker), ``submit()`` with Dask's own ``result()``
  (``Future._result``: wait for the scheduler's report, ``who_has``, then the data), and
  ``stream(1)`` beside a no-op Dask task sent to the same worker (what one task per
  chunk costs whatever it does: the floor of any design that makes a task per chunk)
  and to the other worker (the session's worker sees nothing of it: what is left is
  the scheduler's, the client's and the other worker's CPU on shared cores),
  each split at the chunk's own times (``t_start_s``, ``t_done_s``, worker clock, same
  host): before the step, the step, after the step;
* **hops** of the future (``--hops``): median ms from the call to ``submit()`` to each
  transition of the chunk's task in the scheduler's and the worker's transition logs,
  the step's start and end, the client's ``result()`` returning, and the scheduler's
  report reaching the client;
* **CPU per chunk** by process (``--cpu``): the worker's event-loop thread, the whole
  worker process (the engine's step included) and this process (client and scheduler:
  a LocalCluster's scheduler runs in the client's process), per path, over blocks of
  chunks;
* **S sessions, back to back**: ``S`` submits, then ``client.gather`` of all, against
  ``S`` ``stream(1)`` run together; wall time per round.

Run: ``.venv/bin/python -m experiments.bench_futures [--chunks 20] [--sessions 4] [--hops] [--cpu]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

PROMPT = "a red fox running through snow"


def _ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def _dask_result(session) -> object:
    """One chunk through ``submit()`` and Dask's own ``Future.result()`` (not the worker's shortcut)."""
    from distributed import Future

    future = session.submit()
    return session._server.client.sync(Future._result, future)


def _noop(x: int) -> int:
    return x


def _stream_beside_a_task(session, worker: str) -> object:
    """``stream(1)`` while a no-op Dask task goes to ``worker``: what any task per chunk costs."""
    client = session._server.client
    index = session._sync(session._channel.request, 1)
    task = client.submit(_noop, index, pure=False, workers=[worker])
    chunk = session._sync(session._chunk, index)
    task.result()
    return chunk


def _rotated(paths: dict, r: int) -> list:
    """``paths``' items, the ``r``-th round's order: starting at ``r`` modulo their number.

    Whichever path runs first in a round pays for what came before it (the previous
    round's last path, a sample, a settle): the order turns so that each pays in turn
    (bench_chunk_paths measured a 42 ms penalty on the first path after a bare step).
    """
    items = list(paths.items())
    k = r % len(items)
    return items[k:] + items[:k]


def _paths(session, chunks: int, elsewhere: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per path: ``(before step, step, after step, total)`` seconds per chunk, interleaved."""
    paths = {
        "stream(1)": lambda: next(iter(session.stream(1))),
        "submit().result()": lambda: session.submit().result(),
        "Dask's own result()": lambda: _dask_result(session),
        "stream + no-op task": lambda: _stream_beside_a_task(session, session.worker),
        "... task elsewhere": lambda: _stream_beside_a_task(session, elsewhere),
    }
    out: dict[str, list] = {name: [] for name in paths}
    for r in range(chunks):
        for name, fn in _rotated(paths, r):  # each path goes first in turn: none always follows the same one
            t0 = time.time()
            chunk = fn()
            t1 = time.time()
            out[name].append((chunk.t_start_s - t0, chunk.t_done_s - chunk.t_start_s, t1 - chunk.t_done_s, t1 - t0))
    return out


def _hops(server, session, chunks: int) -> list[tuple[str, float]]:
    """Median ms from ``submit()`` to each event of the future's way (see the module's doc)."""
    rows, keys = [], set()
    for _ in range(chunks):
        t0 = time.time()
        future = session.submit()
        t1 = time.time()
        reported: dict[str, float] = {}
        future.add_done_callback(lambda _f, reported=reported: reported.setdefault("t", time.time()))
        chunk = future.result()
        t2 = time.time()
        future.release()
        deadline = time.monotonic() + 5
        while "t" not in reported and time.monotonic() < deadline:
            time.sleep(0.001)
        keys.add(future.key)
        rows.append((future.key, t0, {"submit() returned": t1, "step started": chunk.t_start_s,
                                      "step done": chunk.t_done_s, "result() returned": t2,
                                      "scheduler's report at the client": reported.get("t")}))
        next(iter(session.stream(1)))  # the same pace as the paths (a stream between futures)

    def scheduler_log(dask_scheduler, keys=keys):
        return [(e[0], e[1], e[2], e[-1]) for e in dask_scheduler.transition_log if e[0] in keys]

    def worker_log(dask_worker, keys=keys):
        states = {"released", "waiting", "ready", "executing", "long-running", "memory", "forgotten"}
        return [(e[0], e[1], e[2], e[-1]) for e in dask_worker.state.log if e[0] in keys and e[2] in states]

    events: dict = {}
    for key, start, finish, t in server.client.run_on_scheduler(scheduler_log):
        events.setdefault(key, {})[f"scheduler: {start} -> {finish}"] = t
    for log in server.client.run(worker_log).values():
        for key, start, finish, t in log:
            events.setdefault(key, {}).setdefault(f"worker: {start} -> {finish}", t)
    since: dict[str, list[float]] = {}
    for key, t0, own in rows:
        for name, t in {**own, **events.get(key, {})}.items():
            if t is not None:
                since.setdefault(name, []).append(t - t0)
    return sorted(((name, _ms(ts)) for name, ts in since.items()), key=lambda kv: kv[1])


def _cpu(server, session, chunks: int, rounds: int = 3) -> dict[str, tuple[float, float, float]]:
    """Per path: CPU ms per chunk of the worker's loop thread, the worker process and this process."""

    def sample() -> tuple[float, float, float]:
        loop = server.client.run(time.thread_time, workers=[session.worker])[session.worker]
        process = server.client.run(time.process_time, workers=[session.worker])[session.worker]
        return loop, process, time.process_time()

    paths = {
        "stream(1)": lambda: next(iter(session.stream(1))),
        "submit().result()": lambda: session.submit().result(),
        "Dask's own result()": lambda: _dask_result(session),
    }
    total = {name: [0.0, 0.0, 0.0] for name in paths}
    for r in range(rounds):
        for name, fn in _rotated(paths, r):
            before = sample()
            for _ in range(chunks):
                fn()
            after = sample()
            for i in range(3):
                total[name][i] += after[i] - before[i]
    n = rounds * chunks
    return {name: tuple(1e3 * v / n for v in values) for name, values in total.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20, help="chunks per path (default 20)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions of the back-to-back rounds (default 4)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--hops", action="store_true", help="the future's hops (transition logs)")
    parser.add_argument("--cpu", action="store_true", help="CPU per chunk by process and path")
    args = parser.parse_args(argv)

    from framework import Server

    with Server.local(n_workers=2, model=args.model, checkpoint_every=0, dashboard_address=":0",
                      adaptive=False) as server:
        home, elsewhere = server.workers()[:2]
        one = server.open_session(PROMPT, seed=0, worker=home)
        _paths(one, 1, elsewhere)  # warm-up of every path
        paths = _paths(one, args.chunks, elsewhere)
        print(f"one session, model {args.model}, on 1 of 2 workers, {args.chunks} chunks per path interleaved "
              "(median ms; before/after: the chunk's t_start_s/t_done_s against the client's clock):")
        stream_total = _ms([r[3] for r in paths["stream(1)"]])
        for name, rows in paths.items():
            total = _ms([r[3] for r in rows])
            print(f"  {name:20s} before step {_ms([r[0] for r in rows]):6.2f}  step {_ms([r[1] for r in rows]):7.2f}  "
                  f"after step {_ms([r[2] for r in rows]):6.2f}  total {total:7.2f}  ({total - stream_total:+6.2f} vs stream)")
        if args.hops:
            print("the future's way (median ms since submit() was called):")
            for name, ms in _hops(server, one, args.chunks):
                print(f"  {ms:8.2f}  {name}")
        if args.cpu:
            print("CPU per chunk (ms): worker event-loop thread, worker process (step included), "
                  "client + scheduler process:")
            for name, (loop, process, here) in _cpu(server, one, max(4, args.chunks // 2)).items():
                print(f"  {name:20s} worker loop {loop:6.2f}  worker process {process:7.2f}  client+scheduler {here:6.2f}")
        one.close()

        many = [server.open_session(PROMPT, seed=1 + i, worker=home) for i in range(args.sessions)]
        server.client.gather([s.submit() for s in many])

        async def streams():
            async def one_chunk(s):
                return [c async for c in s.astream(1)]

            return await asyncio.gather(*(one_chunk(s) for s in many))

        server.client.sync(streams)
        fut_r, stream_r = [], []
        for _ in range(max(1, args.chunks // 2)):
            t0 = time.perf_counter()
            server.client.gather([s.submit() for s in many])
            fut_r.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            server.client.sync(streams)
            stream_r.append(time.perf_counter() - t0)
        for s in many:
            s.close()
    d = (_ms(fut_r) - _ms(stream_r)) / args.sessions
    print(f"{args.sessions} sessions back to back: submits + client.gather {_ms(fut_r):7.2f}   "
          f"streams together {_ms(stream_r):7.2f}   per chunk {d:+6.2f} ms   ({len(fut_r)} rounds each)")


if __name__ == "__main__":
    main()
