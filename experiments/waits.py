"""Where one simulated run's admission waits and stalls come from: each chunk a viewer waits for, by cause.

The frontier reports TTFC, resume-wait p99 and stall counts; this explains them. For
every chunk a viewer waits for (the first of each burst: a session's first chunk, the
first after a resume) and every stall (an in-stream chunk later than its SLO), it reads
the run's chunk table and decision log and names what the chunk waited for first:

- ``waited for a slot``: the session was placed after it asked (no worker had room: it
  waited for capacity to start, or for a slot to free);
- ``placed``: the session was placed when it asked (a new session, or one whose state
  came back from host memory): its wait includes the state's copy;
- ``migrated``: its first chunk after a migration (the copy ends while its target works);
- ``valve group``: it ran in a degraded step of a worker over its ``b*`` (the quality valve);
- ``behind steps``: one or more steps of other sessions started on its worker before it;
- ``step running``: it only waited for the step running when it asked;
- ``on request``: it started when it asked (its own step is the wait).

The first cause that applies, in that order. ``summary`` gives, per kind (``first``,
``resume``, ``stall``), all of them (cause ``all``) and each cause: the count,
p50/p99/max latency, how many of the kind's slowest 1% it holds (the chunks that set
the p99), and how many of those were asked for while the cluster was at its maximum
size (``at_max``: every GPU it may have paid for, so no scale-out could have helped;
a policy that keeps its workers within ``b*`` then waits for a slot to free).

``--measure-from-s S`` (the experiments' measurement window) keeps the chunks asked for
from ``S`` seconds on: a run starts warm at the size its first instant needs, with no
load history, so its first minutes hold most of some policies' admission tail; this
separates that start from the rest.

Run it: ``turboserve experiment waits --scenario azure-code --batch-cost 1.0 --t1-s
0.344 --startup-s 10 --quality-valve --family turboserve``.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from experiments.sim.config import SimConfig
from experiments.sim.result import SimResult

#: The causes, in the order they are tried.
CAUSES = ("waited for a slot", "placed", "migrated", "valve group", "behind steps", "step running", "on request")
KINDS = ("first", "resume", "stall")
_EPS = 1e-9


def chunk_causes(result: SimResult) -> pd.DataFrame:
    """One row per waited-for chunk of ``result`` (recorded with ``record_chunks``): kind, cause and times.

    Columns: ``session_id``, ``index``, ``kind``, ``cause``, ``latency_s``, ``wait_s``
    (request to start), ``steps_before`` (other steps started on its worker in between),
    ``batch_size``, ``degraded``, ``worker``, ``t_request_s``, ``workers`` (the workers
    paid for, running or starting, in the second it was asked for).
    """
    chunks = result.chunks
    if chunks.empty:
        raise ValueError("the run recorded no chunks: simulate it with record_chunks=True")
    first = np.asarray(result.burst_first, dtype=bool) | (chunks["index"].to_numpy() == 0)
    late = result.latency_s > result.slo_s + _EPS
    kind = np.where(chunks["index"].to_numpy() == 0, "first", np.where(first, "resume", np.where(late, "stall", "")))
    table = chunks.assign(kind=kind, degraded=np.asarray(result.degraded, dtype=bool))[kind != ""].copy()
    table["wait_s"] = table["t_start_s"] - table["t_request_s"]

    # The steps of each worker (a step's chunks share worker and start), to count those
    # that started between a chunk's request and its own start, and the one running.
    steps = chunks.drop_duplicates(["worker", "t_start_s"])[["worker", "t_start_s", "t_done_s"]]
    by_worker = {w: (g["t_start_s"].to_numpy(), g["t_done_s"].to_numpy())
                 for w, g in steps.sort_values("t_start_s").groupby("worker")}
    before, running = [], []
    for worker, asked, start in zip(table["worker"], table["t_request_s"], table["t_start_s"]):
        starts, dones = by_worker[worker]
        lo, hi = np.searchsorted(starts, asked - _EPS), np.searchsorted(starts, start - _EPS)
        before.append(int(hi - lo))
        running.append(bool(lo > 0 and dones[lo - 1] > asked + _EPS))
    table["steps_before"] = before

    # When the session was placed between its request and its start (its last placement
    # by then): at the request (on arrival) or later (it waited for a slot).
    placed_at = np.full(len(table), np.nan)
    decisions = result.decisions
    if not decisions.empty:
        places = decisions[decisions["accepted"] & (decisions["action"] == "Place")]
        times = places.groupby("session_id")["time_s"].apply(np.sort).to_dict()
        for i, (sid, asked, start) in enumerate(zip(table["session_id"], table["t_request_s"], table["t_start_s"])):
            t = times.get(sid)
            if t is not None:
                j = np.searchsorted(t, start + _EPS) - 1
                if j >= 0 and t[j] >= asked - _EPS:
                    placed_at[i] = t[j]
    asked = table["t_request_s"].to_numpy()
    conditions = [placed_at > asked + _EPS, placed_at >= asked - _EPS, table["migrated"].to_numpy(dtype=bool),
                  table["degraded"].to_numpy(), table["steps_before"].to_numpy() > 0, np.asarray(running, dtype=bool)]
    table["cause"] = np.select(conditions, CAUSES[:-1], default=CAUSES[-1])
    table["workers"] = _workers_at(result.intervals, asked)
    return table[["session_id", "index", "kind", "cause", "latency_s", "wait_s", "steps_before", "batch_size",
                  "degraded", "worker", "t_request_s", "workers"]].reset_index(drop=True)


def _workers_at(intervals: pd.DataFrame, times: np.ndarray) -> np.ndarray:
    """The workers paid for in the interval row at or before each of ``times`` (-1: no row)."""
    if intervals.empty:
        return np.full(len(times), -1, dtype=int)
    per_s = intervals.groupby("time_s")["n_workers"].sum()  # pools of a model mix add up
    at = np.searchsorted(per_s.index.to_numpy(), np.asarray(times, dtype=float) + _EPS, side="right") - 1
    return np.where(at >= 0, per_s.to_numpy()[np.maximum(at, 0)], -1).astype(int)


def summary(table: pd.DataFrame, max_workers: int | None = None) -> pd.DataFrame:
    """Per kind, all (cause ``all``) and per cause: ``n``, ``p50_s``, ``p99_s``, ``max_s``,
    ``in_top_1pct`` (of the kind's slowest 1%) and ``at_max`` (of those, asked for while
    ``workers`` was ``max_workers``; 0 without it)."""
    rows = []
    for kind in KINDS:
        part = table[table["kind"] == kind]
        if part.empty:
            continue
        top = part.nlargest(max(1, int(np.ceil(0.01 * len(part)))), "latency_s")
        full = ((top["workers"] >= max_workers).to_numpy() if max_workers is not None and "workers" in top
                else np.zeros(len(top), bool))
        for cause in ("all", *CAUSES):
            mine = np.ones(len(part), bool) if cause == "all" else (part["cause"] == cause).to_numpy()
            in_top = np.ones(len(top), bool) if cause == "all" else (top["cause"] == cause).to_numpy()
            lat = part.loc[mine, "latency_s"]
            if lat.empty:
                continue
            rows.append(dict(kind=kind, cause=cause, n=len(lat), p50_s=lat.quantile(0.5), p99_s=lat.quantile(0.99),
                             max_s=lat.max(), in_top_1pct=int(in_top.sum()), at_max=int((in_top & full).sum())))
    return pd.DataFrame(rows, columns=["kind", "cause", "n", "p50_s", "p99_s", "max_s", "in_top_1pct", "at_max"])


def explain(trace: str, *, family: str = "turboserve", knob: float | None = None, gpus: int = 64, seed: int = 0,
            config: SimConfig | None = None, duration_s: float | None = 3600.0, scale: float | str = "fit",
            model: str | None = "wan-1.3b", max_batch: int | str = "slo") -> tuple[pd.DataFrame, str]:
    """Simulate one frontier point (``family`` at ``knob``, its default if None) and explain its waits.

    As :func:`experiments.frontier.frontier` runs it (``trace`` a scenario name or trace
    file, fitted to ``gpus`` with ``scale``; the baselines offload idle state as
    TurboServe does). Returns :func:`chunk_causes`'s table and lines naming the run and,
    per model pool, the least TTFC p99 (and the least of the larger of the TTFC and
    resume-wait p99) any policy that keeps its workers within ``b*`` could have from the
    run's warm start (:func:`experiments.sim.oracle.admission_bound`). With a measurement
    window (``config.measure_from_s``) the table keeps the chunks asked for from it on.
    """
    from experiments.frontier import _family_of, _policy_set
    from experiments.paper_table import load_traces, prepare_trace, simulate, warm_workers
    from experiments.sim.oracle import active_spells, admission_bound

    fam = _family_of(family)
    knob = fam.default if knob is None else float(knob)
    config = config if config is not None else SimConfig.from_config()
    base = config.with_(quality_valve=False)  # what the oracles and caps depend on, as the frontier prepares
    (loaded,) = load_traces([trace], duration_s=duration_s, scale=scale, seed=seed, model=model, gpus=gpus, config=base)
    prepared = prepare_trace(loaded, gpus, config=base, max_batch=max_batch)
    result = simulate(prepared, functools.partial(_policy_set, fam, knob, "idle-timeout"), config)
    valve = " on the quality valve" if config.quality_valve else ""
    header = (f"{loaded.name} seed {seed}, {fam.name} at {knob:g}{valve}, {gpus} GPUs, scale {loaded.scale:.3g}: "
              f"{len(result.chunks)} chunks")
    for name, wl in prepared.pools.items():
        cap, pool = prepared.caps[name], prepared.share[name]
        warm = warm_workers(prepared, name, pool)
        kw = dict(warm_slots=warm * cap, slots=pool * cap, startup_s=config.worker_startup_s,
                  step_s=config.latency.model_for(name).predict(1), spells=active_spells(wl))
        ttfc = admission_bound(wl, **kw)
        both = max(ttfc, admission_bound(wl, resumes=True, **kw))  # the TTFC bound alone bounds the larger too
        whole = " over the whole run" if config.measure_from_s else ""
        header += (f"\n  {name}: any policy that never runs a worker over b* = {cap} (nor degrades) has, from "
                   f"{warm} warm workers, a TTFC p99 of at least {ttfc:.3f} s, and a TTFC or resume-wait p99 "
                   f"of at least {both:.3f} s{whole}")
    table = chunk_causes(result)
    start = config.measure_from_s
    if start:  # the measurement window: the chunks asked for from it on
        kept = table[table["t_request_s"] >= start]
        header += f"\n  from {start:g} s on: {len(kept)} of the {len(table)} waited-for chunks"
        table = kept
    return table, header
