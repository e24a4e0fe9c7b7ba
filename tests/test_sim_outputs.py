"""Output folder, summary, latency profiles and the oracle: the contracts of experiments/."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.results import (
    CHUNK_COLUMNS, INTERVAL_COLUMNS, SUMMARY_COLUMNS, run_label, summarize, write_outputs,
)
from experiments.sim import PolicySet, SimConfig, load_profile, prepare, simulate, summary_of
from experiments.sim.oracle import (
    active_series,
    active_spells,
    admission_bound,
    best_batch,
    oracle_bound,
    oracle_peak,
    startup_bound,
)
from policies.types import BatchLatencyModel

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]
LATENCY = BatchLatencyModel((1, 4), (0.2, 0.5))


def small_trace(n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append((2.0 * i, f"s{i}", "open", "c", "tiny", 12, 64, 64, 16))
        rows.append((2.0 * i + 10, f"s{i}", "idle", None, None, None, None, None, None))
        rows.append((2.0 * i + 20, f"s{i}", "active", None, None, None, None, None, None))
        rows.append((2.0 * i + 30, f"s{i}", "close", None, None, None, None, None, None))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def result():
    policies = PolicySet.of("migration-aware", "load-driven", "idle-timeout", offload_params={"idle_s": 2})
    return simulate(small_trace(), policies, SimConfig(initial_workers=1, max_workers=4, worker_startup_s=5),
                    latency=LATENCY)


def test_output_folder_has_exactly_the_contract_columns(result, tmp_path):
    row = summary_of(result, trace="small", gpus=4)
    out = write_outputs(tmp_path / "out", result.chunks, result.intervals, row, {"turboserve": {"x": 1}})
    assert list(pd.read_parquet(out / "chunks.parquet").columns) == list(CHUNK_COLUMNS)
    assert list(pd.read_parquet(out / "intervals.parquet").columns) == list(INTERVAL_COLUMNS)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"turboserve": {"x": 1}}
    ds = xr.open_zarr(out / "results.zarr", consolidated=False)
    assert ds.sizes["run"] == 1 and float(ds["gpu_hours"][0]) == pytest.approx(row["gpu_hours"])
    for name in ("latency_cdf", "gpus_over_time", "policy_bars"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.html").stat().st_size > 0
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert chunks["migrated"].dtype == bool and len(chunks) == len(result.chunks)


def test_several_runs_go_to_run_folders(result, tmp_path):
    rows = [summary_of(result, trace="t", gpus=4), {**summary_of(result, trace="t", gpus=4), "policy": "other"}]
    chunks = {"t__" + result.policy: result.chunks, "t__other": result.chunks}
    intervals = {"t__" + result.policy: result.intervals, "t__other": result.intervals}
    out = write_outputs(tmp_path / "many", chunks, intervals, rows, {}, plots=False)
    assert len(pd.read_csv(out / "summary.csv")) == 2
    for policy in (result.policy, "other"):
        folder = out / "runs" / run_label("t", policy)
        assert list(pd.read_parquet(folder / "chunks.parquet").columns) == list(CHUNK_COLUMNS)
    assert not (out / "chunks.parquet").exists()


def test_summary_from_tables_equals_the_simulator_summary(result):
    from_tables = summarize(result.chunks, result.intervals, trace="t", gpus=4, policy=result.policy,
                            slo_s=result.session_slo_s)
    direct = summary_of(result, trace="t", gpus=4)
    for key in SUMMARY_COLUMNS:
        assert from_tables[key] == pytest.approx(direct[key]), key


def test_summary_rejects_a_table_without_the_contract_columns(result):
    with pytest.raises(ValueError, match="lacks columns"):
        summarize(result.chunks.drop(columns=["batch_size"]), result.intervals, trace="t", policy="p", gpus=1,
                  slo_s=0.75)


def test_slo_attainment_and_stalls_count_late_chunks():
    chunks = pd.DataFrame({
        "session_id": ["a"] * 4, "index": [0, 1, 2, 3], "t_request_s": [0.0, 1, 2, 3], "t_start_s": [0.0, 1, 2, 3],
        "t_done_s": [2.0, 1.5, 3.5, 3.2], "latency_s": [2.0, 0.5, 1.5, 0.2], "worker": ["w"] * 4,
        "batch_size": [1] * 4, "migrated": [False] * 4,
    })
    intervals = pd.DataFrame({"time_s": [0.0, 1.0], "n_workers": [1, 1], "n_active": [1, 1], "n_idle": [0, 0],
                              "n_suspended": [0, 0], "migrations": [0, 0], "cost_gpu_s": [0.0, 3600.0]})
    row = summarize(chunks, intervals, trace="t", policy="p", gpus=1, slo_s=1.0)
    assert row["slo_attainment"] == 0.5 and row["stalls"] == 1 and row["max_latency_s"] == 2.0
    assert row["ttfc_p50_s"] == 2.0 and row["max_latency_after_first_s"] == 1.5 and row["gpu_hours"] == 1.0


def test_published_profiles_load_and_say_where_they_come_from():
    model = load_profile("wan-1.3b-h100-published")
    assert model.predict(1) == pytest.approx(12 / 17, rel=1e-3)
    assert model.predict(2) > 1.8 * model.predict(1)  # the stated compute-bound assumption
    from experiments.sim.latency import profile_path

    header = profile_path("wan-14b-h100-published").read_text().splitlines()[0]
    assert "PUBLISHED" in header and "NOT MEASURED" in header


def test_profile_with_context_frames_fits_a_context_slope(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("# measured\nbatch_size,step_s,context_frames\n1,0.1,0\n4,0.4,0\n1,0.2,10\n4,0.8,10\n")
    model = load_profile(path)
    assert model.predict(1) == pytest.approx(0.1)
    assert model.predict(4, 10) == pytest.approx(0.4 + model.context_slope_s * 40)
    assert model.context_slope_s == pytest.approx(0.01, rel=0.2)


def test_bad_profiles_are_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("batch,seconds\n1,0.1\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_profile(bad)
    with pytest.raises(FileNotFoundError, match="unknown latency profile"):
        load_profile("no-such-profile")


def events(rows):
    """A tiny-model workload from ``(time_s, session, event)`` rows."""
    return prepare(pd.DataFrame([(t, s, e, "c", "tiny", 12 if e == "open" else None, 64, 64,
                                  16 if e == "open" else None) for t, s, e in rows], columns=COLUMNS))


def test_active_spells_run_from_an_open_or_active_to_the_next_idle_or_close():
    wl = events([(0, "a", "open"), (0, "b", "open"), (0, "b", "idle"), (3, "a", "idle"), (5, "b", "active"),
                 (7, "a", "active"), (9, "b", "close"), (12, "a", "close")])
    start, end, first = active_spells(wl)
    assert start.tolist() == [0.0, 5.0, 7.0] and end.tolist() == [3.0, 9.0, 12.0]  # "b" opened idle
    assert first.tolist() == [True, True, False]


def test_admission_bound_no_policy_within_b_star_starts_a_newcomer_before_a_slot_frees_or_capacity_comes():
    # One warm worker of b* = 2 holds the two sessions of time 0; newcomers at 1, 2 and 3 s;
    # a worker asked for at 0 is up at 10 s. Five first chunks: the p99 is the slowest.
    rows = [(0, "a", "open"), (0, "b", "open"), (1, "n1", "open"), (2, "n2", "open"), (3, "n3", "open")]
    rows += [(100, s, "close") for s in ("a", "b", "n1", "n2", "n3")]
    full = events(rows)
    assert admission_bound(full, warm_slots=2, slots=10, startup_s=10, step_s=0.5) == pytest.approx(9.5, abs=1e-6)
    # "a" goes idle at 4 s: n1 may start then, n2 still waits for the new worker (8 s)
    freed = events([*rows, (4, "a", "idle")])
    assert admission_bound(freed, warm_slots=2, slots=10, startup_s=10, step_s=0.5) == pytest.approx(8.5, abs=1e-6)
    # a spare warm slot: nobody must wait; a tail allowed of 40% of first chunks: two may wait
    assert admission_bound(full, warm_slots=5, slots=10, startup_s=10, step_s=0.5) == 0.5
    assert admission_bound(full, warm_slots=2, slots=10, startup_s=10, step_s=0.5, q=0.6) == pytest.approx(7.5, abs=1e-6)


def test_admission_bound_with_resumes_counts_the_bursts_of_returning_sessions_too():
    # Three warm slots: "r" goes idle at 1 s and frees one; at 2 s "r" comes back and the
    # newcomer "n" opens; capacity comes at 10 s. For TTFC alone the newcomer takes the
    # free slot (the bound lets "r" wait): nothing forced. Counting the resume too, one of
    # the five bursts waits 8 s, more than 10% of them.
    rows = [(0, "a", "open"), (0, "b", "open"), (0, "r", "open"), (1, "r", "idle"), (2, "r", "active"),
            (2, "n", "open")] + [(100, s, "close") for s in ("a", "b", "r", "n")]
    wl = events(rows)
    ttfc = admission_bound(wl, warm_slots=3, slots=10, startup_s=10, step_s=0.5, q=0.9)
    both = admission_bound(wl, warm_slots=3, slots=10, startup_s=10, step_s=0.5, q=0.9, resumes=True)
    assert ttfc == 0.5 and both == pytest.approx(8.5, abs=1e-6)


def test_oracle_pays_ceil_of_active_over_b_star():
    # two sessions active 0-10 s, one active 10-20 s; b* = 1 when a batch of 2 misses the SLO
    wl = events([(0, "a", "open"), (0, "b", "open"), (10, "b", "close"), (20, "a", "close")])
    tight = oracle_bound(wl, LATENCY, slo_s=0.25, max_batch=8, state_bytes=1, memory_bytes=1e9)
    assert tight.b_star == 1 and tight.gpu_seconds == pytest.approx(2 * 10 + 1 * 10) and tight.peak_gpus == 2
    loose = oracle_bound(wl, LATENCY, slo_s=0.55, max_batch=8, state_bytes=1, memory_bytes=1e9)
    assert loose.b_star == 4 and loose.gpu_seconds == pytest.approx(20.0)
    assert loose.max_latency_s == pytest.approx(LATENCY.predict(2))
    assert best_batch(LATENCY, 1.0, 8, state_bytes=10, memory_bytes=25) == 2  # memory-bound


def test_the_oracle_that_pays_for_start_ups_keeps_a_gpu_through_short_lulls_and_restarts_after_long_ones():
    need, dur = np.array([2, 1, 2, 0, 1]), np.array([10.0, 5.0, 10.0, 100.0, 10.0])
    # level 1: on 35 s, one 100 s lull -> a 20 s restart; level 2 (warm): on 20 s, a 5 s lull kept
    assert startup_bound(need, dur, 20.0) == pytest.approx(35 + 20 + 20 + 5)
    # with free start-up it is the plain integral; a cold cluster pays each level's first start
    assert startup_bound(need, dur, 0.0) == pytest.approx(float((need * dur).sum()))
    assert startup_bound(need, dur, 20.0, warm=0) == pytest.approx(80 + 2 * 20)
    # never below the instant-start bound, and never above keeping every GPU of the peak through every lull
    rng = np.random.default_rng(3)
    for _ in range(50):
        n, d = rng.integers(0, 6, size=40), rng.uniform(0.1, 50.0, size=40)
        s = float(rng.uniform(0, 60))
        paid = startup_bound(n, d, s)
        assert float((n * d).sum()) - 1e-9 <= paid <= n.max() * d.sum() + n.max() * s + 1e-9


def test_the_oracle_row_carries_the_start_up_paying_bound():
    wl = events([(0, "a", "open"), (10, "a", "idle"), (100, "a", "active"), (110, "a", "close")])
    free = oracle_bound(wl, LATENCY, slo_s=0.25, max_batch=8, state_bytes=1, memory_bytes=1e9)
    paid = oracle_bound(wl, LATENCY, slo_s=0.25, max_batch=8, state_bytes=1, memory_bytes=1e9, startup_s=30.0)
    assert free.gpu_seconds == pytest.approx(20.0) and free.gpu_seconds_startup == pytest.approx(20.0)
    assert paid.gpu_seconds == pytest.approx(20.0) and paid.gpu_seconds_startup == pytest.approx(20.0 + 30.0)


def test_long_runs_can_drop_chunk_rows_but_keep_the_summary(result):
    policies = PolicySet.of("migration-aware", "load-driven", "idle-timeout", offload_params={"idle_s": 2})
    lean = simulate(small_trace(), policies, SimConfig(initial_workers=1, max_workers=4, worker_startup_s=5,
                                                       record_chunks=False), latency=LATENCY)
    assert lean.chunks.empty and list(lean.chunks.columns) == list(CHUNK_COLUMNS)
    np.testing.assert_allclose(lean.latency_s, result.latency_s)
    assert summary_of(lean, trace="t", gpus=4) == summary_of(result, trace="t", gpus=4) | {
        "decide_ms_per_tick": summary_of(lean, trace="t", gpus=4)["decide_ms_per_tick"]}


def test_a_measurement_window_summarises_the_same_run_from_its_start_on(result):
    policies = PolicySet.of("migration-aware", "load-driven", "idle-timeout", offload_params={"idle_s": 2})
    start = 15.0
    windowed = simulate(small_trace(), policies, SimConfig(initial_workers=1, max_workers=4, worker_startup_s=5,
                                                           measure_from_s=start), latency=LATENCY)
    # the run is the same run: the window changes what is summarised, not what happens
    np.testing.assert_array_equal(windowed.latency_s, result.latency_s)
    row, whole = summary_of(windowed, trace="t", gpus=4), summary_of(result, trace="t", gpus=4)
    chunks = result.chunks
    kept = chunks[chunks["t_request_s"] >= start]
    assert 0 < row["chunks"] == len(kept) < whole["chunks"]
    assert row["max_latency_s"] == pytest.approx(kept["latency_s"].max())
    assert row["measure_from_s"] == start and "measure_from_s" not in whole
    # GPU-seconds: each worker's lifetime clipped to [start, end]
    w = result.workers
    clipped = (np.minimum(w["released_s"], result.end_s) - np.maximum(w["started_s"], start)).clip(lower=0).sum()
    assert row["gpu_hours"] * 3600 == pytest.approx(clipped) and row["gpu_hours"] < whole["gpu_hours"]
    d = result.decisions
    offloads = ((d["action"] == "Offload") & d["accepted"] & (d["time_s"] >= start)).sum()
    assert row["offloads"] == offloads <= whole["offloads"]
    # a long run without chunk rows keeps the request times a window needs: the same row
    lean = simulate(small_trace(), policies, SimConfig(initial_workers=1, max_workers=4, worker_startup_s=5,
                                                       measure_from_s=start, record_chunks=False), latency=LATENCY)
    lean_row = pd.Series(summary_of(lean, trace="t", gpus=4)).drop("decide_ms_per_tick")
    assert lean.chunks.empty and lean_row.equals(pd.Series(row).drop("decide_ms_per_tick"))  # NaN equals NaN
    with pytest.raises(ValueError, match="request times"):  # one run without them cannot be windowed after
        summary_of(replace(result, config=result.config.with_(measure_from_s=start), chunks=result.chunks.iloc[:0],
                           request_s=np.zeros(0)), trace="t", gpus=4)
    with pytest.raises(ValueError, match="at or after the run's end"):
        summary_of(simulate(small_trace(), policies, SimConfig(initial_workers=1, max_workers=4,
                                                               measure_from_s=result.end_s), latency=LATENCY),
                   trace="t", gpus=4)
    with pytest.raises(ValueError, match="measure_from_s must be finite and >= 0"):
        SimConfig(measure_from_s=-1.0)


def test_the_oracle_over_a_window_costs_what_the_trace_needs_within_it():
    # two sessions active 0-10 s, one 10-20 s, b* = 1; the window from 5 s keeps 2 x 5 + 1 x 10
    wl = events([(0, "a", "open"), (0, "b", "open"), (10, "b", "close"), (20, "a", "close")])
    kw = dict(slo_s=0.25, max_batch=8, state_bytes=1, memory_bytes=1e9)
    window = oracle_bound(wl, LATENCY, **kw, start_s=5.0)
    assert window.gpu_seconds == pytest.approx(2 * 5 + 1 * 10) and window.peak_gpus == 2
    assert oracle_bound(wl, LATENCY, **kw, start_s=12.0).gpu_seconds == pytest.approx(8.0)
    assert oracle_bound(wl, LATENCY, **kw, start_s=12.0).peak_gpus == 2  # the peak is the whole trace's
    # paying start-ups, the window starts warm with what its first instant needs
    wl2 = events([(0, "a", "open"), (10, "a", "idle"), (100, "a", "active"), (110, "a", "close")])
    paid = oracle_bound(wl2, LATENCY, **kw, startup_s=30.0, start_s=50.0)
    assert paid.gpu_seconds == pytest.approx(10.0) and paid.gpu_seconds_startup == pytest.approx(10.0 + 30.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["active", "idle", "close"])), max_size=40))
def test_active_series_counts_the_sessions_whose_last_event_made_them_active(steps):
    # Each session opens, then goes active/idle any number of times (repeats included), maybe closes.
    rows, t, closed = [], 0.0, set()
    for s in range(5):
        rows.append((t, f"s{s}", "open"))
    for s, event in steps:
        if f"s{s}" in closed:
            continue
        t += 1.0
        rows.append((t, f"s{s}", event))
        if event == "close":
            closed.add(f"s{s}")
    wl = events(rows)
    times, active = active_series(wl)
    last: dict[int, int] = {}
    for k, (i, code) in enumerate(zip(wl.session_index.tolist(), wl.event_code.tolist())):
        last[i] = code
        assert active[k] == sum(1 for c in last.values() if c <= 1)  # open (0) or active (1)
    assert list(times) == list(wl.times)


def test_oracle_peak_is_the_peak_of_the_oracle_bound():
    wl = events([(0, "a", "open"), (0, "b", "open"), (5, "c", "open"), (10, "b", "close"), (20, "a", "close"),
                 (25, "c", "close")])
    for slo in (0.25, 0.55):
        full = oracle_bound(wl, LATENCY, slo_s=slo, max_batch=8, state_bytes=1, memory_bytes=1e9, startup_s=30.0)
        assert oracle_peak(wl, LATENCY, slo_s=slo, max_batch=8, state_bytes=1, memory_bytes=1e9) == full.peak_gpus
