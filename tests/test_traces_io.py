"""Trace files: the schema is enforced row by row, and both formats round-trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.generator import generate
from traces.spec import ClientSpec, WorkloadSpec
from traces.io import (
    iter_events,
    normalize,
    period_table,
    read_trace,
    session_table,
    sessions,
    validate,
    write_trace,
)
from traces.schema import COLUMNS, ChunkShape, EventKind, TraceError

SHAPE = {"model": "tiny", "chunk_frames": 12, "height": 64, "width": 64, "fps": 16}


def trace(*rows: tuple[float, str, str]) -> pd.DataFrame:
    """A trace from ``(time_s, session_id, event)`` rows; open rows get the tiny shape."""
    records = []
    for t, sid, event in rows:
        rec = {"time_s": t, "session_id": sid, "event": event, "client_id": "c0"}
        rec.update(SHAPE if event == "open" else {k: None for k in SHAPE})
        records.append(rec)
    return normalize(pd.DataFrame.from_records(records, columns=list(COLUMNS)))


GOOD = trace(
    (0.0, "a", "open"),
    (1.0, "b", "open"),
    (2.0, "a", "idle"),
    (3.0, "a", "active"),
    (4.0, "b", "close"),
    (5.0, "a", "idle"),
    (9.0, "a", "close"),
)


def test_a_well_formed_trace_validates():
    validate(GOOD)


def test_an_empty_trace_with_all_columns_validates():
    validate(GOOD.iloc[:0])


def test_missing_columns_are_named():
    with pytest.raises(TraceError, match=r"missing columns \['fps'\]"):
        validate(GOOD.drop(columns=["fps"]))


@pytest.mark.parametrize(
    ("rows", "bad_row", "message"),
    [
        pytest.param([(0.0, "a", "open"), (-1.0, "a", "close")], 1, "finite number >= 0",
                     id="negative-time"),
        pytest.param([(0.0, "a", "open"), (np.nan, "a", "close")], 1, "finite number >= 0",
                     id="nan-time"),
        pytest.param([(0.0, "a", "open"), (np.inf, "a", "close")], 1, "finite number >= 0",
                     id="inf-time"),
        pytest.param([(0.0, "a", "open"), (2.0, "b", "open"), (1.0, "a", "close"),
                      (3.0, "b", "close")], 2, "not sorted", id="unsorted"),
        pytest.param([(0.0, "a", "open"), (1.0, "a", "pause"), (2.0, "a", "close")], 1,
                     "unknown event 'pause'", id="unknown-event"),
        pytest.param([(0.0, "a", "open"), (1.0, "b", "idle"), (2.0, "a", "close")], 1,
                     "unknown session", id="event-before-open"),
        pytest.param([(0.0, "a", "open"), (1.0, "a", "close"), (2.0, "a", "active")], 2,
                     "already closed", id="event-after-close"),
        pytest.param([(0.0, "a", "open"), (1.0, "a", "close"), (2.0, "a", "open"),
                      (3.0, "a", "close")], 2, "second open", id="reopen"),
        pytest.param([(0.0, "a", "open"), (1.0, "a", "active"), (2.0, "a", "close")], 1,
                     "already active", id="active-while-active"),
        pytest.param([(0.0, "a", "open"), (1.0, "a", "idle"), (2.0, "a", "idle"),
                      (3.0, "a", "close")], 2, "already idle", id="idle-while-idle"),
        pytest.param([(0.0, "a", "open"), (1.0, "b", "open"), (2.0, "a", "close")], 1,
                     "never closed", id="never-closed"),
    ],
)
def test_each_error_class_names_the_first_bad_row(rows, bad_row, message):
    df = trace(*rows)
    with pytest.raises(TraceError, match=message) as info:
        validate(df)
    assert f"row {bad_row} " in str(info.value)


@pytest.mark.parametrize("column", ["chunk_frames", "height", "width", "fps"])
def test_an_open_row_without_its_chunk_shape_is_named(column):
    df = GOOD.copy()
    df.loc[1, column] = pd.NA
    with pytest.raises(TraceError, match="chunk shape") as info:
        validate(df)
    assert "row 1 " in str(info.value)


def test_an_open_row_with_a_non_positive_shape_is_rejected():
    df = GOOD.copy()
    df.loc[0, "fps"] = 0
    with pytest.raises(TraceError, match="row 0 .*chunk shape"):
        validate(df)


def test_an_open_row_without_a_model_is_rejected():
    df = GOOD.copy()
    df.loc[1, "model"] = None
    with pytest.raises(TraceError, match="row 1 .*model"):
        validate(df)


def test_the_earliest_of_several_problems_is_reported():
    df = trace((0.0, "a", "open"), (1.0, "b", "close"), (2.0, "a", "pause"))
    with pytest.raises(TraceError, match="row 2 .*unknown event"):
        validate(df)  # unknown events are checked before session order
    df = trace((0.0, "a", "open"), (1.0, "a", "active"), (2.0, "b", "idle"), (3.0, "a", "close"))
    with pytest.raises(TraceError, match="row 1 .*already active"):
        validate(df)


def test_trace_error_is_a_value_error():
    assert issubclass(TraceError, ValueError)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_then_read_round_trips_exactly(tmp_path, suffix):
    path = tmp_path / f"trace{suffix}"
    write_trace(GOOD, path)
    back = read_trace(path)
    pd.testing.assert_frame_equal(back, GOOD)


def test_convert_between_formats_keeps_the_trace(tmp_path):
    write_trace(GOOD, tmp_path / "a.csv")
    write_trace(read_trace(tmp_path / "a.csv"), tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(read_trace(tmp_path / "b.parquet"), GOOD)


def test_write_refuses_an_invalid_trace_and_an_unknown_suffix(tmp_path):
    bad = GOOD.iloc[:-1]  # session a is never closed
    with pytest.raises(TraceError, match="never closed"):
        write_trace(bad, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(TraceError, match=r"suffix '\.json'"):
        write_trace(GOOD, tmp_path / "trace.json")


def test_reading_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_trace(tmp_path / "missing.parquet")


def test_reading_validates_unless_told_not_to(tmp_path):
    path = tmp_path / "bad.csv"
    GOOD.iloc[::-1].to_csv(path, index=False)
    with pytest.raises(TraceError, match="not sorted"):
        read_trace(path)
    assert len(read_trace(path, check=False)) == len(GOOD)


def test_iter_events_gives_typed_records_in_order():
    events = list(iter_events(GOOD))
    assert [e.event for e in events] == [
        EventKind.OPEN, EventKind.OPEN, EventKind.IDLE, EventKind.ACTIVE,
        EventKind.CLOSE, EventKind.IDLE, EventKind.CLOSE,
    ]
    assert events[0].shape == ChunkShape(12, 64, 64, 16)
    assert events[0].model == "tiny"
    assert events[2].shape is None and events[2].model is None
    assert all(isinstance(e.time_s, float) for e in events)


def test_sessions_summarise_open_close_and_active_periods():
    by_id = {s.session_id: s for s in sessions(GOOD)}
    a, b = by_id["a"], by_id["b"]
    assert (a.open_s, a.close_s, a.duration_s) == (0.0, 9.0, 9.0)
    assert a.active_periods == ((0.0, 2.0), (3.0, 5.0))
    assert a.active_s == 4.0
    assert b.active_periods == ((1.0, 4.0),)
    assert b.shape.seconds == 0.75
    assert [s.session_id for s in sessions(GOOD)] == ["a", "b"]


def test_session_table_and_period_table_agree_with_the_summaries():
    table = session_table(GOOD).set_index("session_id")
    assert table.loc["a", "active_s"] == 4.0
    assert table.loc["a", "idle_s"] == 5.0
    assert table.loc["a", "n_active_periods"] == 2
    periods = period_table(GOOD)
    assert sorted(periods["state"]) == ["active", "active", "active", "idle", "idle"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), rate=st.floats(0.01, 0.5), suffix=st.sampled_from([".csv", ".parquet"]))
def test_generated_traces_round_trip_through_both_formats(tmp_path, seed, rate, suffix):
    df = generate(WorkloadSpec((ClientSpec("c", rate=rate, cv=2.0),), 300.0, warmup_s=100.0, seed=seed))
    path = tmp_path / f"t{seed}{suffix}"
    write_trace(df, path)
    pd.testing.assert_frame_equal(read_trace(path), df)
