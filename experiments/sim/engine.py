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
  ``max_batch`` of them (oldest request first), taking ``latency.predict(batch, ctx)``;
  fewer when the full step would miss a deadline that a smaller one followed by the
  rest meets better (:func:`workers.batching.split_due`, the live engine's rule).
* Policies run on the control tick (every ``interval_s``, the first at time 0, after
  the trace events of that instant). The three policies decide together through
  :class:`policies.combined.Combined` (placement, then offload, then autoscaling on one
  capacity ledger), as live. With ``place_on_arrival`` (the default, as live admission:
  ``ControlLoop.choose``) a session that arrives or comes back from suspension is placed
  at that instant by the placement policy alone (its ``Place`` and the ``Offload`` s it
  needs, after the other events of the instant); otherwise it waits for the next tick.
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

Layout: this module holds :class:`Simulator`: the event loop (a handler per event kind),
the bookkeeping of workers and sessions (heap, cost, status changes), the sessions'
lifecycle (trace events: arrival, activity, idling, close; copies ending; admissions
between ticks) and the control tick. Its collaborators work on its state and are called,
not mixed in: :class:`~experiments.sim.steps.StepRunner` (the worker steps: forming,
timing and ending them, the quality valve, wake-ups),
:class:`~experiments.sim.actions.ActionApplier` (the action mechanisms),
:mod:`~experiments.sim.snapshot` (the cached policy view and the interval rows) and
:func:`~experiments.sim.result.assemble` (the :class:`SimResult`); the state records and
event kinds are in :mod:`~experiments.sim.state`.
"""

from __future__ import annotations

import functools
import gc
import heapq
import time as _time
from array import array
from collections import Counter
from typing import Any

import numpy as np

from experiments.sim.actions import ActionApplier
from experiments.sim.config import PolicySet, SimConfig
from experiments.sim.models import model_cost
from experiments.sim.result import SimResult, assemble
from experiments.sim.snapshot import build_snapshot, record_interval
from experiments.sim.steps import StepRunner
from experiments.sim.state import (
    _COPY,
    _GC_EVERY_TICKS,
    _INF,
    _N_KINDS,
    _READY,
    _RELEASE,
    _STEP,
    _TICK,
    _WAKE,
    _ADMIT,
    ACTIVE,
    CLOSED,
    DRAINING,
    IDLE,
    MIGRATING,
    PENDING,
    RUNNING,
    STARTING,
    SUSPENDED,
    _Session,
    _Worker,
)
from experiments.sim.workload import Workload
from policies.combined import Combined
from policies.semantics import apply_order
from policies.types import (
    BatchLatencyModel,
    BurstTally,
    Offload,
    Place,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)


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
        decision_latency: BatchLatencyModel | None = None,
    ) -> None:
        self.wl = workload
        # Its workers serve the trace's one model (a mixed trace runs one pool per model: sim.pools).
        self.pool_models = frozenset({workload.model})
        self.cfg = config
        self.policy_set = policies
        self.cost_model = model_cost(workload.model)
        self.latency = latency if latency is not None else config.latency.model_for(workload.model)
        # What the policies' snapshots predict steps with (default: the steps run). A
        # replay of a live run passes the curve the live controller decided with, so both
        # sides size workers alike while the steps run as the live ones did.
        self.decision_latency = decision_latency if decision_latency is not None else self.latency
        self.worker_memory = int(config.gpu_memory_bytes - self.cost_model.weights_bytes)
        if self.worker_memory <= 0:
            raise ValueError(
                f"gpu_memory_bytes={config.gpu_memory_bytes:.3g} does not fit the weights of "
                f"{workload.model!r} ({self.cost_model.weights_bytes:.3g} bytes); raise it"
            )
        state_bytes = functools.lru_cache(maxsize=None)(self.cost_model.state_bytes)  # a few sizes, many sessions
        self.sessions = [
            _Session(
                i,
                sid,
                state_bytes(workload.height[i], workload.width[i]),
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
        self.bursts = BurstTally()  # the snapshot's bursts_ended and burst_exposure_s
        self._wviews: tuple[WorkerView, ...] | None = None  # None: a worker changed
        self.heap: list[tuple] = []
        self.seq = 0
        # chunk and step columns: typed arrays of machine numbers (cheap appends, 8 bytes a
        # value where a list of Python numbers costs 32-36: a day at 1024 GPUs is ~10^8
        # chunks), converted once at the end. A step's chunks are appended together when it
        # ends (StepRunner.step_done), so what is the same for all of them is kept once a
        # step and repeated at the end (experiments.sim.result.assemble).
        self.c_sess = array("q")
        self.c_index = array("q")
        self.lat = array("d")
        self.c_first = array("B")  # first of a burst (index 0 or first after a resume)
        self.c_req = array("d")  # with record_chunks or a measurement window
        self.c_mig = array("B")  # with record_chunks
        self.s_n = array("q")  # chunks of the step
        self.s_degraded = array("B")
        self.s_start = array("d")  # with record_chunks
        self.s_done = array("d")  # with record_chunks
        self.s_worker = array("q")  # with record_chunks
        self.decisions: list[tuple] = []
        self.refused: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.intervals: list[tuple] = []
        self.n_alive = 0
        self.cost = 0.0
        self.cost_t = 0.0
        self.decide_s = 0.0
        self.max_abandoned_wait = 0.0
        # Starts, times and ends the workers' steps: ``steps.kick(w, now)`` starts a step on a
        # free worker with due requests, else sets its wake-up; what this state's changes (and
        # the action mechanisms) call when a worker may have work.
        self.steps = StepRunner(self)
        self.actions = ActionApplier(self)  # applies the policies' actions to this state

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
                self._wants_admission(now)
            if not s.wants:
                s.fresh = True  # a new burst: its first chunk waits for admission, not in-stream
                s.put_off = False
                s.burst_from = now
                self.bursts.begin(now)
            s.wants = True
            if not s.in_flight:
                s.next_req = now
            if s.status is IDLE:
                self._set_status(s, ACTIVE, now)
                s.worker.active[i] = s
                self.steps.kick(s.worker, now)
            elif s.status is SUSPENDED:
                self._set_status(s, PENDING, now)
                self._wants_admission(now)
        elif code == 2:  # idle
            self._abandon(s, now)
            if s.wants:
                self.bursts.end(s.burst_from, now)
            s.wants = False
            if s.status is ACTIVE:
                self._set_status(s, IDLE, now)
                s.worker.active.pop(i, None)
            elif s.status is PENDING:
                # off the queue until it is active again: state on the host, or none yet
                # (a new session that went idle before its placement wants no device)
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
        if s.wants:
            self.bursts.end(s.burst_from, now)
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
        self._slot_freed(now)

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
        self.steps.kick(target, now)
        self._slot_freed(now)

    # ------------------------------------------------------------ control tick

    def snapshot(self, now: float) -> Snapshot:
        """The policies' view at ``now`` (:func:`~experiments.sim.snapshot.build_snapshot`)."""
        return build_snapshot(self, now)

    def _tick(self, now: float, policy: Combined, state: list) -> None:
        snap = self.snapshot(now)
        record_interval(self, now, snap)
        t0 = _time.perf_counter()
        self.steps.defer()
        actions, state[0] = policy.decide(snap, state[0], incremental=True)
        self.decide_s += _time.perf_counter() - t0
        for action in apply_order(actions):  # ScaleTo last (policies.semantics)
            self.actions.apply(action, now)
        self.steps.start_deferred(now)

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
        self._end = end
        self._policy = Combined(*self.policy_set.build())
        self._policy_state = [self._policy.initial_state()]
        self._k_tick = 0
        self._cost_recorded = 0.0
        self._mig_recorded = 0
        for _ in range(cfg.initial_workers):
            self._new_worker(0.0, RUNNING)
        # plain lists: comparing numpy scalars in the hot loop costs more than the work
        times, sidx, codes = wl.times.tolist(), wl.session_index.tolist(), wl.event_code.tolist()
        times.append(_INF)  # sentinel: no bounds check per event
        ti = 0
        handlers = [None] * _N_KINDS  # event kind -> handler(time, payload)
        handlers[_STEP], handlers[_WAKE], handlers[_TICK] = self.steps.step_done, self.steps.on_wake, self._on_tick
        handlers[_COPY], handlers[_RELEASE], handlers[_READY] = self._on_copy, self._on_release, self._on_ready
        handlers[_ADMIT] = self._on_admit
        self._admit_at = None  # time of the scheduled admission decision, if any
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
                handlers[kind](t, payload)
            elif t_trace <= end:
                self._trace_event(t_trace, sidx[ti], codes[ti])
                ti += 1
            else:
                break
        return assemble(self, end)

    # ------------------------------------------------------------ event handlers

    def _wants_admission(self, now: float) -> None:
        """A session became PENDING: place it at this instant (``place_on_arrival``), once per instant."""
        if self.cfg.place_on_arrival and self._admit_at != now:
            self._admit_at = now
            self._push(now, _ADMIT, None)

    def _slot_freed(self, now: float) -> None:
        """A slot freed or a worker came up: place the waiting sessions at this instant.

        As the live plugin does: a session that closes, a migration that ends and a worker
        that reports ready wake the requests waiting for capacity at once
        (:meth:`framework.admission.Admission.changed`), not at the control loop's next tick.
        """
        if self._counts[PENDING]:
            self._wants_admission(now)

    def _on_admit(self, t: float, _: Any) -> None:
        """Admission between ticks: the placement policy alone, its Place and Offload actions."""
        if self._admit_at != t:
            return  # a tick at this instant decided for it
        self._admit_at = None
        policy, state = self._policy, self._policy_state
        snap = self.snapshot(t)
        t0 = _time.perf_counter()
        actions, state[0] = policy.admit(snap, state[0], incremental=True)
        self.decide_s += _time.perf_counter() - t0
        self.steps.defer()
        for action in apply_order(actions):
            if isinstance(action, (Place, Offload)):
                self.actions.apply(action, t)
        self.steps.start_deferred(t)

    def _on_tick(self, t: float, _: Any) -> None:
        if self._admit_at == t:
            self._admit_at = None  # this tick places what arrived at its instant
        self._tick(t, self._policy, self._policy_state)
        self._k_tick += 1
        if self._k_tick % _GC_EVERY_TICKS == 0:
            gc.collect(1)
        nxt = self._k_tick * self.cfg.interval_s
        if nxt <= self._end:
            self._push(nxt, _TICK, None)

    def _on_copy(self, t: float, payload: tuple) -> None:
        self._copy_done(t, *payload)

    def _on_release(self, t: float, payload: tuple) -> None:
        w, nbytes = payload
        w.used -= nbytes
        self._maybe_release(w, t)
        self.steps.kick(w, t)

    def _on_ready(self, t: float, w: _Worker) -> None:
        if w.status is STARTING and w.released is None:
            w.status = RUNNING
            w.view = None
            self._wviews = None
            self.steps.kick(w, t)
            self._slot_freed(t)
