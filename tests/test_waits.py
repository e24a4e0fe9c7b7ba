"""``experiments.waits``: each chunk a viewer waits for, by what it waited for first.

Pure tier: a hand-made run whose every waited-for chunk has a known cause. Simulator tier:
on a real simulated run, the table's kinds are the run's admission chunks and stalls,
so its per-kind p99 is the summary row's TTFC and resume-wait p99.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd
import pytest

from experiments.frontier import _family_of, _policy_set
from experiments.paper_table import load_traces, prepare_trace, simulate
from experiments.sim.config import SimConfig
from experiments.sim.latency import LatencySpec
from experiments.sim.result import SimResult
from experiments.sim.run import summary_of
from experiments.waits import CAUSES, KINDS, chunk_causes, explain, summary

STEP = 0.344
SLO = 0.75


def _run(rows: list[tuple], first: list[bool], degraded: list[bool], decisions: list[tuple]) -> SimResult:
    """A :class:`SimResult` of chunk rows ``(session, index, t_request, t_start, worker, migrated)``."""
    chunks = pd.DataFrame(
        [dict(session_id=s, index=i, t_request_s=req, t_start_s=start, t_done_s=start + STEP, latency_s=start + STEP - req,
              worker=w, batch_size=1, migrated=m) for s, i, req, start, w, m in rows])
    log = pd.DataFrame(decisions, columns=["time_s", "action", "session_id", "worker", "accepted", "reason"])
    lat = chunks["latency_s"].to_numpy()
    return SimResult(chunks=chunks, intervals=pd.DataFrame(), latency_s=lat, slo_s=np.full(len(lat), SLO),
                     chunk_index=chunks["index"].to_numpy(), decisions=log, counters={}, gpu_seconds=0.0, end_s=60.0,
                     config=SimConfig(), policy="hand-made", burst_first=np.asarray(first), degraded=np.asarray(degraded))


def test_each_waited_for_chunk_gets_the_first_cause_that_applies():
    rows = [
        ("a", 0, 0.0, 0.0, "w0", False),      # placed on arrival, started at once
        ("b", 0, 0.0, 5.0, "w1", False),      # placed 5 s after it asked: waited for a slot
        ("c", 1, 9.656, 10.0, "w0", False),   # an in-stream chunk on time: not listed
        ("a", 5, 10.1, 10.344, "w0", False),  # resume while c's step runs
        ("c", 9, 20.0, 20.0, "w0", False),    # resume into a degraded (valve) step
        ("d", 3, 30.0, 30.5, "w1", True),     # in-stream, late, first after a migration
        ("x", 2, 39.9, 40.1, "w2", False),
        ("y", 2, 40.1, 40.5, "w2", False),
        ("e", 7, 40.0, 40.9, "w2", False),    # resume behind two other steps
        ("f", 4, 50.0, 50.0, "w3", False),    # resume, nothing in its way
        ("g", 1, 55.0, 55.0, "w3", False),    # in-stream on time: not listed
    ]
    first = [True, True, False, True, True, False, False, False, True, True, False]
    degraded = [False, False, False, False, True, False, False, False, False, False, False]
    decisions = [(0.0, "Place", "a", "w0", True, ""), (5.0, "Place", "b", "w1", True, ""),
                 (3.0, "Place", "f", "w3", True, ""),      # before its resume: not this wait's placement
                 (20.0, "Place", "c", "w0", False, "")]    # refused: does not count
    table = chunk_causes(_run(rows, first, degraded, decisions))
    got = {(r.session_id, r.index): (r.kind, r.cause) for r in table.itertuples()}
    assert got == {
        ("a", 0): ("first", "placed"),
        ("b", 0): ("first", "waited for a slot"),
        ("a", 5): ("resume", "step running"),
        ("c", 9): ("resume", "valve group"),
        ("d", 3): ("stall", "migrated"),
        ("e", 7): ("resume", "behind steps"),
        ("f", 4): ("resume", "on request"),
    }
    assert table.set_index("session_id").loc["e", "steps_before"] == 2


def test_summary_counts_which_causes_hold_the_slowest_one_percent():
    table = pd.DataFrame(dict(kind=["resume"] * 200, cause=["on request"] * 197 + ["valve group"] * 3,
                              latency_s=[0.3] * 197 + [1.0, 2.0, 3.0]))
    out = summary(table).set_index("cause")
    assert out.loc["valve group", "n"] == 3 and out.loc["on request", "n"] == 197
    assert out.loc["valve group", "in_top_1pct"] == 2  # the slowest 1% of 200 chunks: the two slowest
    assert out.loc["on request", "in_top_1pct"] == 0
    assert out.loc["valve group", "max_s"] == 3.0


def test_summary_has_a_row_for_all_of_a_kind_and_counts_the_slowest_asked_for_at_the_maximum():
    table = pd.DataFrame(dict(kind=["first"] * 100, cause=["placed"] * 98 + ["waited for a slot"] * 2,
                              latency_s=[0.3] * 98 + [5.0, 9.0], workers=[10] * 99 + [64]))
    out = summary(table, max_workers=64).set_index("cause")
    assert out.loc["all", "n"] == 100 and out.loc["all", "max_s"] == 9.0
    assert out.loc["all", "in_top_1pct"] == 1 and out.loc["all", "at_max"] == 1  # the slowest: at 64 workers
    assert out.loc["waited for a slot", "at_max"] == 1 and out.loc["placed", "at_max"] == 0
    assert summary(table).set_index("cause").loc["all", "at_max"] == 0  # no maximum given


def test_each_chunk_knows_the_workers_paid_for_when_it_was_asked_for():
    from experiments.waits import _workers_at

    intervals = pd.DataFrame(dict(time_s=[0.0, 1.0, 2.0, 0.0, 1.0, 2.0], n_workers=[1, 2, 4, 1, 1, 1]))
    assert list(_workers_at(intervals, np.array([0.0, 0.5, 1.0, 2.7, 99.0]))) == [2, 2, 3, 5, 5]  # two pools add up
    assert list(_workers_at(intervals, np.array([-1.0]))) == [-1]
    assert list(_workers_at(pd.DataFrame(), np.array([3.0]))) == [-1]


def test_waits_from_a_later_second_keeps_only_the_chunks_asked_for_from_then(capsys):
    from framework.cli import main

    args = ["experiment", "waits", "--scenario", "flash-crowd", "--gpus", "8", "--duration-s", "600",
            "--batch-cost", "1.0", "--t1-s", str(STEP), "--startup-s", "10"]
    assert main(args) == 0
    everything = capsys.readouterr().out
    assert main([*args, "--measure-from-s", "300"]) == 0
    later = capsys.readouterr().out
    kept, total = map(int, re.search(r"from 300 s on: (\d+) of the (\d+) waited-for chunks", later).groups())
    assert 0 < kept < total
    assert "over the whole run" in later and "over the whole run" not in everything  # the bound is the run's

    def first_n(text):
        return int(re.search(r"^\s*first\s+all\s+(\d+)", text, re.M).group(1))

    assert first_n(later) < first_n(everything)


def test_a_run_without_chunk_rows_is_refused():
    empty = _run([("a", 0, 0.0, 0.0, "w0", False)], [True], [False], [])
    empty.chunks = empty.chunks.iloc[:0]
    with pytest.raises(ValueError, match="record_chunks"):
        chunk_causes(empty)


def test_on_a_simulated_run_the_kinds_are_its_admission_chunks_and_stalls():
    config = SimConfig.from_config(latency=LatencySpec(t1_s=STEP, batch_cost=1.0), worker_startup_s=10.0)
    table, header = explain("flash-crowd", gpus=8, duration_s=600.0, config=config)
    assert "turboserve" in header and set(table["kind"]) <= set(KINDS) and set(table["cause"]) <= set(CAUSES)
    # The same run, its summary row: the table's per-kind p99 is the row's.
    (trace,) = load_traces(["flash-crowd"], duration_s=600.0, scale="fit", seed=0, model="wan-1.3b", gpus=8,
                           config=config)
    fam = _family_of("turboserve")
    result = simulate(prepare_trace(trace, 8, config=config), functools.partial(_policy_set, fam, fam.default,
                                                                                "idle-timeout"), config)
    row = summary_of(result, trace=trace.name, gpus=8)
    assert (table["kind"] == "stall").sum() == row["stalls"]
    assert (table["kind"] == "first").sum() == (result.chunk_index == 0).sum()
    assert table.loc[table["kind"] == "first", "latency_s"].quantile(0.99) == pytest.approx(row["ttfc_p99_s"])
    resumes = table.loc[table["kind"] == "resume", "latency_s"]
    assert len(resumes) > 0 and resumes.quantile(0.99) == pytest.approx(row["resume_wait_p99_s"])
    # TurboServe without the valve keeps its workers within b*: no faster than the bound for such policies
    bound = float(re.search(r"TTFC p99 of at least ([0-9.]+) s", header).group(1))
    assert STEP <= bound <= row["ttfc_p99_s"] + 1e-3
