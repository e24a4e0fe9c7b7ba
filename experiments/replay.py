"""Trace replay against the live Dask cluster, or the simulator on the same footing.

``turboserve replay TRACE --backend live|sim --out DIR --time-scale X --workers N --seed S``

``live`` starts a :class:`framework.Server` on a LocalCluster (tiny model on CPU unless
configured otherwise) with the closed control loop (:class:`framework.controller.Controller`)
and session-aware autoscaling (:class:`framework.adaptive.SessionAdaptive`), and plays
the trace's sessions against it: ``open`` opens a session, ``active`` streams chunks at
playback cadence (chunk ``i+1`` is requested at ``max(t_request_i + period, t_done_i)``,
the simulator's rule), ``idle`` pauses it, ``close`` closes it.

Time runs ``X`` times faster than the trace (``--time-scale``, trace seconds per wall
second): events, the playback cadence and the control tick are compressed, and the
controller's policies see trace seconds. Every time and duration in the outputs is in
trace seconds (wall seconds times ``X``), the unit of the simulator's results, so the two
compare directly; with ``X = 1`` they are wall seconds.

``sim`` runs the simulator with the same policies and parameters, with the step-time
profile measured on this machine (the live run's own chunks when given, else
``kernels/profiles/tiny-cpu.csv`` if present, else a short calibration of the model
here; ``--config replay.profile=DIR/profile.csv`` and ``--config replay.startup-s=S``
take a live run's measurements), multiplied by ``X``. Both write the output folder of
:func:`experiments.results.write_outputs` (same columns), plus ``decisions.parquet``
(the control decisions, accepted or refused, with reasons) and ``profile.csv``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import pathlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

import framework.config  # noqa: F401  (registers the turboserve defaults before any dask.config.set)
from experiments.results import CHUNK_COLUMNS, INTERVAL_COLUMNS, empty_chunks, summarize, write_outputs

logger = logging.getLogger(__name__)

_ID = re.compile(r"[^A-Za-z0-9_.-]")
DECISION_COLUMNS = ("time_s", "action", "session_id", "worker", "accepted", "reason")


@dataclass(slots=True)
class ReplayResult:
    """What one replay (live or simulated) produced; every time in trace seconds.

    Attributes
    ----------
    chunks, intervals
        The contract tables (:data:`~experiments.results.CHUNK_COLUMNS`,
        :data:`~experiments.results.INTERVAL_COLUMNS`).
    decisions
        ``time_s, action, session_id, worker, accepted, reason`` per control action.
    summary
        The summary row (contract columns first).
    profile
        ``((batch_size, step_s), ...)`` in wall seconds: the step times the run used
        (sim) or the median step times its workers showed (live, calibration included).
    stats
        Backend details: controller counters, errors, worker start-up times.
    """

    backend: str
    chunks: pd.DataFrame
    intervals: pd.DataFrame
    decisions: pd.DataFrame
    summary: dict[str, Any]
    profile: tuple[tuple[int, float], ...]
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- traces


def burst_trace(
    *, base: int = 1, burst: int = 3, burst_at_s: float = 20.0, burst_len_s: float = 60.0,
    tail_s: float = 120.0, chunk_frames: int = 12, fps: int = 4, model: str = "tiny",
) -> pd.DataFrame:
    """A small deterministic trace: ``base`` long sessions and a burst of ``burst`` more.

    The base sessions open at 0 and close at the end; the burst sessions open at
    ``burst_at_s`` (one second apart), and go idle after ``burst_len_s`` for good
    (closing at the end), which is when an autoscaler should give workers back.
    """
    end = burst_at_s + burst_len_s + tail_s
    rows = []
    for i in range(base):
        rows += [(0.0, f"base{i}", "open"), (end, f"base{i}", "close")]
    for i in range(burst):
        t = burst_at_s + i
        rows += [(t, f"burst{i}", "open"), (t + burst_len_s, f"burst{i}", "idle"), (end, f"burst{i}", "close")]
    df = pd.DataFrame(rows, columns=["time_s", "session_id", "event"])
    df["client_id"] = "c0"
    df["model"] = model
    is_open = df["event"] == "open"
    for col, value in (("chunk_frames", chunk_frames), ("height", 64), ("width", 64), ("fps", fps)):
        df[col] = pd.array(np.where(is_open, value, pd.NA), dtype="Int64")
    return df.sort_values(["time_s", "session_id"], kind="stable").reset_index(drop=True)


def _sessions(trace: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per session: its events (time, kind), chunk period (trace s), model, geometry."""
    df = trace.sort_values("time_s", kind="stable")
    out: dict[str, dict[str, Any]] = {}
    for row in df.itertuples(index=False):
        sid = str(row.session_id)
        s = out.setdefault(sid, {"events": []})
        s["events"].append((float(row.time_s), str(row.event)))
        if row.event == "open":
            s["period"] = float(row.chunk_frames) / float(row.fps)
            s["model"] = str(getattr(row, "model", "tiny") or "tiny")
            s["height"] = _int_or_none(getattr(row, "height", None))
            s["width"] = _int_or_none(getattr(row, "width", None))
    missing = [sid for sid, s in out.items() if "period" not in s]
    if missing:
        raise ValueError(f"sessions {missing[:3]} have no open row with chunk_frames and fps")
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def session_slo(trace: pd.DataFrame) -> dict[str, float]:
    """Per-session latency target in trace seconds: the playback time of one chunk."""
    return {sid: s["period"] for sid, s in _sessions(trace).items()}


# ---------------------------------------------------------------- latency profiles


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


def _scaled_model(points: tuple[tuple[int, float], ...], scale: float):
    from policies.types import BatchLatencyModel

    return BatchLatencyModel(tuple(b for b, _ in points), tuple(s * scale for _, s in points))


# ---------------------------------------------------------------- settings


def control_settings(trace: pd.DataFrame, *, time_scale: float, profile: tuple[tuple[int, float], ...] | None,
                     **overrides: Any):
    """The :class:`~framework.controller.ControlSettings` of a replay (config + overrides).

    The SLO defaults to the trace's median chunk period (trace seconds); with a
    ``profile`` the controller uses it instead of learning one (the simulator does
    the same, so both decide on the same latency model).
    """
    from framework import config
    from framework.controller import ControlSettings

    periods = sorted(session_slo(trace).values())
    slo = config.get("slo-s")
    kw: dict[str, Any] = {
        "time_scale": time_scale,
        "slo_s": float(slo) if slo is not None else periods[len(periods) // 2],
    }
    if profile is not None:
        kw.update(latency_points=profile, measure=False)
    kw.update(overrides)
    return ControlSettings.from_config(**kw)


# ---------------------------------------------------------------- live


def replay_live(
    trace: pd.DataFrame,
    *,
    time_scale: float = 1.0,
    workers: int | None = None,
    seed: int = 0,
    trace_name: str = "trace",
    profile: tuple[tuple[int, float], ...] | None = None,
    progress: bool = True,
    control: dict[str, Any] | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    calibrate: bool = True,
) -> ReplayResult:
    """Replay ``trace`` on a new local :class:`framework.Server` with control and autoscaling.

    Parameters
    ----------
    trace
        Trace-schema DataFrame.
    time_scale
        Trace seconds per wall second.
    workers
        Workers at the start (default ``turboserve.autoscale.minimum``, at least 1).
    seed
        Base seed of the sessions (session ``k`` of the trace gets ``seed + k``).
    profile
        Latency points for the controller (wall seconds); None: measured on the live
        workers before the trace starts (``calibrate``), else learnt from live chunks.
    progress
        Show a tqdm bar over the trace events.
    control
        :class:`~framework.controller.ControlSettings` overrides (policy names/params,
        ``minimum``, ``maximum``, ...).
    cluster_kwargs
        Passed to ``Server.local`` (``LocalCluster`` options).
    calibrate
        Measure the step time at batch 1 and ``max_batch`` on the first worker first.
    """
    from framework.adaptive import adaptive_kwargs
    from framework.controller import Controller
    from framework.server import Server

    if not time_scale > 0:
        raise ValueError(f"--time-scale must be > 0 (trace seconds per wall second), got {time_scale!r}")
    settings = control_settings(trace, time_scale=time_scale, profile=profile, **(control or {}))
    n0 = int(workers if workers is not None else max(settings.minimum, 1))
    if not settings.minimum <= n0 <= settings.maximum:
        raise ValueError(f"--workers {n0} outside the autoscale bounds [{settings.minimum}, {settings.maximum}]")
    specs = _sessions(trace)
    models = sorted({s["model"] for s in specs.values()})
    kwargs = {"dashboard_address": None, **(cluster_kwargs or {})}
    server = Server.local(n_workers=n0, model=models[0], settings={"on_full": "queue"}, **kwargs)
    calibration: list[tuple] = []
    try:
        if profile is None and calibrate:
            calibration = calibrate_live(server, settings.max_batch, model=models[0])
            settings = replace(settings, latency_points=profile_from_chunks(
                pd.DataFrame(calibration, columns=list(CHUNK_COLUMNS))), measure=False)
        server.client.register_plugin(Controller(settings))
        adapt = adaptive_kwargs(minimum=settings.minimum, maximum=settings.maximum,
                                interval=settings.interval_s / time_scale)
        server.cluster.adapt(**adapt)
        driver = _Driver(server, specs, time_scale=time_scale, seed=seed, progress=progress,
                         n_events=len(trace))
        server.client.sync(driver.run)
        log = server.client.sync(server.client.scheduler.turboserve_control_log)
        stats = dict(server.client.sync(server.client.scheduler.turboserve_control_stats))
        end_wall = time.time()
    finally:
        server.close()
    t0, x = driver.t0, time_scale
    rows = pd.DataFrame(driver.rows, columns=[*CHUNK_COLUMNS]) if driver.rows else empty_chunks()
    # The step times the workers showed (calibration and run together): what a
    # simulation of this run should execute with. The curve the controller decided on
    # is kept in the stats.
    both = pd.concat([rows, pd.DataFrame(calibration, columns=list(CHUNK_COLUMNS))]) if calibration else rows
    measured = profile_from_chunks(both) if len(both) else settings.latency_points
    chunks = _to_trace_time(rows, t0, x)
    intervals = _intervals(log["intervals"], t0, x, end_wall)
    decisions = pd.DataFrame(log["decisions"], columns=list(DECISION_COLUMNS))
    if len(decisions):
        decisions["time_s"] = (decisions["time_s"] - t0) * x
    lifetimes = pd.DataFrame(log["workers"], columns=["worker", "started_s", "released_s"])
    lifetimes["started_s"] = (lifetimes["started_s"] - t0) * x
    lifetimes["released_s"] = (lifetimes["released_s"].astype(float) - t0) * x
    stats.update(errors=driver.errors, workers=lifetimes, decision_profile=settings.latency_points, startup_trace_s=[s * x for s in stats.get("startup_s", [])])
    gpus = int(max(intervals["n_workers"].max() if len(intervals) else n0, n0))
    extra = _extra(decisions, stats, intervals, lifetimes, t0, x, end_wall)
    startup = stats.get("startup_s") or []
    extra.update(backend="live", time_scale=x, sessions=len(specs), session_errors=len(driver.errors),
                 startup_s=float(np.median(startup)) if startup else float("nan"))
    summary = summarize(chunks, intervals, trace=trace_name, policy=settings.label, gpus=gpus,
                        slo_s=_summary_slo(trace, (control or {}).get("slo_s")), extra=extra)
    return ReplayResult("live", chunks, intervals, decisions, summary, measured, stats)


class _Driver:
    """Plays the sessions of a trace against a Server, on the client's event loop."""

    def __init__(self, server: Any, specs: dict[str, dict[str, Any]], *, time_scale: float, seed: int,
                 progress: bool, n_events: int) -> None:
        self.server, self.specs, self.x, self.seed = server, specs, time_scale, seed
        self.rows: list[tuple] = []
        self.errors: list[str] = []
        self.t0 = 0.0
        self._bar: Any = None
        self._progress, self._n_events = progress, n_events

    async def run(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self._n_events, desc="replay", unit="event", disable=not self._progress)
        self.t0 = time.time()
        try:
            await asyncio.gather(*(self._session(k, sid, spec) for k, (sid, spec) in enumerate(self.specs.items())))
        finally:
            self._bar.close()

    def _wall(self, trace_s: float) -> float:
        return self.t0 + trace_s / self.x

    async def _until(self, trace_s: float) -> None:
        delay = self._wall(trace_s) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _session(self, k: int, sid: str, spec: dict[str, Any]) -> None:
        events = spec["events"]
        period_wall = spec["period"] / self.x
        session = None
        try:
            for i, (t, kind) in enumerate(events):
                await self._until(t)
                self._bar.update(1)
                if kind == "open":
                    requested = time.time()
                    session = await self.server.aopen_session(
                        _prompt(sid), seed=self.seed + k, model=spec["model"], height=spec["height"],
                        width=spec["width"], session_id=_session_id(sid),
                    )
                    t_end = self._wall(events[i + 1][0]) if i + 1 < len(events) else math.inf
                    await self._stream(sid, session, requested, period_wall, t_end)
                elif kind == "active" and session is not None:
                    t_end = self._wall(events[i + 1][0]) if i + 1 < len(events) else math.inf
                    await self._stream(sid, session, time.time(), period_wall, t_end)
                elif kind == "idle" and session is not None:
                    await session.apause()
                elif kind == "close" and session is not None:
                    await session.aclose()
                    session = None
        except Exception as exc:
            logger.warning("replay of session %s failed", sid, exc_info=True)
            self.errors.append(f"{sid}: {exc!r}")
            if session is not None:
                try:
                    await session.aclose()
                except Exception:
                    pass

    async def _stream(self, sid: str, session: Any, first_request: float, period: float, t_end: float) -> None:
        """Chunks back to back at playback cadence until the next trace event."""
        t_req = first_request
        while t_req < t_end:
            if t_req > time.time():
                await asyncio.sleep(t_req - time.time())
            chunk = await session.asubmit()
            self.rows.append((sid, chunk.index, t_req, chunk.t_start_s, chunk.t_done_s,
                              chunk.t_done_s - t_req, chunk.worker, chunk.batch_size, chunk.migrated))
            t_req = max(t_req + period, time.time())


def _summary_slo(trace: pd.DataFrame, slo: float | None = None) -> float | dict[str, float]:
    """``slo``, else the configured ``turboserve.slo-s``, else each session's chunk period (as the simulator)."""
    from framework import config

    slo = config.get("slo-s", slo)
    return float(slo) if slo is not None else session_slo(trace)


def _prompt(session_id: str) -> str:
    return f"replayed session {session_id}"


def _session_id(sid: str) -> str:
    clean = _ID.sub("-", sid)
    if not clean or not clean[0].isalnum():
        clean = "s" + clean
    if len(clean) > 64:
        clean = clean[:51] + "-" + hashlib.sha1(sid.encode()).hexdigest()[:12]
    return clean


def _to_trace_time(rows: pd.DataFrame, t0: float, x: float) -> pd.DataFrame:
    out = rows.copy()
    for col in ("t_request_s", "t_start_s", "t_done_s"):
        out[col] = (out[col].astype(float) - t0) * x
    out["latency_s"] = out["latency_s"].astype(float) * x
    return out.sort_values(["session_id", "index"], kind="stable").reset_index(drop=True)


def _intervals(rows: list[dict[str, Any]], t0: float, x: float, end_wall: float) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))
    df = df[df["time_s"] >= t0 - 1e-9].reset_index(drop=True) if len(df) else df
    if len(df):
        df["time_s"] = (df["time_s"] - t0) * x
        df["cost_gpu_s"] = df["cost_gpu_s"] * x
        df.loc[0, "cost_gpu_s"] = 0.0  # the first kept tick's share precedes the trace
    return df.astype({"n_workers": "int64", "n_active": "int64", "n_idle": "int64", "n_suspended": "int64",
                      "migrations": "int64", "cost_gpu_s": float, "time_s": float})


def _extra(decisions: pd.DataFrame, stats: dict[str, Any], intervals: pd.DataFrame, lifetimes: pd.DataFrame,
           t0: float, x: float, end_wall: float) -> dict[str, Any]:
    acc = decisions[decisions["accepted"]] if len(decisions) else decisions
    by = acc["action"].value_counts().to_dict() if len(acc) else {}
    return {
        "offloads": int(by.get("Offload", 0)),
        "resumes": int(by.get("Resume", 0)),
        "refused_actions": int((~decisions["accepted"]).sum()) if len(decisions) else 0,
        "scale_events": int(by.get("ScaleTo", 0)),
        "peak_workers": int(intervals["n_workers"].max()) if len(intervals) else 0,
        "decide_ms_per_tick": stats.get("decide_ms_mean"),
        "failed_ticks": int(stats.get("failed_ticks", 0)),
    }


# ---------------------------------------------------------------- simulated


def replay_sim(
    trace: pd.DataFrame,
    *,
    time_scale: float = 1.0,
    workers: int | None = None,
    seed: int = 0,
    trace_name: str = "trace",
    profile: tuple[tuple[int, float], ...] | None = None,
    startup_s: float | None = None,
    control: dict[str, Any] | None = None,
) -> ReplayResult:
    """Simulate ``trace`` with the live replay's policies, bounds and (scaled) step times.

    ``profile`` (wall seconds per batch size) defaults to :func:`default_profile`;
    step times and ``startup_s`` (wall seconds a new worker takes; default the
    controller's ``worker_startup_s``) are multiplied by ``time_scale`` into trace
    seconds, as the live run experiences them.
    """
    from experiments.sim.config import PolicySet, SimConfig
    from experiments.sim.engine import Simulator
    from experiments.sim.run import summary_of
    from experiments.sim.workload import prepare

    if not time_scale > 0:
        raise ValueError(f"--time-scale must be > 0 (trace seconds per wall second), got {time_scale!r}")
    settings = control_settings(trace, time_scale=time_scale, profile=None, **(control or {}))
    if profile is None:
        profile = default_profile(prepare(trace).model, settings.max_batch)
    n0 = int(workers if workers is not None else max(settings.minimum, 1))
    startup = settings.worker_startup_s if startup_s is None else startup_s
    policies = PolicySet.of(settings.placement, settings.autoscaling, settings.offload,
                            placement_params=settings.placement_params,
                            autoscaling_params=settings.autoscaling_params,
                            offload_params=settings.offload_params)
    cfg = SimConfig.from_config(
        initial_workers=n0, min_workers=settings.minimum, max_workers=settings.maximum,
        interval_s=settings.interval_s, max_batch=settings.max_batch, worker_startup_s=startup * time_scale,
        gpu_memory_bytes=float(settings.worker_memory_bytes) + 64 * 1024**2,
        slo_s=(control or {}).get("slo_s"),
    )
    result = Simulator(prepare(trace), policies, cfg, latency=_scaled_model(profile, time_scale)).run()
    summary = summary_of(result, trace=trace_name, gpus=max(n0, int(result.intervals["n_workers"].max())))
    summary["policy"] = settings.label
    acc = result.decisions[result.decisions["accepted"]]
    summary.update(backend="sim", time_scale=time_scale, sessions=len(result.session_slo_s),
                   scale_events=int((acc["action"] == "ScaleTo").sum()))
    decisions = result.decisions.loc[:, list(DECISION_COLUMNS)]
    return ReplayResult("sim", result.chunks, result.intervals, decisions, summary, tuple(profile),
                        {"counters": result.counters, "workers": result.workers})


# ---------------------------------------------------------------- outputs and CLI


def write_replay(result: ReplayResult, out_dir: str | pathlib.Path, *, seed: int, trace_name: str,
                 plots: bool = True) -> pathlib.Path:
    """Write the output folder, ``decisions.parquet`` and ``profile.csv`` of a replay."""
    from framework import config

    resolved = {**config.resolved(), "experiment": {
        "kind": "replay", "backend": result.backend, "seed": seed, "trace": trace_name,
        "policy": result.summary["policy"], "time_scale": result.summary.get("time_scale"),
        "profile": [list(p) for p in result.profile],
    }}
    out = write_outputs(out_dir, result.chunks, result.intervals, result.summary, resolved, plots=plots)
    decisions = result.decisions.copy()
    decisions["reason"] = decisions["reason"].astype(str)
    decisions.to_parquet(out / "decisions.parquet", index=False)
    pd.DataFrame(result.profile, columns=["batch_size", "step_s"]).to_csv(out / "profile.csv", index=False)
    return out


def replay_command(args: argparse.Namespace) -> int:
    """``turboserve replay TRACE --backend live|sim --out DIR --time-scale X --workers N --seed S``."""
    from traces.io import read_trace

    path = pathlib.Path(args.trace)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
    trace = read_trace(path)
    name = path.stem
    if args.backend == "live":
        result = replay_live(trace, time_scale=args.time_scale, workers=args.workers, seed=args.seed,
                             trace_name=name)
    elif args.backend == "sim":
        import dask.config

        profile_csv = dask.config.get("turboserve.replay.profile", default=None)
        startup = dask.config.get("turboserve.replay.startup-s", default=None)
        result = replay_sim(trace, time_scale=args.time_scale, workers=args.workers, seed=args.seed,
                            trace_name=name, profile=read_profile(profile_csv) if profile_csv else None,
                            startup_s=None if startup is None else float(startup))
    else:
        raise ValueError(f"unknown backend {args.backend!r}; use 'live' or 'sim'")
    write_replay(result, args.out, seed=args.seed, trace_name=name)
    s = result.summary
    print(f"{result.backend}: {len(result.chunks)} chunks, p99 {s['p99_latency_s']:.3g} s, "
          f"max {s['max_latency_s']:.3g} s, "
          f"SLO {s['slo_attainment']:.1%}, {s['gpu_hours'] * 3600:.0f} GPU-s, {s['migrations']} migrations "
          f"-> {args.out}")
    return 0


# ---------------------------------------------------------------- parity


def decision_counts(result: ReplayResult) -> dict[str, int]:
    """Accepted control decisions by kind: placements, scale-ups/downs, migrations, offloads."""
    d = result.decisions
    acc = d[d["accepted"].astype(bool)] if len(d) else d
    targets = [int(w) for w in acc.loc[acc["action"] == "ScaleTo", "worker"]] if len(acc) else []
    n0 = int(result.intervals["n_workers"].iloc[0]) if len(result.intervals) else 0
    ups, last = 0, n0
    for n in targets:
        ups += n > last
        last = n
    # The simulator covers a scale-in by its Retire actions (no ScaleTo row): count those.
    retired = acc
    if len(acc):
        retired = acc[(acc["action"] == "Retire") & ~acc["worker"].astype(str).str.startswith("starting-")]
    downs = len(retired)
    opened = int(result.chunks.loc[result.chunks["index"] == 0, "session_id"].nunique()) if len(result.chunks) else 0
    return {
        "sessions served": opened,
        "scale-ups": ups,
        "workers retired": downs,
        "peak workers": int(result.intervals["n_workers"].max()) if len(result.intervals) else 0,
        "final workers": int(result.intervals["n_workers"].iloc[-1]) if len(result.intervals) else 0,
        "migrations": int((acc["action"] == "Migrate").sum()) if len(acc) else 0,
        "offloads": int((acc["action"] == "Offload").sum()) if len(acc) else 0,
    }


def compare(live: ReplayResult, sim: ReplayResult) -> pd.DataFrame:
    """Side by side: decision counts and latency/cost figures of a live and a simulated replay.

    Columns ``metric, live, sim, diff`` (``diff``: sim minus live for counts, the
    relative difference ``(sim - live) / live`` for figures).
    """
    rows = []
    dl, ds = decision_counts(live), decision_counts(sim)
    for key in dl:
        rows.append((key, dl[key], ds[key], ds[key] - dl[key]))
    for key in ("chunks", "p50_latency_s", "p99_latency_s", "max_latency_s", "slo_attainment", "gpu_hours"):
        a, b = float(live.summary[key]), float(sim.summary[key])
        rows.append((key, a, b, (b - a) / a if a else math.nan))
    return pd.DataFrame(rows, columns=["metric", "live", "sim", "diff"])


def parity(
    trace: pd.DataFrame, *, time_scale: float, workers: int | None = None, seed: int = 0,
    control: dict[str, Any] | None = None, progress: bool = False,
) -> tuple[ReplayResult, ReplayResult, pd.DataFrame]:
    """Replay ``trace`` live, then simulate it with the step times and worker start-up
    measured live (both scaled by ``time_scale``); returns both results and :func:`compare`."""
    live = replay_live(trace, time_scale=time_scale, workers=workers, seed=seed, control=control, progress=progress)
    startup = live.stats.get("startup_s") or []
    sim = replay_sim(trace, time_scale=time_scale, workers=workers, seed=seed, control=control,
                     profile=live.profile, startup_s=float(np.median(startup)) if startup else None)
    return live, sim, compare(live, sim)
