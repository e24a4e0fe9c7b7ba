"""The chaos suite's background load: sessions replayed from a trace on the same cluster while the faults hit it.

:class:`TraceLoad` generates a trace with the project's generator
(:func:`traces.generator.generate`: one client of ``tiny`` sessions that open, stream at
playback cadence, go idle, come back and close; seeded) and plays it against the suite's
server on the client's event loop, as :mod:`experiments.live_replay` plays a trace,
keeping every chunk each session received and the error that ended it, if any.
:meth:`TraceLoad.stop` ends the replay (sessions still open are closed) and returns the
:class:`LoadSession` records; the suite scores them like its own sessions (lost, chunks
lost or repeated, frames against the uninterrupted run). A ``pause()`` that raises (its
worker died under it) is recorded and the session goes on, as a client would; an
error from ``open``, ``submit`` or ``close`` ends it (it is lost).

Example
-------
>>> load = TraceLoad(server, seed=0)        # doctest: +SKIP
>>> load.start(); ...; sessions = load.stop(timeout_s=240)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import pandas as pd

from experiments.replay_common import trace_sessions

#: Sessions per second of the load's one client; with a 60 s mean lifetime, about 5 open at a time.
DEFAULT_RATE = 0.08


def load_trace(seed: int = 0, rate: float = DEFAULT_RATE, duration_s: float = 3600.0) -> pd.DataFrame:
    """The load's trace: ``tiny`` sessions at 64x64, a chunk of 12 frames every 1.5 s while active.

    Lifetimes lognormal (mean 60 s), active spells gamma (mean 20 s), idle spells
    lognormal (mean 8 s); a 120 s warm-up so sessions are open from the first second.
    """
    from traces.distributions import Dist
    from traces.generator import generate
    from traces.spec import ClientSpec, Variant, WorkloadSpec

    client = ClientSpec("load", rate=rate, lifetime=Dist("lognormal", 60.0, 1.0), active=Dist("gamma", 20.0, 1.0),
                        idle=Dist("lognormal", 8.0, 1.0), mix=(Variant(model="tiny", fps=8),))
    return generate(WorkloadSpec(clients=(client,), duration_s=duration_s, warmup_s=120.0, seed=seed))


@dataclasses.dataclass
class LoadSession:
    """One replayed session: what its client received."""

    trace_id: str
    seed: int
    prompt: str
    chunks: list[Any] = dataclasses.field(default_factory=list)
    waits: list[float] = dataclasses.field(default_factory=list)  # seconds each chunk took to come
    error: BaseException | None = None  # what ended it: it is lost
    refused: list[str] = dataclasses.field(default_factory=list)  # pause calls that raised; it went on
    done: bool = False  # its replay ended (closed, stopped or failed); False after stop(): it hung
    doing: str = ""  # the call it is in (what it waits on, if it hung)
    session: Any = None  # its Session handle, once open


class TraceLoad:
    """Plays :func:`load_trace` against ``server`` in the background (see the module docstring).

    Parameters
    ----------
    server
        A :class:`framework.Server`.
    seed
        Seed of the trace; session ``k`` of the trace gets model seed ``1000 + seed + k``.
    rate
        Sessions per second (:data:`DEFAULT_RATE`).
    """

    def __init__(self, server: Any, *, seed: int = 0, rate: float = DEFAULT_RATE) -> None:
        self.server, self.seed = server, seed
        self.specs = trace_sessions(load_trace(seed, rate))
        self.sessions: list[LoadSession] = []
        self._stop = False
        self._t0 = 0.0
        self._thread = threading.Thread(target=lambda: server.client.sync(self._run), daemon=True,
                                        name="turboserve-chaos-load")

    def start(self) -> None:
        self._t0 = time.time()
        self._thread.start()

    def stop(self, timeout_s: float) -> list[LoadSession]:
        """End the replay (open sessions are closed), waiting at most ``timeout_s``; every session's record."""
        self._stop = True
        self._thread.join(timeout_s)
        return list(self.sessions)

    async def _run(self) -> None:
        await asyncio.gather(*(self._session(k, sid, spec) for k, (sid, spec) in enumerate(self.specs.items())))

    async def _until(self, trace_s: float) -> bool:
        """Sleep until trace time ``trace_s``; False when the load was stopped first."""
        while not self._stop and (left := self._t0 + trace_s - time.time()) > 0:
            await asyncio.sleep(min(left, 0.25))
        return not self._stop

    async def _session(self, k: int, sid: str, spec: dict[str, Any]) -> None:
        events = spec["events"]
        session, rec = None, None
        try:
            for i, (t, kind) in enumerate(events):
                if not await self._until(t):
                    break
                t_next = events[i + 1][0] if i + 1 < len(events) else float("inf")
                if kind == "open":
                    rec = LoadSession(sid, 1000 + self.seed + k, f"replayed session {sid}", doing="open")
                    self.sessions.append(rec)
                    session = rec.session = await self.server.aopen_session(rec.prompt, seed=rec.seed, model=spec["model"],
                                                              height=spec["height"], width=spec["width"])
                    await self._stream(rec, session, spec["period"], t_next)
                elif kind == "active" and session is not None:
                    await self._stream(rec, session, spec["period"], t_next)
                elif kind == "idle" and session is not None:
                    rec.doing = "pause"
                    try:
                        await session.apause()
                    except Exception as exc:  # noqa: BLE001 - counted; the session is asked for chunks again next
                        rec.refused.append(f"pause: {exc!r}"[:200])
                elif kind == "close" and session is not None:
                    session, closing = None, session
                    rec.doing = "close"
                    await closing.aclose()
        except Exception as exc:  # noqa: BLE001 - what the client saw is the measurement
            if rec is not None:
                rec.error = exc
        finally:
            if session is not None:
                rec.doing = "close at the stop"
                try:
                    await session.aclose()
                except Exception as exc:  # noqa: BLE001
                    if rec is not None and rec.error is None:
                        rec.error = exc
            if rec is not None:
                rec.done = True

    async def _stream(self, rec: LoadSession, session: Any, period_s: float, t_next: float) -> None:
        """Ask for chunks at playback cadence until the trace's next event (or the stop)."""
        t_req = time.time()
        while not self._stop and t_req < self._t0 + t_next:
            if not await self._until(t_req - self._t0):
                break
            t_asked = time.time()
            rec.doing = f"submit (chunk {len(rec.chunks)})"
            rec.chunks.append(await session.asubmit())
            rec.waits.append(time.time() - t_asked)
            t_req = max(t_req + period_s, time.time())
