"""Step-time profiles for replays: measure, calibrate on a live worker, read, derive from chunks.

A profile is ``((batch_size, step_s), ...)`` in wall seconds, non-decreasing in the
batch size; the simulator executes with it (times ``time_scale``) and the live
controller may decide with it instead of learning one.
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import numpy as np
import pandas as pd

from workers.chunk import CHUNK_COLUMNS


def measure_profile(model: str = "tiny", max_batch: int = 4, repeats: int = 2) -> tuple[tuple[int, float], ...]:
    """Step time (wall seconds) per batch size of ``model`` on this process's device.

    A short calibration: ``repeats`` timed steps (after one warm-up) at each batch
    size 1, 2, 4, ... up to ``max_batch``; the median is kept.
    """
    from kernels.model import StreamingVideoModel

    net = StreamingVideoModel.from_preset(model, device="cpu", weights_seed=0)
    sizes = sorted({min(2**k, max_batch) for k in range(int(math.log2(max_batch)) + 2)})
    points = []
    for b in sizes:
        states = [net.new_session("calibration", i) for i in range(b)]
        net.step(states)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net.step(states)
            times.append(time.perf_counter() - t0)
        points.append((b, float(np.median(times))))
    return _monotone(points)


def calibrate_live(server: Any, max_batch: int, *, model: str = "tiny", rounds: int = 2) -> list[tuple]:
    """Chunk rows (wall clock) of a short calibration on the server's first worker.

    ``rounds`` chunks of one session alone, then ``rounds`` steps of ``max_batch``
    sessions requested together; the sessions are closed afterwards. The rows'
    ``t_done_s - t_start_s`` by ``batch_size`` is the live step-time profile.
    """
    worker = server.workers()[0]
    sessions = [server.open_session("calibration", seed=i, model=model, session_id=f"calibration-{i}", worker=worker)
                for i in range(max_batch)]
    rows = []
    try:
        for _ in range(rounds):
            rows.append(sessions[0].submit().result().to_row())
        for _ in range(rounds):
            futures = [s.submit() for s in sessions]
            rows.extend(f.result().to_row() for f in futures)
    finally:
        for s in sessions:
            s.close()
    return [tuple(r[c] for c in CHUNK_COLUMNS) for r in rows]


def profile_from_chunks(chunks_wall: pd.DataFrame) -> tuple[tuple[int, float], ...]:
    """Median step time (``t_done_s - t_start_s``, wall seconds) per batch size of live chunks."""
    if chunks_wall.empty:
        raise ValueError("no chunks to measure a profile from")
    step = (chunks_wall["t_done_s"] - chunks_wall["t_start_s"]).groupby(chunks_wall["batch_size"]).median()
    return _monotone([(int(b), float(s)) for b, s in step.items()])


def migration_stall_from_chunks(chunks: pd.DataFrame, decisions: pd.DataFrame | None = None) -> float:
    """Median stall a migration added to its session's next chunk (seconds, in the chunks' clock).

    The simulator's model: the copy starts at the move (or when the chunk in flight
    ends) and the session's next chunk cannot start before the fixed cost has passed.
    So for a ``migrated`` chunk that waited longer than its session usually waits, with
    an accepted ``Migrate`` of its session in ``decisions`` (same clock) since the
    previous chunk was requested, the stall is its ``t_start_s`` minus that copy start.
    Otherwise (no decision known: a runtime drain, or no ``decisions``) it is its latency
    minus the median latency of the session's ordinary chunks (not migrated, not the
    first). Returns the median stall, clipped at 0; ``nan`` when no chunk was migrated
    or no ordinary chunk exists to compare with.
    """
    if chunks.empty or not chunks["migrated"].astype(bool).any():
        return math.nan
    chunks = chunks.sort_values(["session_id", "index"], kind="stable")
    migrated = chunks["migrated"].astype(bool)
    ordinary = chunks[~migrated & (chunks["index"] > 0)]
    if ordinary.empty:
        return math.nan
    latency = ordinary.groupby("session_id")["latency_s"].median()
    wait = (ordinary["t_start_s"] - ordinary["t_request_s"]).groupby(ordinary["session_id"]).median()
    moves = pd.DataFrame(columns=["time_s", "session_id"])
    if decisions is not None and len(decisions):
        moves = decisions[(decisions["action"] == "Migrate") & decisions["accepted"].astype(bool)]
    previous = chunks.groupby("session_id")[["t_request_s", "t_done_s"]].shift()
    stalls = []
    for i in chunks.index[migrated]:
        row, sid = chunks.loc[i], chunks.at[i, "session_id"]
        normal = float(latency.get(sid, ordinary["latency_s"].median()))
        usual_wait = float(wait.get(sid, 0.0))
        since = previous.at[i, "t_request_s"]
        mine = moves[(moves["session_id"] == sid) & (moves["time_s"] <= row["t_start_s"])]
        if not math.isnan(since):
            mine = mine[mine["time_s"] >= since]
        if len(mine) and row["t_start_s"] - row["t_request_s"] > usual_wait:
            copy_start = float(mine["time_s"].max())
            if not math.isnan(previous.at[i, "t_done_s"]):
                copy_start = max(copy_start, float(previous.at[i, "t_done_s"]))
            stalls.append(float(row["t_start_s"]) - copy_start)
        else:
            stalls.append(float(row["latency_s"]) - normal)
    return max(0.0, float(np.median(stalls)))


def default_profile(model: str = "tiny", max_batch: int = 4) -> tuple[tuple[int, float], ...]:
    """``kernels/profiles/<model>-cpu.csv`` when present, else :func:`measure_profile`."""
    from experiments.sim.latency import profile_path

    try:
        path = profile_path(f"{model}-cpu")
    except FileNotFoundError:
        return measure_profile(model, max_batch)
    df = pd.read_csv(path, comment="#", skipinitialspace=True)
    if "context_frames" in df.columns:
        df = df[df["context_frames"] == df["context_frames"].min()]
    curve = df.groupby("batch_size")["step_s"].median()
    return _monotone([(int(b), float(s)) for b, s in curve.items()])


def read_profile(path: str | pathlib.Path) -> tuple[tuple[int, float], ...]:
    """A ``profile.csv`` written by a replay (``batch_size,step_s`` in wall seconds)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile file {str(path)!r} does not exist (a replay writes DIR/profile.csv)")
    df = pd.read_csv(path, comment="#")
    if not {"batch_size", "step_s"} <= set(df.columns):
        raise ValueError(f"profile {str(path)!r} needs columns batch_size,step_s; it has {list(df.columns)}")
    return _monotone([(int(b), float(t)) for b, t in zip(df["batch_size"], df["step_s"])])


def _monotone(points: list[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    out, best = [], 0.0
    for b, s in sorted(points):
        best = max(best, s)
        out.append((b, best))
    return tuple(out)


def scaled_model(points: tuple[tuple[int, float], ...], scale: float):
    """The :class:`~policies.types.BatchLatencyModel` of ``points`` with every step time times ``scale``."""
    from policies.types import BatchLatencyModel

    return BatchLatencyModel(tuple(b for b, _ in points), tuple(s * scale for _, s in points))
