"""Turn a trace DataFrame (the trace schema) into the simulator's compact workload."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EVENTS = ("open", "active", "idle", "close")
_REQUIRED = ("time_s", "session_id", "event", "chunk_frames", "fps")


@dataclass(frozen=True, slots=True)
class Workload:
    """A trace as plain arrays, sorted by time (stable), ready for replay.

    Attributes
    ----------
    session_ids
        Session id per session index (order of first appearance).
    times, session_index, event_code
        One entry per trace event; ``event_code`` indexes :data:`EVENTS`.
    period_s, chunk_frames, height, width
        Per session: playback seconds of one chunk and its geometry (from the ``open`` row).
    model
        The one model preset of the trace.
    """

    session_ids: tuple[str, ...]
    times: np.ndarray
    session_index: np.ndarray
    event_code: np.ndarray
    period_s: np.ndarray
    chunk_frames: np.ndarray
    height: np.ndarray
    width: np.ndarray
    model: str

    @property
    def end_s(self) -> float:
        """Time of the last event."""
        return float(self.times[-1]) if len(self.times) else 0.0

    def activations(self, session: int) -> np.ndarray:
        """Sorted times at which ``session`` becomes active (open and active events)."""
        mask = (self.session_index == session) & (self.event_code <= 1)
        return self.times[mask]


def prepare(trace: pd.DataFrame, *, model: str | None = None) -> Workload:
    """Validate the columns the simulator needs and build a :class:`Workload`.

    Raises
    ------
    ValueError
        When a column is missing, an event name is unknown, a session has no ``open`` row
        with a positive ``chunk_frames``/``fps``, or the trace mixes model presets (the
        simulator runs one model per trace: filter the trace, or pass ``model``).
    """
    missing = [c for c in _REQUIRED if c not in trace.columns]
    if missing:
        raise ValueError(f"trace lacks columns {missing}; it has {list(trace.columns)}")
    df = trace.sort_values("time_s", kind="stable").reset_index(drop=True)
    bad = sorted(set(df["event"].astype(str)) - set(EVENTS))
    if bad:
        raise ValueError(f"unknown trace events {bad}; known: {list(EVENTS)}")
    codes = df["event"].map({e: i for i, e in enumerate(EVENTS)}).to_numpy(np.int8)
    sid_codes, uniques = pd.factorize(df["session_id"].astype(str), sort=False)
    opens = df[codes == 0].drop_duplicates("session_id")
    opens = opens.set_index(opens["session_id"].astype(str)).reindex(uniques)
    if opens["chunk_frames"].isna().any() or opens["fps"].isna().any():
        lacking = list(opens.index[opens["chunk_frames"].isna() | opens["fps"].isna()][:3])
        raise ValueError(f"sessions {lacking} have no open row with chunk_frames and fps")
    frames = opens["chunk_frames"].to_numpy(float)
    fps = opens["fps"].to_numpy(float)
    if (frames <= 0).any() or (fps <= 0).any():
        raise ValueError("chunk_frames and fps must be > 0 on every open row")
    if model is None:
        models = sorted(set(opens["model"].dropna().astype(str))) if "model" in opens else []
        if len(models) > 1:
            raise ValueError(
                f"the simulator runs one model per trace; this trace mixes {models}: "
                "filter it by the model column or pass model=..."
            )
        model = models[0] if models else "tiny"
    h = opens["height"].to_numpy(float) if "height" in opens else np.full(len(opens), np.nan)
    w = opens["width"].to_numpy(float) if "width" in opens else np.full(len(opens), np.nan)
    return Workload(
        session_ids=tuple(uniques),
        times=df["time_s"].to_numpy(float),
        session_index=sid_codes.astype(np.int64),
        event_code=codes,
        period_s=frames / fps,
        chunk_frames=frames.astype(np.int64),
        height=h,
        width=w,
        model=model,
    )
