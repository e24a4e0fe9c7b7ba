"""The discrete-event simulator: a trace replayed through the shared policies, in virtual time.

Events sit in a heap of ``(time, kind, seq, payload)``; ``kind`` doubles as the priority
of events at the same instant (trace events first, then finished copies, finished steps,
workers becoming ready, the control tick, and last the wake-ups of idle workers) and
``seq`` keeps insertion order, so the same trace and policies always give the same event
log. Nothing sleeps and nothing reads a clock except the optional timing of the policies.

Speed (1024 GPUs, 10k open sessions): the control tick does not rebuild the snapshot.
Each session keeps its frozen view and gets a new one only when something a policy sees
changed (it is queued in ``_dirty``); worker views are rebuilt only when a worker
starts, changes status or leaves; the status counts of the interval table are kept as
statuses change. The automatic cyclic garbage collector is off during :meth:`Simulator.run`
(its full passes over millions of live objects cost about a third of the run; the young
generation is still collected every ``_GC_EVERY_TICKS`` ticks) and restored afterwards.
None of this changes the event log (``tests/test_sim_regression.py`` pins it).

Model of the mechanisms (each choice is the simplest that keeps the contract):

* An active session requests chunk ``i+1`` at ``max(t_request_i + period, t_done_i)``:
  back to back at playback cadence, but never two chunks in flight (a chunk needs the
  state the previous one left). The first request is at the activation time, so the wait
  for a placement (and for a worker to start) is part of the first chunk's latency.
* A worker that is free and has due requests runs one coalesced step for up to
  ``max_batch`` of them (oldest request first), taking ``latency.predict(batch, ctx)``.
* Policies run on the control tick only (every ``interval_s``, the first at time 0, after
  the trace events of that instant): a new session waits at most one tick for a placement.
  The three policies decide together through :class:`policies.combined.Combined`
  (placement, then offload, then autoscaling on one capacity ledger), as live.
* ``Migrate`` copies ``state_bytes`` at ``migrate_bytes_per_s`` starting at once, or when
  the session's chunk in flight finishes; both workers hold the memory meanwhile and the
  session's next chunk cannot start before the copy ends (that delay is in its latency,
  and the chunk is flagged ``migrated``).
* ``Offload`` suspends an idle session: it leaves the worker's session list at once, its
  device memory is freed when the copy (``offload_bytes_per_s``) ends. ``Place`` of a
  suspended-then-active session, or ``Resume``, copies it back at the same bandwidth.
* ``ScaleTo(n)`` starts workers (usable after ``worker_startup_s``, paid from the
  request) or, when lowering the target, cancels starting workers and then releases empty
  ones, newest first; workers that hold sessions leave only through ``Retire`` (drain).
  Draining workers still hold their GPUs: at most ``max_workers`` exist at any time.
* Impossible actions are refused, logged with the reason, and counted.
* A request still waiting when its session goes idle or closes never becomes a chunk
  row; it is counted as abandoned, with the longest such wait, so that a policy cannot
  look good on chunk latency by never serving some sessions.
"""

from __future__ import annotations

import gc
import heapq
import logging
import math
import time as _time
from array import array
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from experiments.sim.config import PolicySet, SimConfig
from experiments.sim.models import model_cost
from experiments.sim.workload import Workload
from policies.combined import Combined
from policies.types import (
    Action,
    BatchLatencyModel,
    Migrate,
    Offload,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

logger = logging.getLogger(__name__)

# event kinds, in priority order at equal times
_TRACE, _COPY, _RELEASE, _STEP, _READY, _TICK, _WAKE = range(7)
_INF = math.inf
_CONTEXT_WINDOW_FRAMES = 84  # 21 latent frames x 4: Self-Forcing's rolling KV window
# The automatic cyclic GC is off during a run: with millions of live objects its full
# passes cost a third of the wall time, and the loop makes no reference cycles. Young
# cyclic garbage (from policies, say) is still collected every this many ticks.
_GC_EVERY_TICKS = 600

PENDING, ACTIVE, IDLE = SessionStatus.PENDING, SessionStatus.ACTIVE, SessionStatus.IDLE
SUSPENDED, MIGRATING, CLOSED = SessionStatus.SUSPENDED, SessionStatus.MIGRATING, SessionStatus.CLOSED
STARTING, RUNNING, DRAINING = WorkerStatus.STARTING, WorkerStatus.RUNNING, WorkerStatus.DRAINING


class _Session:
    __slots__ = (
        "idx", "sid", "status", "worker", "target", "nbytes", "period", "frames", "since",
        "next_index", "next_req", "in_flight", "copy_until", "migrated_next", "wants", "ctx",
        "recent", "on_host", "host_ready", "view", "dirty", "opened",
    )

    def __init__(self, idx: int, sid: str, nbytes: int, period: float, frames: int) -> None:
        self.idx, self.sid, self.nbytes, self.period, self.frames = idx, sid, nbytes, period, frames
        self.status = PENDING
        self.worker: _Worker | None = None
        self.target: _Worker | None = None
        self.since = 0.0
        self.next_index = 0
        self.next_req = 0.0
        self.in_flight = False
        self.copy_until = 0.0
        self.migrated_next = False
        self.wants = False
        self.ctx = 0.0
        self.recent: float | None = None
        self.on_host = False
        self.host_ready = 0.0
        self.view: SessionView | None = None
        self.dirty = False  # queued in Simulator._dirty for a new view
        self.opened = False


class _Worker:
    __slots__ = (
        "idx", "address", "status", "started", "memory", "max_batch", "used", "sessions",
        "active", "busy", "step_end", "wake_at", "released", "view",
    )

    def __init__(self, idx: int, started: float, status: WorkerStatus, memory: int, max_batch: int) -> None:
        self.idx, self.address, self.status, self.started = idx, f"sim-w{idx}", status, started
        self.memory, self.max_batch = memory, max_batch
        self.used = 0
        self.sessions: dict[int, _Session] = {}
        self.active: dict[int, _Session] = {}
        self.busy = False
        self.step_end = 0.0
        self.wake_at: float | None = None
        self.released: float | None = None
        self.view: WorkerView | None = None


@dataclass(slots=True)
class SimResult:
    """What one simulated run produced.

    Attributes
    ----------
    chunks
        One row per chunk, the contract columns (empty when ``record_chunks=False``).
    intervals
        One row per control interval, the contract columns; ``cost_gpu_s`` sums to the
        total GPU-seconds.
    latency_s, slo_s, chunk_index
        Per-chunk latency, target and index (kept even when chunk rows are not).
    decisions
        The decision log: ``time_s, action, session_id, worker, accepted, reason``.
    counters
        Migrations, offloads, resumes, rejections, bytes moved, refusals by reason,
        policy decision time.
    gpu_seconds
        Sum of worker lifetimes (start request to release, or the end of the run).
    workers
        One row per worker: ``worker, started_s, released_s`` (the end of the run if never
        released).
    """

    chunks: pd.DataFrame
    intervals: pd.DataFrame
    latency_s: np.ndarray
    slo_s: np.ndarray
    chunk_index: np.ndarray
    decisions: pd.DataFrame
    counters: dict[str, Any]
    gpu_seconds: float
    end_s: float
    config: SimConfig
    policy: str
    session_slo_s: dict[str, float] = field(default_factory=dict)
    workers: pd.DataFrame = field(default_factory=pd.DataFrame)


class Simulator:
    """Replay a :class:`~experiments.sim.workload.Workload` through a :class:`PolicySet`.

    Parameters
    ----------
    workload
        The prepared trace (:func:`experiments.sim.workload.prepare`).
    policies
        Placement, autoscaling and offload policies (the same objects the live control
        loop uses).
    config
        Cluster knobs; :meth:`SimConfig.from_config` reads the dask config.
    latency
        Step-time model; default: the profile of the trace's model preset.

    Examples
    --------
    >>> sim = Simulator(workload, PolicySet.of("least-loaded", "fixed", "never"), SimConfig())
    >>> result = sim.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        workload: Workload,
        policies: PolicySet,
        config: SimConfig,
        latency: BatchLatencyModel | None = None,
    ) -> None:
        from experiments.sim.latency import load_profile

        self.wl = workload
        self.cfg = config
        self.policy_set = policies
        self.cost_model = model_cost(workload.model)
        self.latency = latency if latency is not None else load_profile(self.cost_model.profile)
        self.worker_memory = int(config.gpu_memory_bytes - self.cost_model.weights_bytes)
        if self.worker_memory <= 0:
            raise ValueError(
                f"gpu_memory_bytes={config.gpu_memory_bytes:.3g} does not fit the weights of "
                f"{workload.model!r} ({self.cost_model.weights_bytes:.3g} bytes); raise it"
            )
        self.sessions = [
            _Session(
                i,
                sid,
                self.cost_model.state_bytes(workload.height[i], workload.width[i]),
                float(workload.period_s[i]),
                int(workload.chunk_frames[i]),
            )
            for i, sid in enumerate(workload.session_ids)
        ]
        self.by_sid = {s.sid: s for s in self.sessions}
        self._activations: dict[int, np.ndarray] = {}
        if config.oracle_hints:
            order = np.argsort(workload.session_index, kind="stable")
            idx, times, codes = workload.session_index[order], workload.times[order], workload.event_code[order]
            bounds = np.searchsorted(idx, np.arange(len(self.sessions) + 1))
            for i in range(len(self.sessions)):
                sl = slice(bounds[i], bounds[i + 1])
                self._activations[i] = times[sl][codes[sl] <= 1]
        self.slo_of = [config.slo_s if config.slo_s is not None else s.period for s in self.sessions]
        periods = workload.period_s
        self.snapshot_slo = config.slo_s if config.slo_s is not None else (
            float(np.median(periods)) if len(periods) else 1.0
        )
        self.workers: list[_Worker] = []
        self.alive: dict[int, _Worker] = {}  # the unreleased workers, in creation order
        self.by_addr: dict[str, _Worker] = {}
        self.open: dict[int, _Session] = {}
        # The policies' view of the open sessions, in ``open`` order; only the sessions
        # queued in ``_dirty`` get a new view at the next snapshot.
        self._views: dict[int, SessionView | None] = {}
        self._dirty: list[_Session] = []
        self._counts: dict[SessionStatus, int] = dict.fromkeys(SessionStatus, 0)  # of open sessions
        self._status_counts: dict[SessionStatus, int] = dict(self._counts)  # as of the last snapshot
        self._wviews: tuple[WorkerView, ...] | None = None  # None: a worker changed
        self.heap: list[tuple] = []
        self.seq = 0
        self._step_cache: dict[int, float] = {}
        self._ctx_slope = self.latency.context_slope_s
        self._step1 = self._step_time(1, 0.0)
        # chunk columns: typed arrays of machine numbers (cheap appends, 8 bytes a value
        # where a list of Python numbers costs 32-36: a day at 1024 GPUs is ~10^8 chunks),
        # converted once at the end
        self.c_sess = array("q")
        self.c_index = array("q")
        self.c_req = array("d")
        self.c_start = array("d")
        self.c_done = array("d")
        self.c_worker = array("q")
        self.c_batch = array("q")
        self.c_mig = array("B")
        self.lat = array("d")
        self.decisions: list[tuple] = []
        self.refused: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.intervals: list[tuple] = []
        self.n_alive = 0
        self.cost = 0.0
        self.cost_t = 0.0
        self.decide_s = 0.0
        self._deferred: dict[int, _Worker] | None = None
        self.max_abandoned_wait = 0.0

    # ------------------------------------------------------------ plumbing

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, payload))

    def _advance_cost(self, now: float) -> None:
        self.cost += self.n_alive * (now - self.cost_t)
        self.cost_t = now

    def _new_worker(self, now: float, status: WorkerStatus) -> _Worker:
        self._advance_cost(now)
        w = _Worker(len(self.workers), now, status, self.worker_memory, self.cfg.max_batch)
        self.workers.append(w)
        self.alive[w.idx] = w
        self.by_addr[w.address] = w
        self._wviews = None
        self.n_alive += 1
        if status is STARTING:
            self._push(now + self.cfg.worker_startup_s, _READY, w)
        return w

    def _release(self, w: _Worker, now: float) -> None:
        self._advance_cost(now)
        w.released = now
        del self.alive[w.idx]
        self._wviews = None
        self.n_alive -= 1
        del self.by_addr[w.address]

    def _maybe_release(self, w: _Worker, now: float) -> None:
        if w.status is DRAINING and w.released is None and not w.sessions and w.used == 0 and not w.busy:
            self._release(w, now)

    def _set_status(self, s: _Session, status: SessionStatus, now: float) -> None:
        if s.opened:  # counts of the open sessions: a closing one leaves them
            counts = self._counts
            counts[s.status] -= 1
            if status is not CLOSED:
                counts[status] += 1
        s.status = status
        s.since = now
        if not s.dirty:
            s.dirty = True
            self._dirty.append(s)

    def _step_time(self, n: int, ctx: float) -> float:
        if ctx:
            return self.latency.predict(n, ctx)
        t = self._step_cache.get(n)
        if t is None:
            t = self._step_cache[n] = self.latency.predict(n, 0.0)
        return t

    # ------------------------------------------------------------ workers

    def _kick(self, w: _Worker, now: float) -> None:
        """Start a step on ``w`` if it is free and has due requests, else schedule a wake-up."""
        if w.busy or w.status is STARTING or w.released is not None:
            return
        if self._deferred is not None:  # inside a tick: start steps once all actions are in
            self._deferred[w.idx] = w
            return
        active = w.active
        if len(active) == 1:  # the common case at small batch caps: same result, less work
            for s in active.values():
                if s.in_flight:
                    return
                r = s.next_req if s.next_req >= s.copy_until else s.copy_until
                if r <= now:
                    end = now + (self._step_time(1, s.ctx) if self._ctx_slope else self._step1)
                    batch = [(s, s.next_req, s.migrated_next)]
                    s.in_flight = True
                    s.migrated_next = False
                    w.busy = True
                    w.step_end = end
                    self.seq += 1
                    heapq.heappush(self.heap, (end, _STEP, self.seq, (w, batch, now)))
                elif w.wake_at is None or r < w.wake_at:
                    w.wake_at = r
                    self.seq += 1
                    heapq.heappush(self.heap, (r, _WAKE, self.seq, w))
            return
        due = []
        earliest = _INF
        for s in w.active.values():
            if s.in_flight:
                continue
            r = s.next_req if s.next_req >= s.copy_until else s.copy_until
            if r <= now:
                due.append(s)
            elif r < earliest:
                earliest = r
        if due:
            if len(due) > w.max_batch:
                due.sort(key=lambda s: (s.next_req, s.idx))
                due = due[: w.max_batch]
            n = len(due)
            ctx = sum(s.ctx for s in due) / n if self._ctx_slope else 0.0
            end = now + self._step_time(n, ctx)
            batch = []
            for s in due:
                batch.append((s, s.next_req, s.migrated_next))
                s.in_flight = True
                s.migrated_next = False
            w.busy = True
            w.step_end = end
            self.seq += 1
            heapq.heappush(self.heap, (end, _STEP, self.seq, (w, batch, now)))
        elif earliest < _INF and (w.wake_at is None or earliest < w.wake_at):
            w.wake_at = earliest
            self.seq += 1
            heapq.heappush(self.heap, (earliest, _WAKE, self.seq, w))

    def _step_done(self, now: float, w: _Worker, batch: list, started: float) -> None:
        w.busy = False
        n = len(batch)
        record = self.cfg.record_chunks
        c_sess, c_index, lat_list = self.c_sess.append, self.c_index.append, self.lat.append
        dirty = self._dirty.append
        for s, treq, mig in batch:
            c_sess(s.idx)
            c_index(s.next_index)
            if record:
                self.c_req.append(treq)
                self.c_start.append(started)
                self.c_done.append(now)
                self.c_worker.append(w.idx)
                self.c_batch.append(n)
                self.c_mig.append(mig)
            lat = now - treq
            lat_list(lat)
            s.in_flight = False
            s.next_index += 1
            # views are rebuilt only when something a policy sees changed
            if s.recent != lat:
                s.recent = lat
                if not s.dirty:
                    s.dirty = True
                    dirty(s)
            if s.ctx < _CONTEXT_WINDOW_FRAMES:
                s.ctx = min(s.ctx + s.frames, _CONTEXT_WINDOW_FRAMES)
                if not s.dirty:
                    s.dirty = True
                    dirty(s)
            if s.wants:
                nxt = treq + s.period
                s.next_req = nxt if nxt > now else now
        if w.status is DRAINING:
            self._maybe_release(w, now)
        self._kick(w, now)

    # ------------------------------------------------------------ trace events

    def _trace_event(self, now: float, i: int, code: int) -> None:
        s = self.sessions[i]
        if code <= 1:  # open / active
            if s.status is CLOSED:
                return
            if code == 0 and not s.opened:
                s.opened = True
                self.open[i] = s
                self._views[i] = None
                self._counts[s.status] += 1
                self._set_status(s, PENDING, now)
            s.wants = True
            if not s.in_flight:
                s.next_req = now
            if s.status is IDLE:
                self._set_status(s, ACTIVE, now)
                s.worker.active[i] = s
                self._kick(s.worker, now)
            elif s.status is SUSPENDED:
                self._set_status(s, PENDING, now)
        elif code == 2:  # idle
            self._abandon(s, now)
            s.wants = False
            if s.status is ACTIVE:
                self._set_status(s, IDLE, now)
                s.worker.active.pop(i, None)
            elif s.status is PENDING and s.on_host:
                self._set_status(s, SUSPENDED, now)
        else:
            self._close(s, now)

    def _abandon(self, s: _Session, now: float) -> None:
        """Count a chunk request the user stops waiting for (idle or close before it started)."""
        if s.wants and not s.in_flight and s.status is not CLOSED and now > s.next_req:
            self.counters["abandoned_requests"] += 1
            wait = now - s.next_req
            if wait > self.max_abandoned_wait:
                self.max_abandoned_wait = wait

    def _close(self, s: _Session, now: float) -> None:
        if s.status is CLOSED:
            return
        self._abandon(s, now)
        s.wants = False
        w = s.worker
        if w is not None:
            w.sessions.pop(s.idx, None)
            w.active.pop(s.idx, None)
            w.used -= s.nbytes
        if s.status is MIGRATING and s.target is not None:
            s.target.used -= s.nbytes
        t = s.target
        s.worker = s.target = None
        self._set_status(s, CLOSED, now)
        self.open.pop(s.idx, None)
        self._views.pop(s.idx, None)
        for x in (w, t):
            if x is not None:
                self._maybe_release(x, now)

    # ------------------------------------------------------------ copies

    def _copy_done(self, now: float, s: _Session, target: _Worker) -> None:
        if s.status is not MIGRATING or s.target is not target:
            return
        src = s.worker
        src.sessions.pop(s.idx, None)
        src.used -= s.nbytes
        s.worker, s.target = target, None
        target.sessions[s.idx] = s
        s.migrated_next = True
        if s.wants:
            self._set_status(s, ACTIVE, now)
            target.active[s.idx] = s
        else:
            self._set_status(s, IDLE, now)
        self._maybe_release(src, now)
        self._kick(target, now)

    # ------------------------------------------------------------ actions

    def _refuse(self, now: float, action: Action, sid: str, worker: str, reason: str, category: str) -> None:
        self.refused[category] += 1
        self.decisions.append((now, type(action).__name__, sid, worker, False, reason))
        logger.debug("t=%.3f refused %r: %s", now, action, reason)

    def _accept(self, now: float, action: Action, sid: str, worker: str) -> None:
        self.decisions.append((now, type(action).__name__, sid, worker, True, action.cause))

    def _apply(self, action: Action, now: float) -> None:
        if isinstance(action, Place):
            self._place(action, now, action.session_id, action.worker, resume=False)
        elif isinstance(action, Resume):
            self._place(action, now, action.session_id, action.worker, resume=True)
        elif isinstance(action, Migrate):
            self._migrate(action, now)
        elif isinstance(action, Offload):
            self._offload(action, now)
        elif isinstance(action, ScaleTo):
            self._scale_to(action, now)
        elif isinstance(action, Retire):
            self._retire(action, now)
        elif isinstance(action, Reject):
            s = self.by_sid.get(action.session_id)
            if s is None or s.status is not PENDING:
                status = "unknown" if s is None else s.status.value
                self._refuse(now, action, action.session_id, "", f"session is {status}, not pending", "reject-not-pending")
                return
            self.counters["rejected"] += 1
            self._accept(now, action, s.sid, "")
            self._close(s, now)
        else:
            self._refuse(now, action, "", "", f"unknown action type {type(action).__name__}", "unknown-action")

    def _usable_worker(self, now: float, action: Action, sid: str, address: str, allow_draining: bool = False) -> _Worker | None:
        w = self.by_addr.get(address)
        if w is None:
            self._refuse(now, action, sid, address, f"worker {address!r} does not exist", "no-such-worker")
            return None
        if w.status is not RUNNING and not (allow_draining and w.status is DRAINING):
            self._refuse(now, action, sid, address, f"worker {address!r} is {w.status.value}", f"worker-{w.status.value}")
            return None
        return w

    def _place(self, action: Action, now: float, sid: str, address: str, *, resume: bool) -> None:
        s = self.by_sid.get(sid)
        allowed = (PENDING, SUSPENDED) if resume else (PENDING,)
        if s is None or s.status not in allowed or not s.opened:
            status = "unknown" if s is None else s.status.value
            self._refuse(now, action, sid, address, f"session {sid!r} is {status}", "session-not-placeable")
            return
        if resume and not s.on_host:
            self._refuse(now, action, sid, address, f"session {sid!r} has no offloaded state", "session-not-placeable")
            return
        w = self._usable_worker(now, action, sid, address)
        if w is None:
            return
        if w.used + s.nbytes > w.memory:
            self._refuse(
                now, action, sid, address,
                f"worker {address!r} has {w.memory - w.used} bytes free, session needs {s.nbytes}", "no-memory",
            )
            return
        if s.on_host:
            start = max(now, s.host_ready)
            s.copy_until = start + s.nbytes / self.cfg.offload_bytes_per_s
            s.on_host = False
            self.counters["resumes"] += 1
            self.counters["bytes_moved"] += s.nbytes
        else:
            s.copy_until = now
        w.sessions[s.idx] = s
        w.used += s.nbytes
        s.worker = w
        self._accept(now, action, sid, address)
        if s.wants:
            self._set_status(s, ACTIVE, now)
            w.active[s.idx] = s
            self._kick(w, now)
        else:
            self._set_status(s, IDLE, now)

    def _migrate(self, action: Migrate, now: float) -> None:
        sid = action.session_id
        s = self.by_sid.get(sid)
        if s is None or s.status not in (ACTIVE, IDLE) or s.worker is None or s.worker.address != action.source:
            where = None if s is None or s.worker is None else s.worker.address
            status = "unknown" if s is None else s.status.value
            self._refuse(now, action, sid, action.target, f"session {sid!r} is {status} on {where}, not on {action.source!r}", "migrate-bad-source")
            return
        if s.copy_until > now:
            self._refuse(now, action, sid, action.target, f"session {sid!r} is still being copied", "copy-in-progress")
            return
        if action.target == action.source:
            self._refuse(now, action, sid, action.target, "source and target are the same worker", "migrate-same-worker")
            return
        t = self._usable_worker(now, action, sid, action.target)
        if t is None:
            return
        if t.used + s.nbytes > t.memory:
            self._refuse(now, action, sid, action.target, f"worker {action.target!r} has {t.memory - t.used} bytes free, session needs {s.nbytes}", "no-memory")
            return
        start = s.worker.step_end if s.in_flight else now
        s.copy_until = start + s.nbytes / self.cfg.migrate_bytes_per_s
        s.worker.active.pop(s.idx, None)
        t.used += s.nbytes
        s.target = t
        self._set_status(s, MIGRATING, now)
        self.counters["migrations"] += 1
        self.counters["bytes_moved"] += s.nbytes
        self._accept(now, action, sid, action.target)
        self._push(s.copy_until, _COPY, (s, t))

    def _offload(self, action: Offload, now: float) -> None:
        sid = action.session_id
        s = self.by_sid.get(sid)
        if s is None or s.status is not IDLE or s.in_flight or s.copy_until > now:
            status = "unknown" if s is None else s.status.value
            why = "a chunk or a copy is in flight" if s is not None and s.status is IDLE else f"it is {status}, not idle"
            self._refuse(now, action, sid, "", f"cannot offload session {sid!r}: {why}", "offload-not-idle")
            return
        w = s.worker
        w.sessions.pop(s.idx, None)
        s.worker = None
        s.on_host = True
        s.host_ready = now + s.nbytes / self.cfg.offload_bytes_per_s
        self._set_status(s, SUSPENDED, now)
        self.counters["offloads"] += 1
        self.counters["bytes_moved"] += s.nbytes
        self._accept(now, action, sid, w.address)
        self._push(s.host_ready, _RELEASE, (w, s.nbytes))

    def _scale_to(self, action: ScaleTo, now: float) -> None:
        n = action.n
        clipped = min(max(n, self.cfg.min_workers), self.cfg.max_workers)
        if clipped != n:
            self._refuse(now, action, "", "", f"target {n} outside [{self.cfg.min_workers}, {self.cfg.max_workers}]; clipped to {clipped}", "scale-out-of-bounds")
            n = clipped
        live = [w for w in self.alive.values() if w.status is not DRAINING]
        if n > len(live):
            # Draining workers still occupy their GPUs: the cluster never holds more than
            # max_workers in all; the rest of the scale-up waits for them to leave.
            room = self.cfg.max_workers - self.n_alive
            start = min(n - len(live), room)
            for _ in range(start):
                self._new_worker(now, STARTING)
            if start < n - len(live):
                self._refuse(now, action, "", str(n), f"only {max(room, 0)} of {n - len(live)} new workers fit: "
                             f"{self.n_alive - len(live)} draining workers still hold GPUs", "cluster-full")
            else:
                self._accept(now, action, "", str(n))
            return
        excess = len(live) - n
        if excess == 0:
            return
        for w in sorted(live, key=lambda w: (w.status is RUNNING, -w.idx)):
            if excess == 0:
                break
            if w.status is STARTING or (not w.sessions and w.used == 0 and not w.busy):
                w.status = DRAINING
                self._wviews = None
                self._release(w, now)
                excess -= 1
        if excess:
            self._refuse(now, action, "", str(n), f"{excess} workers above the target still hold sessions; send Retire to drain them", "scale-down-busy")
        else:
            self._accept(now, action, "", str(n))

    def _retire(self, action: Retire, now: float) -> None:
        w = self.by_addr.get(action.worker)
        if w is None or w.status is DRAINING:
            why = "does not exist" if w is None else "is already draining"
            self._refuse(now, action, "", action.worker, f"worker {action.worker!r} {why}", "retire-bad-worker")
            return
        live = sum(1 for x in self.alive.values() if x.status is not DRAINING)
        if live - 1 < self.cfg.min_workers:
            self._refuse(now, action, "", action.worker, f"retiring would go below min_workers={self.cfg.min_workers}", "retire-below-minimum")
            return
        self._accept(now, action, "", action.worker)
        self._wviews = None
        if w.status is STARTING:  # holds nothing yet: cancel it
            w.status = DRAINING
            self._release(w, now)
            return
        w.status = DRAINING
        self._maybe_release(w, now)

    # ------------------------------------------------------------ control tick

    def snapshot(self, now: float) -> Snapshot:
        """The immutable view the policies see at ``now``.

        Views are cached: a session's view is rebuilt only when something a policy sees
        changed (it was queued in ``_dirty``), and the worker views only when a worker
        started, changed status or left. The result equals a full rebuild.
        """
        wviews = self._wviews
        if wviews is None:
            built = []
            for w in self.alive.values():
                v = w.view
                if v is None or v.status is not w.status:
                    v = w.view = WorkerView(w.address, w.status, w.memory, w.max_batch, w.started)
                built.append(v)
            wviews = self._wviews = tuple(built)
        views = self._views
        model = self.wl.model
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.dirty = False
            if s.idx in views:
                views[s.idx] = s.view = self._session_view(s, model, None)
        if self.cfg.oracle_hints:  # a suspended session's next activation moves with ``now``
            for s in self.open.values():
                if s.status is SUSPENDED:
                    acts = self._activations[s.idx]
                    k = bisect_right(acts, now)
                    views[s.idx] = s.view = self._session_view(s, model, float(acts[k]) if k < len(acts) else None)
        self._status_counts = dict(self._counts)
        return Snapshot(
            now_s=now,
            workers=wviews,
            sessions=tuple(views.values()),  # type: ignore[arg-type]  (every open session has a view by now)
            slo_s=self.snapshot_slo,
            latency=self.latency,
            migrate_bytes_per_s=self.cfg.migrate_bytes_per_s,
            offload_bytes_per_s=self.cfg.offload_bytes_per_s,
            min_workers=self.cfg.min_workers,
            max_workers=self.cfg.max_workers,
            worker_startup_s=self.cfg.worker_startup_s,
        )

    @staticmethod
    def _session_view(s: _Session, model: str, next_active: float | None) -> SessionView:
        # policy contract: a MIGRATING session names its target; a new pending one (no
        # state yet) has state_bytes 0
        where = s.target if s.status is MIGRATING else s.worker
        nbytes = 0 if s.status is PENDING and not s.on_host else s.nbytes
        return SessionView(
            s.sid, s.status, where.address if where is not None else None, nbytes, model,
            s.since, s.period, s.ctx, s.recent, next_active,
        )

    def _tick(self, now: float, policy: Combined, state: list) -> None:
        snap = self.snapshot(now)
        self._record_interval(now, snap)
        t0 = _time.perf_counter()
        self._deferred = {}
        actions, state[0] = policy.decide(snap, state[0])
        self.decide_s += _time.perf_counter() - t0
        # ScaleTo last: the Retire actions that come with a scale-in are applied first, so
        # the target then only starts workers or releases what the Retires did not cover.
        for action in actions:
            if not isinstance(action, ScaleTo):
                self._apply(action, now)
        for action in actions:
            if isinstance(action, ScaleTo):
                self._apply(action, now)
        deferred, self._deferred = self._deferred, None
        for w in deferred.values():
            self._kick(w, now)

    def _record_interval(self, now: float, snap: Snapshot) -> None:
        self._advance_cost(now)
        counts = self._status_counts  # counted while the snapshot was built
        prev_cost = self._cost_recorded
        prev_mig = self._mig_recorded
        self.intervals.append(
            (now, self.n_alive, counts[ACTIVE], counts[IDLE], counts[SUSPENDED],
             self.counters["migrations"] - prev_mig, self.cost - prev_cost)
        )
        self._cost_recorded = self.cost
        self._mig_recorded = self.counters["migrations"]

    # ------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        """Replay the whole trace and return the :class:`SimResult`."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self) -> SimResult:
        cfg, wl = self.cfg, self.wl
        end = cfg.end_s if cfg.end_s is not None else wl.end_s
        policy = Combined(*self.policy_set.build())
        state = [policy.initial_state()]
        self._cost_recorded = 0.0
        self._mig_recorded = 0
        for _ in range(cfg.initial_workers):
            self._new_worker(0.0, RUNNING)
        # plain lists: comparing numpy scalars in the hot loop costs more than the work
        times, sidx, codes = wl.times.tolist(), wl.session_index.tolist(), wl.event_code.tolist()
        times.append(_INF)  # sentinel: no bounds check per event
        ti = 0
        step_done, kick = self._step_done, self._kick
        k_tick = 0
        self._push(0.0, _TICK, None)
        heap = self.heap
        pop = heapq.heappop
        while True:
            t_trace = times[ti]
            if heap and heap[0][0] < t_trace:
                t, kind, _, payload = heap[0]
                if t > end:
                    break
                pop(heap)
                if kind == _STEP:
                    step_done(t, *payload)
                elif kind == _WAKE:
                    if payload.wake_at == t:
                        payload.wake_at = None
                    kick(payload, t)
                elif kind == _TICK:
                    self._tick(t, policy, state)
                    k_tick += 1
                    if k_tick % _GC_EVERY_TICKS == 0:
                        gc.collect(1)
                    nxt = k_tick * cfg.interval_s
                    if nxt <= end:
                        self._push(nxt, _TICK, None)
                elif kind == _COPY:
                    self._copy_done(t, *payload)
                elif kind == _RELEASE:
                    w, nbytes = payload
                    w.used -= nbytes
                    self._maybe_release(w, t)
                    self._kick(w, t)
                elif kind == _READY:
                    if payload.status is STARTING and payload.released is None:
                        payload.status = RUNNING
                        payload.view = None
                        self._wviews = None
                        self._kick(payload, t)
            elif t_trace <= end:
                self._trace_event(t_trace, sidx[ti], codes[ti])
                ti += 1
            else:
                break
        return self._finish(end)

    def _finish(self, end: float) -> SimResult:
        self._advance_cost(end)
        if not self.intervals or self.intervals[-1][0] < end:
            self._record_interval(end, self.snapshot(end))
        gpu_seconds = sum((w.released if w.released is not None else end) - w.started for w in self.workers)
        sids = np.asarray(self.wl.session_ids, dtype=object)
        sess = np.asarray(self.c_sess, dtype=np.int64)
        lat = np.asarray(self.lat, dtype=float)
        slo = np.asarray(self.slo_of, dtype=float)[sess] if len(sess) else np.zeros(0)
        if self.cfg.record_chunks:
            chunks = pd.DataFrame(
                {
                    "session_id": sids[sess] if len(sess) else np.array([], dtype=object),
                    "index": np.asarray(self.c_index, dtype=np.int64),
                    "t_request_s": np.asarray(self.c_req, dtype=float),
                    "t_start_s": np.asarray(self.c_start, dtype=float),
                    "t_done_s": np.asarray(self.c_done, dtype=float),
                    "latency_s": lat,
                    "worker": np.asarray([w.address for w in self.workers], dtype=object)[
                        np.asarray(self.c_worker, dtype=np.int64)
                    ],
                    "batch_size": np.asarray(self.c_batch, dtype=np.int64),
                    "migrated": np.asarray(self.c_mig, dtype=bool),
                }
            )
        else:
            from experiments.results import empty_chunks

            chunks = empty_chunks()
        intervals = pd.DataFrame(
            self.intervals,
            columns=["time_s", "n_workers", "n_active", "n_idle", "n_suspended", "migrations", "cost_gpu_s"],
        )
        decisions = pd.DataFrame(
            self.decisions, columns=["time_s", "action", "session_id", "worker", "accepted", "reason"]
        )
        counters: dict[str, Any] = dict(self.counters)
        counters["refused"] = int(sum(self.refused.values()))
        counters["refused_by_reason"] = dict(sorted(self.refused.items()))
        counters["decide_s"] = self.decide_s
        counters["ticks"] = len(self.intervals)
        counters["sessions"] = len(self.sessions)
        counters["never_served"] = int(sum(1 for s in self.sessions if s.opened and s.next_index == 0))
        counters["max_abandoned_wait_s"] = self.max_abandoned_wait
        return SimResult(
            chunks=chunks,
            intervals=intervals,
            latency_s=lat,
            slo_s=slo,
            chunk_index=np.asarray(self.c_index, dtype=np.int64),
            decisions=decisions,
            counters=counters,
            gpu_seconds=float(gpu_seconds),
            end_s=float(end),
            config=self.cfg,
            policy=self.policy_set.label,
            session_slo_s={s.sid: float(v) for s, v in zip(self.sessions, self.slo_of)},
            workers=pd.DataFrame(
                [(w.address, w.started, w.released if w.released is not None else end) for w in self.workers],
                columns=["worker", "started_s", "released_s"],
            ),
        )
