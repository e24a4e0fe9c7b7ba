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
from dataclasses import dataclass
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
_STR = pd.Series([], dtype="str").dtype  # pandas' default string dtype (missing is NaN)

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
        series = df[col].reset_index(drop=True)
        out[col] = series if series.dtype == _STR else series.astype(_STR)
    for col in SHAPE_COLUMNS:
        if df[col].dtype == "Int64":
            out[col] = df[col].reset_index(drop=True)
            continue
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
    # Factorize first: the column has a handful of distinct values.
    codes, uniques = pd.factorize(df[EVENT], use_na_sentinel=True)
    lookup = np.array([EVENT_NAMES.index(u) if u in EVENT_NAMES else -1 for u in uniques] + [-1])
    return lookup[codes].astype(np.int64)


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


@dataclass(frozen=True, slots=True)
class TraceArrays:
    """A numeric view of a valid trace, for vectorised statistics.

    ``session`` numbers sessions in order of first appearance (their ``open`` row), so
    ``session_ids[session]`` is the id of each row.
    """

    time: np.ndarray
    code: np.ndarray
    session: np.ndarray
    session_ids: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame) -> TraceArrays:
        """Build the view of ``df`` (times, event codes, session numbers)."""
        session, uniques = pd.factorize(df[SESSION])
        return cls(
            time=df[TIME].to_numpy(dtype=np.float64),
            code=event_codes(df),
            session=session.astype(np.int64),
            session_ids=np.asarray(uniques),
        )

    @property
    def n_sessions(self) -> int:
        """Number of sessions."""
        return len(self.session_ids)

    def open_close(self) -> tuple[np.ndarray, np.ndarray]:
        """Open and close time of every session (NaN where missing)."""
        open_t = np.full(self.n_sessions, np.nan)
        close_t = np.full(self.n_sessions, np.nan)
        is_open, is_close = self.code == OPEN, self.code == CLOSE
        open_t[self.session[is_open]] = self.time[is_open]
        close_t[self.session[is_close]] = self.time[is_close]
        return open_t, close_t

    def previous_code(self) -> np.ndarray:
        """For every row, the event code of the same session's previous row (-1: none)."""
        order = np.argsort(self.session, kind="stable")
        s = self.session[order]
        prev = np.full(len(s), -1, dtype=np.int64)
        same = np.zeros(len(s), dtype=bool)
        same[1:] = s[1:] == s[:-1]
        prev[1:] = np.where(same[1:], self.code[order][:-1], -1)
        out = np.empty_like(prev)
        out[order] = prev
        return out

    def periods(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every active/idle period: ``(row of its first event, is_idle, start_s, end_s)``.

        A period runs from an event to the next event of the same session; periods are
        grouped by session, in time order within each.
        """
        order = np.argsort(self.session, kind="stable")
        s, c = self.session[order], self.code[order]
        same_next = np.zeros(len(s), dtype=bool)
        same_next[:-1] = s[1:] == s[:-1]
        idx = np.flatnonzero(same_next & (c != CLOSE))
        ts = self.time[order]
        return order[idx], c[idx] == IDLE, ts[idx], ts[idx + 1]


def period_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every active and idle period of every session, vectorised.

    Returns a frame with columns ``session_id, state ('active'|'idle'), start_s, end_s``
    (a period runs from an event to the next event of the same session), grouped by
    session in order of opening. ``df`` must be a valid trace.
    """
    rows, is_idle, start, end = TraceArrays.of(df).periods()
    return pd.DataFrame({
        SESSION: df[SESSION].take(rows).reset_index(drop=True),
        "state": pd.Series(np.where(is_idle, "idle", "active"), dtype="str"),
        "start_s": start,
        "end_s": end,
    })


def session_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per session, vectorised: ids, model, shape, open/close time, active time.

    Columns: ``session_id, client_id, model, chunk_frames, height, width, fps, open_s,
    close_s, duration_s, active_s, idle_s, n_active_periods``, in order of opening.
    ``df`` must be valid.
    """
    arrays = TraceArrays.of(df)
    open_rows = np.flatnonzero(arrays.code == OPEN)
    table = df.take(open_rows)[[SESSION, CLIENT, MODEL, *SHAPE_COLUMNS]].reset_index(drop=True)
    sess = arrays.session[open_rows]
    open_t, close_t = arrays.open_close()
    table["open_s"] = open_t[sess]
    table["close_s"] = close_t[sess]
    table["duration_s"] = table["close_s"] - table["open_s"]
    rows, is_idle, start, end = arrays.periods()
    p_sess, length = arrays.session[rows], end - start
    n = arrays.n_sessions
    table["active_s"] = np.bincount(p_sess[~is_idle], weights=length[~is_idle], minlength=n)[sess]
    table["idle_s"] = np.bincount(p_sess[is_idle], weights=length[is_idle], minlength=n)[sess]
    table["n_active_periods"] = np.bincount(p_sess[~is_idle], minlength=n)[sess].astype(np.int64)
    return table


def sessions(df: pd.DataFrame) -> list[SessionSummary]:
    """Summarise each session of a valid trace as a :class:`~traces.schema.SessionSummary`.

    Sessions are listed in the order they open.
    """
    table = session_table(df)
    arrays = TraceArrays.of(df)
    rows, is_idle, start, end = arrays.periods()
    by_session: dict[Any, list[tuple[float, float]]] = {}
    for sid, a, b in zip(
        arrays.session_ids[arrays.session[rows[~is_idle]]].tolist(),
        start[~is_idle].tolist(), end[~is_idle].tolist(),
    ):
        by_session.setdefault(sid, []).append((a, b))
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
