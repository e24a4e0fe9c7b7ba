"""A chunk's path through its Dask future against the direct stream (issue 12), side by side in one run.

:meth:`framework.Session.submit` returns a :class:`distributed.Future` (a Dask task on the
session's worker takes the chunk from its actor; ``result()`` asks that worker for it
directly, :mod:`framework.chunk_future`); :meth:`framework.Session.stream` polls the
actor itself. :func:`chunk_paths` runs one session, interleaved per round, through
``submit().result()``, ``next(stream(1))`` and the bare ``model.step``
(:class:`experiments.bare_model.BareModel`), so that the machine's load hits all alike;
the two paths take turns at going first after the bare step (the first one pays for the
bare step's disturbance: 40 ms pinned at load 5.5).
Issue 12's target: the future costs at most 2 ms or 5% of a tiny step more than the
direct path (medians of the whole path). Printed per path:

* the wall time, split at the chunk's own step times (before the step, the step, after it);
* CPU per chunk (:func:`cpu_lines`: the worker's event-loop thread, its engine thread, the
  whole worker process, this process = client and scheduler), read from ``/proc``
  around each chunk: what the future costs in CPU, which load distorts less than the
  wall times (read a loaded run by its column net of the idle process's periodic work);
* the worker's Dask bookkeeping per chunk (:func:`bookkeeping`: task transitions,
  messages and batches to the scheduler), which no load changes;
* garbage collections per chunk in this process and in the worker (:func:`gc_totals`:
  every collection and the full ones, with their pause time), and the wall time's tail.

``--pin`` measures once more with the session's worker alone on one core and the client,
scheduler and other workers on the others (:func:`pinned`; where a deployment runs them:
not on a GPU worker's host cores; on a 2-core machine the shared run measures their CPU
competing with the CPU model step as much as the path). ``--gc-freeze`` moves this
process's heap to the permanent generation after the set-up (``gc.freeze()``: a full
collection then scans only what the serving made since) and prints what a full
collection costs here and on the worker with and without it. ``--load N`` runs N
busy-loop processes of its own for the whole run. ``experiments.bench_futures``
profiles the future further (hops, Dask's own ``result()``, a no-op task beside a stream).

Run: ``.venv/bin/python -m experiments.bench_chunk_paths [--chunks 24] [--pin] [--gc-freeze] [--load 0]``
(``python -m experiments.bench_serving --paths-only`` runs the same comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from dataclasses import dataclass

from experiments.bare_model import PROMPT, BareModel


def _set_cores(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` on ``cores`` (Linux: affinity is per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


@contextlib.contextmanager
def pinned(server, worker: str):
    """The process of ``worker`` on the first core, everything else of the cluster (this
    process: client, scheduler, bare model; the other workers) on the others, as where
    the scheduler and the client do not share a GPU worker's host cores; restored after.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least 2 cores")
    pids = server.client.run(os.getpid)
    mine, rest = {cores[0]}, set(cores[1:])
    for addr, pid in pids.items():
        _set_cores(pid, mine if addr == worker else rest)
    _set_cores(os.getpid(), rest)
    try:
        yield
    finally:
        for pid in [*pids.values(), os.getpid()]:
            _set_cores(pid, set(cores))


def chunk_paths(server, bare: BareModel, chunks: int, pin: bool = False) -> None:
    """A chunk's whole path through a :class:`distributed.Future` against the direct one.

    One session, interleaved per round (the paths' order flips every round):
    ``submit().result()`` (a Dask task takes the chunk from the session's actor, so the
    chunk is a real future; ``result()`` asks
    the session's worker for it directly, :mod:`framework.chunk_future`),
    ``next(stream(1))`` (the client polls the actor itself), and the bare
    ``model.step`` of one session. Each path is also split at the chunk's own step times
    (``t_start_s``, ``t_done_s``; the worker's clock, same host): before the step, the
    step (slower when the worker's event loop works meanwhile), after it. The futures
    path costs its difference to the direct one; issue 12's target is at most 2 ms or
    5% of a step more. ``experiments.bench_futures`` profiles it further (hops, CPU).
    ``pin``: the session's worker alone on one core, the rest of the cluster on the
    others (:func:`pinned`).
    """
    worker = server.workers()[0]
    with pinned(server, worker) if pin else contextlib.nullcontext():
        _chunk_paths(server, bare, chunks, worker, pin)


@dataclass(frozen=True, slots=True)
class WorkerThreads:
    """The ids (Linux tids) of a worker process's threads that :func:`cpu_sample` tells apart."""

    pid: int
    loop: int  # the worker's event loop: Dask's task bookkeeping, RPCs, the session actors, chunk tasks
    engines: tuple[int, ...]  # turboserve's engine threads (the model step)

    @classmethod
    def of(cls, server, worker: str) -> WorkerThreads:
        def ids() -> tuple[int, int, list[int]]:  # client.run calls a plain function on the worker's loop
            import os
            import threading

            return (os.getpid(), threading.get_native_id(),
                    [t.native_id for t in threading.enumerate() if t.name.startswith("turboserve-engine")])

        pid, loop, engines = server.client.run(ids, workers=[worker])[worker]
        return cls(pid, loop, tuple(engines))


def cpu_sample(threads: WorkerThreads) -> tuple[float, float, float, float]:
    """CPU seconds so far: the worker's loop thread, its engine threads, the whole worker
    process, and this process (client and scheduler: a LocalCluster's scheduler runs here).

    The worker's figures come from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds the
    thread ran, read from outside: the measure costs the worker nothing, and unlike wall
    time it hardly moves with the machine's load). A thread that ended meanwhile drops out
    of the process's sum (Dask's threads live as long as the worker).
    """
    per: dict[int, float] = {}
    task_dir = f"/proc/{threads.pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                per[int(tid)] = int(f.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass  # ended between listdir and open
    return (per.get(threads.loop, 0.0), sum(per.get(t, 0.0) for t in threads.engines), sum(per.values()),
            time.process_time())


#: Seconds between a chunk's arrival and the end of its CPU sample: the messages it set off
#: (a future's release: client -> scheduler -> worker -> scheduler) are counted with it, not
#: with the next path's chunk. Both paths wait as long (the idle loop's CPU, ~10-20 ms/s, alike).
CPU_SETTLE_S = 0.03
#: Seconds of each round's idle sample (no chunk asked for), the periodic work :func:`cpu_lines` takes out.
CPU_IDLE_S = 0.1


def bookkeeping(server, worker: str) -> tuple[int, int, int]:
    """The worker's task transitions, messages and batches sent to the scheduler so far (Dask's counters).

    What a path costs the worker's event loop in Dask's own bookkeeping, counted: no
    load changes a count.
    """

    def counts(dask_worker) -> tuple[int, int, int]:
        stream = dask_worker.batched_stream
        return dask_worker.state.transition_counter, stream.message_count, stream.batch_count

    return tuple(server.client.run(counts, workers=[worker])[worker])


def gc_totals() -> list[float]:
    """This process's garbage collections so far: ``[all, seconds in them, full ones, seconds in those]``.

    Counted by a callback in ``gc.callbacks``, added on the first call in a process (and
    kept: it only adds to its totals). A full collection (generation 2) walks every
    object of the process, torch's and Dask's included; a collection holds the GIL, so
    on a worker it stops the engine thread's Python work too.
    """
    import gc
    import time

    for callback in gc.callbacks:
        totals = getattr(callback, "turboserve_totals", None)
        if totals is not None:
            return list(totals)
    totals = [0, 0.0, 0, 0.0]
    started = [0.0]

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        totals[0] += 1
        totals[1] += took
        if info["generation"] == 2:
            totals[2] += 1
            totals[3] += took

    count.turboserve_totals = totals
    gc.callbacks.append(count)
    return list(totals)


def worker_gc_totals(server, worker: str) -> list[float]:
    """:func:`gc_totals` of the worker's process (read on its event loop with ``client.run``)."""
    return server.client.run(gc_totals, workers=[worker])[worker]


def full_collection_ms(server, worker: str) -> tuple[float, float, float, float]:
    """Milliseconds of one ``gc.collect()`` in this process and on the worker: the heap unfrozen, then frozen.

    ``gc.freeze()`` moves every object alive to the permanent generation, which no
    collection walks; a full collection then costs what the process made since. A
    process found frozen (a worker freezes itself after its model load,
    ``turboserve.engine.gc-freeze``; this one with ``--gc-freeze``) is unfrozen for the
    first measurement; each process is left frozen or not as it was found.
    """

    def collect_ms() -> tuple[float, float]:
        import gc
        import time

        frozen_before = gc.get_freeze_count() > 0
        if frozen_before:
            gc.unfreeze()  # the first collection walks the whole heap, as if it had never been frozen
        t0 = time.perf_counter()
        gc.collect()
        plain = time.perf_counter() - t0
        gc.freeze()
        t0 = time.perf_counter()
        gc.collect()
        after = time.perf_counter() - t0
        if not frozen_before:
            gc.unfreeze()
        return 1e3 * plain, 1e3 * after

    here = collect_ms()
    there = server.client.run(collect_ms, workers=[worker])[worker]
    return (*here, *there)


BOOKKEEPING = ("task transitions", "messages to the scheduler", "batches sent")
CPU_PARTS = ("worker loop thread", "worker engine thread", "worker process", "client+scheduler")


def _chunk_paths(server, bare: BareModel, chunks: int, worker: str, pin: bool) -> None:
    s = server.open_session(PROMPT, seed=950, worker=worker)
    def future() -> object:
        f = s.submit()
        chunk = f.result()
        f.release()  # its release (scheduler, free-keys on the worker) belongs to this chunk's CPU
        return chunk

    paths = {"future": future, "direct": lambda: next(iter(s.stream(1)))}
    parts: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paths}
    cpu: dict[str, list[tuple[float, ...]]] = {name: [] for name in paths}
    windows: dict[str, list[float]] = {name: [] for name in paths}
    idle: list[tuple[float, ...]] = []  # CPU per second of each part while no chunk is asked for
    counted = {name: [0, 0, 0] for name in paths}  # bookkeeping() per path, summed over the chunks
    collected = {name: [0.0] * 8 for name in paths}  # gc_totals() here, then on the worker, summed likewise
    threads = WorkerThreads.of(server, worker)
    bare_s = []
    whole_run = gc_totals() + worker_gc_totals(server, worker)  # the bare steps and idle samples included
    try:
        for fn in paths.values():  # warm-up of both paths
            fn()
        for i_round in range(chunks):
            bare_s.append(bare.step_s(1))
            c0, t0 = cpu_sample(threads), time.time()
            time.sleep(CPU_IDLE_S)
            c1, t1 = cpu_sample(threads), time.time()
            idle.append(tuple((b - a) / (t1 - t0) for a, b in zip(c0, c1)))
            # Each path goes first every other round: the first after the bare step (which
            # spins a core of this process) runs while the machine's other processes are
            # still spread over the cores, and was 40 ms slower pinned at load 5.5.
            for name, fn in (list(paths.items()) if i_round % 2 == 0 else list(paths.items())[::-1]):
                k0 = bookkeeping(server, worker)  # outside the CPU sample (client.run works on the worker's loop)
                g0 = gc_totals() + worker_gc_totals(server, worker)
                c0 = cpu_sample(threads)
                t0 = time.time()
                chunk = fn()
                t1 = time.time()
                time.sleep(CPU_SETTLE_S)  # both paths alike: what the chunk set off ends in its own sample
                c1 = cpu_sample(threads)
                parts[name].append((t1 - t0, chunk.t_start_s - t0, chunk.t_done_s - chunk.t_start_s, t1 - chunk.t_done_s))
                cpu[name].append(tuple(b - a for a, b in zip(c0, c1)))
                windows[name].append(time.time() - t0)
                counted[name] = [n + b - a for n, a, b in zip(counted[name], k0, bookkeeping(server, worker))]
                g1 = gc_totals() + worker_gc_totals(server, worker)
                collected[name] = [n + b - a for n, a, b in zip(collected[name], g0, g1)]
    finally:
        s.close()
    whole_run = [b - a for a, b in zip(whole_run, gc_totals() + worker_gc_totals(server, worker))]

    def med(rows, i=0):
        return statistics.median(r[i] for r in rows)

    extra = med(parts["future"]) - med(parts["direct"])
    step = statistics.median(bare_s)
    verdict = "met" if extra <= 0.002 or extra <= 0.05 * step else "NOT met"
    where = "; the worker on its own core" if pin else ""
    print(f"a chunk's path, one session, {chunks} chunks interleaved (median ms{where}):")
    print(f"  bare model.step {1e3 * step:7.1f}   stream (direct) {1e3 * med(parts['direct']):7.1f}   "
          f"submit().result() (distributed.Future) {1e3 * med(parts['future']):7.1f}")
    for name, label in (("direct", "stream (direct)  "), ("future", "submit().result()")):
        print(f"  {label} before the step {1e3 * med(parts[name], 1):5.1f}   step {1e3 * med(parts[name], 2):6.1f}   "
              f"after the step {1e3 * med(parts[name], 3):5.1f}")
    print(f"  the future's extra cost {1e3 * extra:+6.1f} ms = {100 * extra / step:+5.1f}% of the bare step "
          f"(target: at most 2 ms or 5%: {verdict})", flush=True)
    paired = [f[0] - d[0] for f, d in zip(parts["future"], parts["direct"])]
    low, high = median_interval(paired)
    print(f"  paired by round (future - direct, the same seconds of load): median {1e3 * statistics.median(paired):+6.1f} ms, "
          f"95% interval {1e3 * low:+6.1f} .. {1e3 * high:+6.1f} ms ({target_verdict(low, high, step)})", flush=True)
    print(cpu_lines(cpu, windows, idle, med(parts["future"]) / med(parts["direct"])), flush=True)
    print("  on the worker per chunk (Dask's counters):  " + "   ".join(
        f"{what} direct {counted['direct'][i] / chunks:4.1f} future {counted['future'][i] / chunks:4.1f}"
        for i, what in enumerate(BOOKKEEPING)), flush=True)
    print(gc_line(collected, chunks), flush=True)
    print(f"    over the whole run ({chunks} rounds): client+scheduler {whole_run[0]:.0f} collections "
          f"({1e3 * whole_run[1]:.1f} ms), {whole_run[2]:.0f} full ({1e3 * whole_run[3]:.1f} ms);   worker "
          f"{whole_run[4]:.0f} ({1e3 * whole_run[5]:.1f} ms), {whole_run[6]:.0f} full ({1e3 * whole_run[7]:.1f} ms)",
          flush=True)
    print("  the wall time's tail (ms):  " + "   ".join(
        f"{name} p90 {1e3 * _quantile([r[0] for r in parts[name]], 0.9):6.1f} max {1e3 * max(r[0] for r in parts[name]):6.1f}"
        for name in ("direct", "future")), flush=True)


def median_interval(xs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``xs`` (seeded: the same data give the same interval).

    The differences are paired by round (the future and the direct chunk of one round
    ran within a second of each other), so a load that drifts over minutes moves both;
    what is left is the noise of the round, which the interval shows.
    """
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def target_verdict(low: float, high: float, step: float) -> str:
    """Issue 12's target (at most 2 ms or 5% of the bare ``step`` more) read off an interval of the extra cost."""
    bound = max(0.002, 0.05 * step)
    if high <= bound:
        return "target met"
    if low > bound:
        return "target NOT met"
    return f"undecided at this noise: the bound {1e3 * bound:.1f} ms is inside"


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[round(100 * q) - 1] if len(xs) > 1 else xs[0]


def gc_line(collected: dict[str, list[float]], chunks: int) -> str:
    """Garbage collections per 100 chunks of each path and their pause time per chunk, here and on the worker.

    ``collected[path]``: :func:`gc_totals` deltas summed over the path's chunks, this
    process's four then the worker's four.
    """
    def part(c: list[float], at: int) -> str:
        return (f"{100 * c[at] / chunks:5.1f} ({1e3 * c[at + 1] / chunks:5.2f} ms/chunk), "
                f"full {100 * c[at + 2] / chunks:4.1f} ({1e3 * c[at + 3] / chunks:5.2f} ms/chunk)")

    return "\n".join(["  garbage collections per 100 chunks (pause per chunk):"] + [
        f"    {name:7s} client+scheduler {part(collected[name], 0)}   worker {part(collected[name], 4)}"
        for name in ("direct", "future")])


def cpu_lines(cpu: dict[str, list[tuple[float, ...]]], windows: dict[str, list[float]],
              idle: list[tuple[float, ...]], wall_ratio: float) -> str:
    """CPU ms per chunk (mean over the chunks, :func:`cpu_sample`) of the future and the direct path, side by side.

    What a chunk future costs the session's worker in CPU: load on the machine stretches
    wall times (the target's measure) far more than the CPU a path burns. Part of a
    sample is the periodic work of an idle process (heartbeats, the system monitor:
    ~10-20 ms/s of the worker's loop), which grows with the sample's wall time, so with
    load; the last column takes it out (``idle`` rate, measured between the rounds,
    times each sample's window) and is what a loaded run should be read by.
    """
    rate = [statistics.mean(r[i] for r in idle) for i in range(len(CPU_PARTS))]
    lines = [(f"  CPU per chunk (mean ms, /proc schedstat)  {'direct':>8s} {'future':>8s} {'future-direct':>14s}"
              f" {'net of idle':>12s}  (idle ms/s)")]
    for i, part in enumerate(CPU_PARTS):
        direct, future = (1e3 * statistics.mean(r[i] for r in cpu[name]) for name in ("direct", "future"))
        net = future - direct - 1e3 * rate[i] * (statistics.mean(windows["future"]) - statistics.mean(windows["direct"]))
        lines.append(f"    {part:38s} {direct:8.2f} {future:8.2f} {future - direct:+14.2f} {net:+12.2f}"
                     f"  ({1e3 * rate[i]:5.1f})")
    lines.append(f"    wall future/direct {wall_ratio:5.3f}x")
    return "\n".join(lines)



def start_load(n: int) -> list:
    """``n`` processes that spin a core each (the benchmark's own, ended with it)."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunks", type=int, default=24, help="chunks per path, interleaved (default 24, at least 12)")
    parser.add_argument("--pin", action="store_true",
                        help="also with the session's worker alone on one core and the client, scheduler and other "
                             "workers on the others (as deployed: they do not share a GPU worker's host cores)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() this process (client and scheduler) after the set-up, and print what a full "
                             "collection costs here and on the worker with and without it")
    parser.add_argument("--load", type=int, default=0,
                        help="start this many busy-loop processes for the whole run (default 0)")
    args = parser.parse_args()
    hogs = start_load(args.load)
    try:
        run(args.model, max(args.chunks, 12), pin=args.pin, gc_freeze=args.gc_freeze, load=args.load)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run(model: str, chunks: int, pin: bool = False, gc_freeze: bool = False, load: int = 0) -> None:
    """The comparison on a cluster of its own: one worker (shared cores), then pinned (``pin``)."""
    import gc

    from framework import Server

    print(f"busy-loop processes: {load}; model {model!r}; load average {os.getloadavg()[0]:.2f}; "
          f"this process's heap {'frozen (gc.freeze) after the set-up' if gc_freeze else 'as Python keeps it'}",
          flush=True)
    bare = BareModel(model, [1])
    with Server.local(n_workers=1, model=model, dashboard_address=":0", checkpoint_every=0, adaptive=False) as server:
        worker = server.workers()[0]
        if gc_freeze:
            here, here_frozen, there, there_frozen = full_collection_ms(server, worker)
            print(f"  one full collection (ms): client+scheduler {here:6.1f}, heap frozen {here_frozen:5.1f}   "
                  f"worker {there:6.1f}, heap frozen {there_frozen:5.1f}", flush=True)
            gc.freeze()
        try:
            chunk_paths(server, bare, chunks)
            if pin:
                chunk_paths(server, bare, chunks, pin=True)
        finally:
            if gc_freeze:
                gc.unfreeze()
    print(f"load average after the run {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
