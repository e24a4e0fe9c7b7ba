"""A worker joins while sessions stream: how long does the session the loop moves onto it stall?

``python -m experiments.bench_warm_join [--load-delay 8] [--sessions 2]``

One LocalCluster worker serves ``sessions`` closed-loop streams (each asks for its next
chunk when the last one arrived) with the closed control loop running and an SLO below
any step, so the loop spreads them as soon as a second worker is usable. A second worker
then joins, its model load slowed by ``turboserve.engine.model-load-delay`` (standing for
a GPU-sized checkpoint). The run is made twice, side by side:

- ``at join``: ``turboserve.control.worker-ready-timeout: 0``, the worker is offered as
  soon as it joins the scheduler (what Dask reports);
- ``when warm``: the default, it is offered once its model host reports its model loaded.

Printed per run: when the worker reported ready and when the loop first migrated onto
it (seconds after the join), and the moved session's worst wait for a chunk after the
join next to its median wait before it. :func:`run` is also the scenario of
``tests/test_worker_ready.py``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from typing import Any

import dask

from workers.plugin import READY_TOPIC

PROMPTS = ("a red fox running through snow", "waves breaking on a rocky shore at dusk",
           "a paper boat drifting down a rainy street", "a hot air balloon rising over green hills")
#: The loop acts within seconds on any machine: an SLO below any step time, short ticks,
#: and a fixed latency model in which a second session doubles the step (so one session
#: per worker is what placement wants, whatever this machine's measured batching gain).
CONFIG = {"turboserve.slo-s": 0.05, "turboserve.control.interval": "500ms"}
CONTROL = {"placement_params": {"min_gain": 0.01}, "measure": False,
           "latency_points": ((1, 0.1), (2, 0.2), (8, 0.8))}


def _stream(session: Any, arrivals: list[float], stop: threading.Event, errors: list[str]) -> None:
    try:
        while not stop.is_set():
            for _ in session.stream(1):
                arrivals.append(time.time())
    except Exception as exc:  # reported by run(), never hidden
        errors.append(f"{session.id}: {type(exc).__name__}: {exc}")


def run(load_delay_s: float = 8.0, ready_timeout: str = "120s", n_sessions: int = 2,
        settle_s: float = 60.0, after_chunks: int = 3) -> dict[str, Any]:
    """One run of the scenario (module docstring); returns its times, all in seconds.

    ``settle_s``: how long after the join to wait for a migration onto the new worker.
    Keys: ``joined`` (wall time), ``ready_s`` and ``first_migrate_s`` (after the join;
    None: did not happen), ``migrations`` (accepted Migrate decisions onto the new worker,
    their times after the join), ``moved`` (the session moved first), ``worst_gap_s`` (its
    longest wait for a chunk after the join), ``median_gap_s`` (its median wait before),
    ``starting_seen`` (whether a snapshot showed the new worker STARTING), ``errors``,
    ``decisions`` (the loop's decisions after the join but ScaleTo, times after the join).
    """
    from framework import Server

    store = tempfile.mkdtemp(prefix="turboserve-warm-join-")
    with dask.config.set({**CONFIG, "turboserve.control.worker-ready-timeout": ready_timeout}):
        server = Server.local(n_workers=1, model="tiny", store=store, adaptive=False, dashboard_address=None)
        try:
            server.start_control(**CONTROL)
            return _scenario(server, load_delay_s, ready_timeout, n_sessions, settle_s, after_chunks)
        finally:
            server.close()


def _scenario(server: Any, load_delay_s: float, ready_timeout: str, n_sessions: int, settle_s: float,
              after_chunks: int) -> dict[str, Any]:
    (first,) = server.workers()
    stop, errors = threading.Event(), []
    sessions = [server.open_session(PROMPTS[i % len(PROMPTS)], seed=i) for i in range(n_sessions)]
    arrivals: dict[str, list[float]] = {s.id: [] for s in sessions}
    threads = [threading.Thread(target=_stream, args=(s, arrivals[s.id], stop, errors), daemon=True)
               for s in sessions]
    for t in threads:
        t.start()
    while min(len(a) for a in arrivals.values()) < 4 and not errors:
        time.sleep(0.05)
    joined = time.time()
    with dask.config.set({"turboserve.engine.model-load-delay": load_delay_s}):
        server.cluster.scale(2)  # the new worker's Nanny takes this config to its process
        while len(server.workers()) < 2:
            time.sleep(0.05)
    (new,) = [w for w in server.workers() if w != first]
    starting_seen, moved = False, None
    deadline = joined + settle_s
    while time.time() < deadline and not errors:
        snap = server.client.run_on_scheduler(_status_of, worker=new)
        starting_seen |= snap == "starting"
        moved = next((r["id"] for r in server.sessions() if r["worker"] == new), None)
        if moved is not None:
            break
        time.sleep(0.1)
    if moved is not None:  # a few chunks on the new worker
        start = len(arrivals[moved])
        while len(arrivals[moved]) < start + after_chunks and time.time() < deadline + 30 and not errors:
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    ready = [t for t, msg in server.client.get_events(READY_TOPIC) if msg.get("worker") == new]
    log = server.client.sync(server.client.scheduler.turboserve_control_log)
    migrations = sorted(d["time_s"] - joined for d in log["decisions"]
                        if d["action"] == "Migrate" and d["accepted"] and d["worker"] == new)
    result: dict[str, Any] = {
        "joined": joined, "load_delay_s": load_delay_s, "ready_timeout": ready_timeout,
        "ready_s": ready[0] - joined if ready else None,
        "first_migrate_s": migrations[0] if migrations else None, "migrations": migrations,
        "moved": moved, "starting_seen": starting_seen, "errors": errors,
        "worst_gap_s": None, "median_gap_s": None,
        "decisions": [(d["time_s"] - joined, d["action"], d["session_id"], d["worker"], d["accepted"], d["reason"])
                      for d in log["decisions"] if d["time_s"] >= joined and d["action"] != "ScaleTo"],
    }
    if moved is not None:
        times = arrivals[moved]
        before = [b - a for a, b in itertools.pairwise(times) if b <= joined]
        after = [b - a for a, b in itertools.pairwise(times) if b > joined]
        result["median_gap_s"] = statistics.median(before) if before else None
        result["worst_gap_s"] = max(after) if after else None
    for s in sessions:
        s.close()
    return result


def _status_of(dask_scheduler: Any, worker: str) -> str | None:
    """The control loop's status of ``worker`` in a snapshot taken now (on the scheduler)."""
    from framework.registry import PLUGIN_NAME

    snap = dask_scheduler.plugins[PLUGIN_NAME].loop.snapshot()
    view = next((w for w in snap.workers if w.address == worker), None)
    return None if view is None else view.status.value


def _fmt(x: float | None) -> str:
    return "  never" if x is None else f"{x:7.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load-delay", type=float, default=8.0, help="seconds added to the new worker's model load")
    p.add_argument("--sessions", type=int, default=2)
    args = p.parse_args(argv)
    rows = [("at join", run(args.load_delay, "0s", args.sessions)),
            ("when warm", run(args.load_delay, "120s", args.sessions))]
    print(f"new worker's model load +{args.load_delay:g} s; {args.sessions} sessions streaming on one worker")
    print("offered     ready_s  migrate_s  worst_gap_s  median_gap_s_before  errors")
    for name, r in rows:
        print(f"{name:10s} {_fmt(r['ready_s'])} {_fmt(r['first_migrate_s'])}    {_fmt(r['worst_gap_s'])}"
              f"              {_fmt(r['median_gap_s'])}  {len(r['errors'])}")
    a, b = rows[0][1]["worst_gap_s"], rows[1][1]["worst_gap_s"]
    if a and b:
        print(f"worst wait of the moved session, at join / when warm: {a / b:.1f}x")


if __name__ == "__main__":
    main()
