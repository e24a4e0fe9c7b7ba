"""Live trace replay: a local :class:`framework.Server` with control and autoscaling plays a trace.

:func:`replay_live` starts the server, optionally calibrates the step time on its
first worker, starts the scheduler plugin's control loop
(:class:`~framework.controller.ControlLoop`) with the replay's settings and the
session-aware ``Adaptive``, and lets a driver play every session of the trace at
playback cadence on the client's event loop; the rows come back in trace seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from experiments.replay_common import (
    ReplayResult,
    control_settings,
    initial_workers,
    summary_slo,
    trace_sessions,
)
from experiments.replay_profiles import (
    calibrate_live,
    migration_stall_from_chunks,
    profile_from_chunks,
)
from experiments.results import empty_chunks, summarize
from framework.controller import INTERVAL_COLUMNS
from policies.semantics import DECISION_COLUMNS
from workers.chunk import CHUNK_COLUMNS

logger = logging.getLogger(__name__)

_ID = re.compile(r"[^A-Za-z0-9_.-]")


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
        :class:`~framework.control_settings.ControlSettings` overrides (policy names/params,
        ``minimum``, ``maximum``, ...).
    cluster_kwargs
        Passed to ``Server.local`` (``LocalCluster`` options).
    calibrate
        Measure the step time at batch 1 and ``max_batch`` on the first worker first.
    """
    from distributed.protocol.serialize import ToPickle

    from framework.adaptive import adaptive_kwargs
    from framework.server import Server

    settings = control_settings(trace, time_scale=time_scale, profile=profile, **(control or {}))
    n0 = initial_workers(settings, workers)
    if not settings.minimum <= n0 <= settings.maximum:
        raise ValueError(f"--workers {n0} outside the autoscale bounds [{settings.minimum}, {settings.maximum}]")
    specs = trace_sessions(trace)
    models = sorted({s["model"] for s in specs.values()})
    kwargs = {"dashboard_address": None, **(cluster_kwargs or {})}
    server = Server.local(n_workers=n0, model=models[0], settings={"on_full": "queue"}, adaptive=False,
                          **kwargs)  # its own loop and Adaptive, started below
    calibration: list[tuple] = []
    try:
        if profile is None and calibrate:
            calibration = calibrate_live(server, settings.max_batch, model=models[0])
            settings = replace(settings, latency_points=profile_from_chunks(
                pd.DataFrame(calibration, columns=list(CHUNK_COLUMNS))), measure=False)
        server.client.sync(server.client.scheduler.turboserve_control_start, settings=ToPickle(settings))
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
    extra["resumes"] = max(extra["resumes"], sum(driver.resumes.values()))
    startup = stats.get("startup_s") or []
    extra.update(backend="live", time_scale=x, sessions=len(specs), session_errors=len(driver.errors),
                 startup_s=float(np.median(startup)) if startup else float("nan"),
                 migration_s=migration_stall_from_chunks(chunks, decisions) / x)  # wall seconds, like startup_s
    summary = summarize(chunks, intervals, trace=trace_name, policy=settings.label, gpus=gpus,
                        slo_s=summary_slo(trace, (control or {}).get("slo_s")), extra=extra)
    return ReplayResult("live", chunks, intervals, decisions, summary, measured, stats)


class _Driver:
    """Plays the sessions of a trace against a Server, on the client's event loop."""

    def __init__(self, server: Any, specs: dict[str, dict[str, Any]], *, time_scale: float, seed: int,
                 progress: bool, n_events: int) -> None:
        self.server, self.specs, self.x, self.seed = server, specs, time_scale, seed
        self.rows: list[tuple] = []
        self.errors: list[str] = []
        #: Resumes from suspension per session, from its events (a request wakes a
        #: suspended session by itself: not every resume is the loop's Resume action).
        self.resumes: dict[str, int] = {}
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
                    await self._count_resumes(sid, session)
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

    async def _count_resumes(self, sid: str, session: Any) -> None:
        try:
            events = await session.aevents()
        except Exception:  # a count for the summary: never the reason a replay fails
            logger.debug("events of session %s not read", sid, exc_info=True)
            return
        self.resumes[sid] = sum(1 for e in events if e.get("kind") == "resumed")

    async def _stream(self, sid: str, session: Any, first_request: float, period: float, t_end: float) -> None:
        """Chunks back to back at playback cadence until the next trace event."""
        t_req = first_request
        while t_req < t_end:
            if t_req > time.time():
                await asyncio.sleep(t_req - time.time())
            chunk = await session.asubmit()
            # A chunk made ahead (engine.prearm-chunks) was ready before it was asked for:
            # latency 0, as the simulator counts it.
            self.rows.append((sid, chunk.index, t_req, chunk.t_start_s, chunk.t_done_s,
                              max(chunk.t_done_s - t_req, 0.0), chunk.worker, chunk.batch_size, chunk.migrated))
            t_req = max(t_req + period, time.time())


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
