"""Trace files: read, write, validate, and typed views of a trace.

Parquet is the native format; CSV is accepted (the format is chosen by the file suffix).
Every reader returns a frame in the canonical dtypes of :func:`normalize`, so a trace
round-trips through either format unchanged.

Examples
--------
>>> import pandas as pd
>>> df = pd.DataFrame({"time_s": [0.0, 5.0], "session_id": ["s0", "s0"],
...                    "event": ["open", "close"], "client_id": ["c0", "c0"],
...                    "model": ["tiny", None], "chunk_frames": [12, None],
...                    "height": [64, None], "width": [64, None], "fps": [16, None]})
>>> validate(df)
>>> [e.event.value for e in iter_events(df)]
['open', 'close']
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from traces.schema import (
    CLIENT,
    COLUMNS,
    EVENT,
    EVENT_NAMES,
    MODEL,
    SESSION,
    SHAPE_COLUMNS,
    TIME,
    ChunkShape,
    EventKind,
    SessionSummary,
    TraceError,
    TraceEvent,
)

SUFFIXES = (".parquet", ".csv")

# Integer codes of the event column, in EventKind order.
OPEN, ACTIVE, IDLE, CLOSE = range(4)


def _format(path: str | os.PathLike[str]) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise TraceError(
            f"trace file {os.fspath(path)!r} has suffix {suffix!r}; use one of {list(SUFFIXES)}"
        )
    return suffix


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with the trace columns in order and in canonical dtypes.

    ``time_s`` is float64, the string columns are pandas strings (missing as NaN), the
    shape columns are nullable ``Int64``. Extra columns are kept after the schema ones.
    Raises :class:`TraceError` naming any missing column.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(
            f"trace is missing columns {missing}; a trace needs all of {list(COLUMNS)}"
        )
    extra = [c for c in df.columns if c not in COLUMNS]
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    try:
        out[TIME] = pd.to_numeric(df[TIME].to_numpy(), errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise TraceError(f"column {TIME!r} must be numeric seconds: {exc}") from exc
    for col in (SESSION, EVENT, CLIENT, MODEL):
        out[col] = pd.Series(df[col].to_numpy(), dtype="str")
    for col in SHAPE_COLUMNS:
        values = pd.to_numeric(pd.Series(df[col].to_numpy()), errors="coerce")
        finite = values.dropna()
        if (finite != np.round(finite)).any():
            bad = int(np.flatnonzero((values != np.round(values)) & values.notna())[0])
            raise TraceError(f"row {bad}: column {col!r} = {values[bad]!r} is not an integer")
        out[col] = values.astype("Int64")
    for col in extra:
        out[col] = df[col].to_numpy()
    return out


def read_trace(path: str | os.PathLike[str], *, check: bool = True) -> pd.DataFrame:
    """Read a trace from a ``.parquet`` or ``.csv`` file.

    Parameters
    ----------
    path
        The file; its suffix picks the format.
    check
        Validate the trace (default) and raise :class:`TraceError` when it is invalid.

    Returns
    -------
    pandas.DataFrame
        The trace in the canonical dtypes of :func:`normalize`.
    """
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"trace file {os.fspath(path)!r} does not exist")
    if fmt == ".parquet":
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype={SESSION: "str", CLIENT: "str", MODEL: "str", EVENT: "str"})
    df = normalize(raw)
    if check:
        validate(df)
    return df


def write_trace(df: pd.DataFrame, path: str | os.PathLike[str], *, check: bool = True) -> None:
    """Write a trace to ``path`` (``.parquet`` or ``.csv`` by suffix).

    The trace is validated first unless ``check=False``; parent folders are created.
    """
    fmt = _format(path)
    out = normalize(df)
    if check:
        validate(out)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    if fmt == ".parquet":
        out.to_parquet(path, index=False)
    else:
        out.to_csv(path, index=False)


def event_codes(df: pd.DataFrame) -> np.ndarray:
    """The ``event`` column as integer codes in :class:`EventKind` order; -1 if unknown."""
    return pd.Index(EVENT_NAMES).get_indexer(df[EVENT].astype("str")).astype(np.int64)


def _describe_row(df: pd.DataFrame, row: int) -> str:
    t = pd.to_numeric(pd.Series([df[TIME].iat[row]]), errors="coerce").iat[0]
    return (
        f"row {row} (time_s={float(t)!r}, session_id={str(df[SESSION].iat[row])!r}, "
        f"event={str(df[EVENT].iat[row])!r})"
    )


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def validate(df: pd.DataFrame) -> None:
    """Check that ``df`` is a valid trace; raise :class:`TraceError` otherwise.

    Checked, and reported for the first offending row (0-based, in file order): missing
    columns, non-finite or negative times, times out of order, an unknown event, an event
    for a session that was never opened or is already closed, a second ``open``, ``idle``
    while idle or ``active`` while active, an ``open`` row without model or chunk shape (or
    a non-positive one), a missing ``session_id``/``client_id``, and a session that is
    never closed (named by its ``open`` row).
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(
            f"trace is missing columns {missing}; a trace needs all of {list(COLUMNS)}"
        )
    n = len(df)
    if n == 0:
        return
    df = df.reset_index(drop=True)
    t = pd.to_numeric(df[TIME], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    row = _first(~np.isfinite(t) | (t < 0))
    if row is not None:
        raise TraceError(
            f"{_describe_row(df, row)}: time_s must be a finite number >= 0"
        )
    row = _first(np.diff(t) < 0)
    if row is not None:
        raise TraceError(
            f"{_describe_row(df, row + 1)}: times are not sorted "
            f"(previous row has time_s={t[row]!r}); sort the trace by time_s"
        )
    codes = event_codes(df)
    row = _first(codes < 0)
    if row is not None:
        raise TraceError(
            f"{_describe_row(df, row)}: unknown event {df[EVENT].iat[row]!r}; "
            f"known: {list(EVENT_NAMES)}"
        )
    for col in (SESSION, CLIENT):
        row = _first(df[col].isna().to_numpy())
        if row is not None:
            raise TraceError(f"{_describe_row(df, row)}: {col} is missing")

    problems: list[tuple[int, str]] = []
    is_open = codes == OPEN
    shape_missing = np.zeros(n, dtype=bool)
    for col in SHAPE_COLUMNS:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        shape_missing |= ~(v > 0)
    row = _first(is_open & shape_missing)
    if row is not None:
        problems.append(
            (row, f"open row needs positive integers in {list(SHAPE_COLUMNS)} (the chunk shape)")
        )
    row = _first(is_open & df[MODEL].isna().to_numpy())
    if row is not None:
        problems.append((row, "open row needs a model name"))

    # Per-session state machine, vectorised: order rows by (session, row), compare each
    # event with the previous event of the same session.
    sess = pd.factorize(df[SESSION])[0]
    order = np.lexsort((np.arange(n), sess))
    s_sorted, c_sorted = sess[order], codes[order]
    first_of_session = np.ones(n, dtype=bool)
    first_of_session[1:] = s_sorted[1:] != s_sorted[:-1]
    prev = np.full(n, -1)
    prev[1:] = c_sorted[:-1]
    prev[first_of_session] = -1
    checks = (
        ((prev == -1) & (c_sorted != OPEN), "event for an unknown session (no open before it)"),
        ((prev >= 0) & (c_sorted == OPEN), "second open of a session (session ids must be unique)"),
        (prev == CLOSE, "event for a session that is already closed"),
        (((prev == OPEN) | (prev == ACTIVE)) & (c_sorted == ACTIVE), "active while already active"),
        ((prev == IDLE) & (c_sorted == IDLE), "idle while already idle"),
    )
    for mask, message in checks:
        row = _first(mask)
        if row is not None:
            problems.append((int(order[row]), message))
    last_of_session = np.ones(n, dtype=bool)
    last_of_session[:-1] = s_sorted[1:] != s_sorted[:-1]
    has_close = np.zeros(int(sess.max()) + 1, dtype=bool)
    has_close[s_sorted[c_sorted == CLOSE]] = True
    unclosed = last_of_session & ~has_close[s_sorted]
    if unclosed.any():
        first_rows = order[np.flatnonzero(first_of_session)]
        open_row_of = dict(zip(s_sorted[first_of_session].tolist(), first_rows.tolist()))
        bad_rows = sorted(open_row_of[s] for s in s_sorted[unclosed].tolist())
        problems.append((bad_rows[0], "session is never closed (no close event)"))
    if problems:
        # The first bad row; on one row, the problem found first (the order above).
        row, message = min(problems, key=lambda item: item[0])
        raise TraceError(f"{_describe_row(df, row)}: {message}")


def iter_events(df: pd.DataFrame) -> Iterator[TraceEvent]:
    """Yield the rows of a trace as :class:`~traces.schema.TraceEvent` records, in order."""
    cols = [df[c].tolist() for c in COLUMNS]
    for t, sid, ev, client, model, frames, height, width, fps in zip(*cols):
        kind = EventKind(ev)
        shape = None
        if kind is EventKind.OPEN:
            shape = ChunkShape(int(frames), int(height), int(width), int(fps))
        yield TraceEvent(
            time_s=float(t),
            session_id=str(sid),
            event=kind,
            client_id=str(client),
            model=str(model) if kind is EventKind.OPEN else None,
            shape=shape,
        )


def period_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every active and idle period of every session, vectorised.

    Returns a frame with columns ``session_id, state ('active'|'idle'), start_s, end_s``
    (a period runs from an event to the next event of the same session). ``df`` must be
    a valid trace.
    """
    n = len(df)
    if n == 0:
        return pd.DataFrame({SESSION: [], "state": [], "start_s": [], "end_s": []})
    t = df[TIME].to_numpy(dtype="float64")
    codes = event_codes(df)
    sess = pd.factorize(df[SESSION])[0]
    order = np.lexsort((np.arange(n), sess))
    s, c, ts = sess[order], codes[order], t[order]
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = s[1:] == s[:-1]
    idx = np.flatnonzero(same_next & (c != CLOSE))
    state = np.where(c[idx] == IDLE, "idle", "active")
    sid = df[SESSION].to_numpy()[order][idx]
    return pd.DataFrame({SESSION: sid, "state": state, "start_s": ts[idx], "end_s": ts[idx + 1]})


def session_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per session, vectorised: ids, model, shape, open/close time, active time.

    Columns: ``session_id, client_id, model, chunk_frames, height, width, fps, open_s,
    close_s, duration_s, active_s, idle_s, n_active_periods``. ``df`` must be valid.
    """
    opens = df[df[EVENT] == EventKind.OPEN.value]
    closes = df[df[EVENT] == EventKind.CLOSE.value]
    table = opens[[SESSION, CLIENT, MODEL, *SHAPE_COLUMNS]].copy()
    table["open_s"] = opens[TIME].to_numpy()
    table = table.set_index(SESSION)
    table["close_s"] = closes.set_index(SESSION)[TIME]
    table["duration_s"] = table["close_s"] - table["open_s"]
    periods = period_table(df)
    periods["length_s"] = periods["end_s"] - periods["start_s"]
    active = periods[periods["state"] == "active"].groupby(SESSION)["length_s"]
    idle = periods[periods["state"] == "idle"].groupby(SESSION)["length_s"]
    table["active_s"] = active.sum().reindex(table.index, fill_value=0.0)
    table["idle_s"] = idle.sum().reindex(table.index, fill_value=0.0)
    table["n_active_periods"] = active.size().reindex(table.index, fill_value=0).astype("int64")
    return table.reset_index()


def sessions(df: pd.DataFrame) -> list[SessionSummary]:
    """Summarise each session of a valid trace as a :class:`~traces.schema.SessionSummary`.

    Sessions are listed in the order they open.
    """
    table = session_table(df)
    periods = period_table(df)
    active = periods[periods["state"] == "active"]
    by_session: dict[Any, list[tuple[float, float]]] = {}
    for sid, start, end in zip(
        active[SESSION].tolist(), active["start_s"].tolist(), active["end_s"].tolist()
    ):
        by_session.setdefault(sid, []).append((start, end))
    return [
        SessionSummary(
            session_id=str(r[SESSION]),
            client_id=str(r[CLIENT]),
            model=str(r[MODEL]),
            shape=ChunkShape(int(r["chunk_frames"]), int(r["height"]), int(r["width"]), int(r["fps"])),
            open_s=float(r["open_s"]),
            close_s=float(r["close_s"]),
            active_periods=tuple(by_session.get(r[SESSION], ())),
        )
        for r in table.to_dict("records")
    ]
