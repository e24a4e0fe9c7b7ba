"""Operations on whole traces: cut to a time window, and scale the load by sessions.

Both keep a valid trace valid.

Examples
--------
>>> from traces.generator import generate
>>> from traces.spec import ClientSpec, WorkloadSpec
>>> df = generate(WorkloadSpec(clients=(ClientSpec("c0", rate=0.5),), duration_s=600.0))
>>> short = truncate(df, 300.0)
>>> float(short["time_s"].max()) <= 300.0
True
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from traces.io import normalize
from traces.schema import EVENT, MODEL, SESSION, SHAPE_COLUMNS, TIME


def truncate(df: pd.DataFrame, end_s: float) -> pd.DataFrame:
    """Keep ``[0, end_s]`` of a valid trace.

    Sessions that open at or after ``end_s`` are dropped; sessions still open at
    ``end_s`` are closed there (their later events are dropped).
    """
    if not end_s > 0:
        raise ValueError(f"end_s must be > 0, got {end_s!r}")
    t = df[TIME].to_numpy(dtype=np.float64)
    events = df[EVENT].astype("str").to_numpy()
    sid = df[SESSION].to_numpy()
    late_open = set(sid[(events == "open") & (t >= end_s)].tolist())
    keep = (t < end_s) | ((t == end_s) & (events == "close"))
    keep &= ~pd.Series(sid).isin(late_open).to_numpy()
    out = df[keep].reset_index(drop=True)
    # Sessions whose close fell after end_s get a close at end_s.
    closed = set(out.loc[out[EVENT] == "close", SESSION].tolist())
    open_ids = out.loc[out[EVENT] == "open", SESSION]
    unclosed = open_ids[~open_ids.isin(closed)].tolist()
    if unclosed:
        last_rows = out.drop_duplicates(SESSION, keep="last")
        extra = last_rows[last_rows[SESSION].isin(unclosed)].copy()
        extra[TIME] = float(end_s)
        extra[EVENT] = "close"
        extra[MODEL] = None
        for col in SHAPE_COLUMNS:
            extra[col] = pd.NA
        out = pd.concat([out, extra], ignore_index=True)
        out = out.iloc[np.argsort(out[TIME].to_numpy(), kind="stable")].reset_index(drop=True)
    return normalize(out)


def scale_sessions(df: pd.DataFrame, scale: float, *, seed: int = 0) -> pd.DataFrame:
    """Scale the load of a valid trace by whole sessions.

    ``scale < 1`` keeps each session with probability ``scale``. ``scale > 1`` adds
    ``ceil(scale) - 1`` copies of the trace, each shifted in time by a random offset
    (whole sessions move; times wrap around the trace's end, and a session that would
    cross the end is shifted back by the trace length) and then thinned so the expected
    number of sessions is ``scale`` times the original. Copies are renamed
    ``SESSION~k``.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if scale == 1.0 or df.empty:
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    t = df[TIME].to_numpy(dtype=np.float64)
    end = float(t.max())
    sid = df[SESSION].to_numpy()
    codes, uniques = pd.factorize(sid)
    copies = math.ceil(scale)
    keep_p = scale / copies
    open_t = pd.Series(t).groupby(codes).transform("min").to_numpy()
    close_t = pd.Series(t).groupby(codes).transform("max").to_numpy()
    parts = []
    for k in range(copies):
        kept = rng.random(len(uniques)) < keep_p
        part = df[kept[codes]].copy()
        if k > 0:
            shift = rng.uniform(0.0, end) if end > 0 else 0.0
            rows = kept[codes]
            new_open = (open_t[rows] + shift) % end if end > 0 else open_t[rows]
            delta = new_open - open_t[rows]
            # Sessions that would run past the end start earlier instead.
            over = close_t[rows] + delta > end
            delta = np.where(over, end - close_t[rows], delta)
            part[TIME] = t[rows] + delta
            part[SESSION] = pd.Series(
                [f"{s}~{k}" for s in sid[rows]], index=part.index, dtype=df[SESSION].dtype
            )
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    order = np.lexsort((np.arange(len(out)), out[TIME].to_numpy()))
    return normalize(out.iloc[order].reset_index(drop=True))


def tile(df: pd.DataFrame, duration_s: float, *, period_s: float | None = None) -> pd.DataFrame:
    """Repeat a valid trace back to back until it covers ``duration_s``, then truncate.

    Copy ``k`` is shifted by ``k * period_s`` (default: the trace's last event time) and
    its sessions are renamed ``SESSION@k``; the first copy keeps its names.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    t = df[TIME].to_numpy(dtype=np.float64)
    period = float(period_s) if period_s is not None else (float(t.max()) if len(t) else 0.0)
    if not period > 0:
        raise ValueError(f"cannot tile a trace of length {period!r} s; give period_s > 0")
    copies = max(1, math.ceil(duration_s / period))
    parts = [df]
    for k in range(1, copies):
        part = df.copy()
        part[TIME] = t + k * period
        part[SESSION] = pd.Series([f"{s}@{k}" for s in df[SESSION].tolist()], index=df.index,
                                  dtype=df[SESSION].dtype)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    order = np.argsort(out[TIME].to_numpy(), kind="stable")
    return truncate(normalize(out.iloc[order].reset_index(drop=True)), duration_s)
