"""Trace statistics on hand-built traces whose answers are known, and the PNG plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from traces.distributions import Dist
from traces.generator import generate
from traces.spec import ClientSpec, WorkloadSpec
from traces.io import normalize, validate
from traces.schema import COLUMNS
from traces.stats import concurrency, format_stats, plot_trace, session_lifetimes, trace_stats
from traces.transform import scale_sessions, tile, truncate

SHAPE = {"model": "tiny", "chunk_frames": 12, "height": 64, "width": 64, "fps": 16}


def trace(*rows: tuple[float, str, str]) -> pd.DataFrame:
    records = []
    for t, sid, event in rows:
        rec = {"time_s": t, "session_id": sid, "event": event, "client_id": sid[0]}
        rec.update(SHAPE if event == "open" else {k: None for k in SHAPE})
        records.append(rec)
    return normalize(pd.DataFrame.from_records(records, columns=list(COLUMNS)))


# a: open 0-10, idle 4-6 (active 8 s). b: open 2-8, idle 5-8 (closes while idle).
KNOWN = trace(
    (0.0, "a1", "open"),
    (2.0, "b1", "open"),
    (4.0, "a1", "idle"),
    (5.0, "b1", "idle"),
    (6.0, "a1", "active"),
    (8.0, "b1", "close"),
    (10.0, "a1", "close"),
)


def test_known_trace_statistics():
    s = trace_stats(KNOWN)
    assert (s.sessions, s.events, s.clients, s.duration_s) == (2, 7, 2, 10.0)
    assert s.peak_open == 2 and s.peak_active == 2
    # open: 1 for 2 s, 2 for 6 s, 1 for 2 s -> 16 session-seconds over 10 s
    assert s.mean_open == pytest.approx(1.6)
    # active: a 0-4 and 6-10, b 2-5 -> 11 session-seconds
    assert s.mean_active == pytest.approx(1.1)
    assert s.active_share == pytest.approx(11 / 16)
    assert s.session_p50_s == pytest.approx(8.0)  # lifetimes 10 and 6
    assert s.idle_p50_s == pytest.approx(2.5)  # idle periods 2 and 3
    assert s.arrival_rate == pytest.approx(0.1)  # the open at the first instant is left out


def test_concurrency_samples_the_counts_after_each_step():
    c = concurrency(KNOWN, step_s=2.0)
    assert c["time_s"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert c["open"].tolist() == [1, 2, 2, 2, 1, 0]
    assert c["active"].tolist() == [1, 2, 1, 1, 1, 0]


def test_a_close_while_idle_does_not_lower_the_active_count_twice():
    c = concurrency(KNOWN, step_s=1.0)
    assert (c["active"] >= 0).all()
    assert c["active"].iloc[-1] == 0


def test_simultaneous_events_do_not_count_as_a_peak():
    df = trace((0.0, "a1", "open"), (5.0, "a1", "close"), (5.0, "b1", "open"), (9.0, "b1", "close"))
    validate(df)
    assert trace_stats(df).peak_open == 1


def test_interarrival_cv_of_evenly_spaced_opens_is_zero():
    rows = []
    for i in range(5):
        rows += [(float(i), f"s{i}", "open")]
    rows += [(10.0 + i, f"s{i}", "close") for i in range(5)]
    assert trace_stats(trace(*rows)).interarrival_cv == pytest.approx(0.0)


def test_generated_trace_statistics_match_littles_law():
    client = ClientSpec("c", rate=0.5, lifetime=Dist("constant", 100.0))
    df = generate(WorkloadSpec((client,), 4000.0, warmup_s=200.0))
    s = trace_stats(df)
    assert s.mean_open == pytest.approx(0.5 * 100.0, rel=0.1)  # L = lambda * W
    assert s.peak_open >= s.mean_open


def test_warm_start_opens_do_not_distort_the_arrival_statistics():
    client = ClientSpec("c", rate=0.5, cv=1.0, lifetime=Dist("constant", 300.0))
    warm = generate(WorkloadSpec((client,), 8000.0, warmup_s=600.0))
    assert (warm["time_s"] == 0.0).sum() > 100  # about 150 sessions already running at 0
    s = trace_stats(warm)
    assert s.interarrival_cv == pytest.approx(1.0, rel=0.1)
    assert s.arrival_rate == pytest.approx(0.5, rel=0.1)


def test_format_stats_lists_every_field():
    text = format_stats(trace_stats(KNOWN))
    for name in ("sessions", "peak_active", "session_p99_s", "idle_p90_s"):
        assert name in text


def test_plot_trace_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "trace.png"
    plot_trace(KNOWN, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncate_closes_sessions_at_the_cut():
    cut = truncate(KNOWN, 7.0)
    validate(cut)
    assert cut["time_s"].max() == 7.0
    assert sorted(session_lifetimes(cut).tolist()) == [5.0, 7.0]
    cut = truncate(KNOWN, 1.0)  # b opens after the cut and is dropped
    assert set(cut["session_id"]) == {"a1"}


def test_tile_repeats_the_trace_with_new_session_names():
    tiled = tile(KNOWN, 25.0)
    validate(tiled)
    assert tiled["session_id"].nunique() == 6
    assert {"a1", "a1@1", "a1@2"} <= set(tiled["session_id"])
    assert tiled["time_s"].max() == 25.0


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_scale_sessions_scales_the_number_of_sessions(scale):
    df = generate(WorkloadSpec((ClientSpec("c", rate=1.0),), 2000.0))
    scaled = scale_sessions(df, scale, seed=1)
    validate(scaled)
    ratio = scaled["session_id"].nunique() / df["session_id"].nunique()
    assert ratio == pytest.approx(scale, rel=0.08)
    assert scaled["time_s"].max() <= df["time_s"].max()
    assert np.all(np.diff(scaled["time_s"].to_numpy()) >= 0)
