"""The workers' steps in the simulator: when they start, how long they take, the chunks they make.

A worker that is free and has due requests runs one coalesced step for up to
``max_batch`` of them; which ones is the live engine's rule
(:func:`~experiments.sim.step_formation.form_step`), how long it takes is the latency
model's prediction, degraded past the quality valve's limit; when it ends its chunks are
recorded and each session's next request is due one period after the last. A worker
with nothing due yet is looked at again when its earliest request is.

:class:`StepRunner` is a collaborator of :class:`experiments.sim.engine.Simulator`, as
:class:`~experiments.sim.actions.ActionApplier` is for the actions: it works on the
simulator's records (its workers and sessions, its event heap, its chunk and step
columns) through the ``sim`` it is given. The simulator calls :meth:`StepRunner.kick`
whenever a worker may have work (a session became active, a copy or a release ended, a
worker became ready), and hands it the events it schedules: the end of a step
(:meth:`StepRunner.step_done`) and a wake-up (:meth:`StepRunner.on_wake`).
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

from experiments.sim.state import _INF, _STEP, _WAKE, DRAINING, STARTING, _Worker
from experiments.sim.step_formation import form_step
from workers.batching import valve_step


class StepRunner:
    """Start, time and end the steps of a simulator's workers.

    Parameters
    ----------
    sim
        The :class:`~experiments.sim.engine.Simulator` whose workers step: its config,
        step-time model (``latency``), model cost (the context window), SLO
        (``snapshot_slo``), event heap, chunk and step columns, counters and dirty
        sessions are read and written here.

    Examples
    --------
    >>> sim = Simulator(workload, PolicySet.of("least-loaded", "fixed", "never"), SimConfig())  # doctest: +SKIP
    >>> sim.steps.kick(sim.workers[0], 0.0)  # a step if a request is due, else a wake-up  # doctest: +SKIP
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.cfg = sim.cfg
        self.latency = sim.latency
        self._slo_s = sim.snapshot_slo
        self._ctx_window = sim.cost_model.context_window_frames()  # context_frames: pixel frames
        self._windowed = self.cfg.measure_from_s > 0  # request times kept without chunk rows
        self._step_cache: dict[int, float] = {}
        self._rules_of: dict[tuple[int, int], tuple[float, Callable[[int], float], list[float]]] = {}  # (degree, max_batch) -> rules
        self._ctx_slope = self.latency.context_slope_s
        # Quality valve: a step predicted to miss this target runs degraded (fewer steps).
        self._valve_s = sim.snapshot_slo if self.cfg.quality_valve else _INF
        self._align = self.cfg.align_phases
        self._step1 = self.step_time(1, 0.0)
        # Workers kicked while the actions of a tick or admission are applied, by index
        # (:meth:`defer`); None: steps start when kicked.
        self._deferred: dict[int, _Worker] | None = None

    # ------------------------------------------------------------ step times

    def rules(self, w: _Worker) -> tuple[float, Callable[[int], float], list[float]]:
        """The batching rules' numbers for ``w`` (kept on it until it regroups): ``(valve_from, step_n, raw)``.

        ``step_n(n)``: the step time of ``n`` sessions (``0..max_batch + 1``) on ``w`` at no
        context term, as the engine runs them (a step over the valve's limit degraded):
        what the rules (split, early joins, the valve group) compare, looked up instead of
        recomputed. ``valve_from``: the fewest active sessions whose full step on ``w`` (no
        context term) is over the valve's limit: from there its sessions run as one group
        (inf: never, or no valve). ``raw[n]``: the step time of ``n`` sessions at no context
        term, not degraded (:meth:`step_time`). Shared by the workers of one degree and batch cap.
        """
        key = (w.degree, w.max_batch)
        rules = self._rules_of.get(key)
        if rules is None:
            step = valve_step(lambda n: self.step_time(n, 0.0, w.degree), self._valve_s, self.cfg.valve_step_ratio)
            table = [0.0] + [step(n) for n in range(1, w.max_batch + 2)]
            valve_from = next(
                (k for k in range(2, w.max_batch + 1) if self.step_time(k, 0.0, w.degree) > self._valve_s), _INF)
            raw = [0.0] + [self.step_time(n, 0.0, w.degree) for n in range(1, w.max_batch + 1)]
            rules = self._rules_of[key] = (valve_from, table.__getitem__, raw)
        w.rules = rules
        return rules

    def step_time(self, n: int, ctx: float, degree: int = 1) -> float:
        """The predicted time of a step of ``n`` sessions of mean context ``ctx`` at parallel ``degree``."""
        if degree > 1:  # a parallel group's step (SimConfig.parallel: step(b, k))
            return self.cfg.parallel.predict(self.latency, n, degree, ctx)
        if ctx:
            return self.latency.predict(n, ctx)
        t = self._step_cache.get(n)
        if t is None:
            t = self._step_cache[n] = self.latency.predict(n, 0.0)
        return t

    # ------------------------------------------------------------ starting steps

    def defer(self) -> None:
        """Hold the steps of the workers kicked from now on until :meth:`start_deferred`.

        A tick or an admission applies all its actions first, so that a worker's step
        takes every session they make active on it.
        """
        self._deferred = {}

    def start_deferred(self, now: float) -> None:
        """Kick the workers held since :meth:`defer`, in the order they were first kicked."""
        deferred, self._deferred = self._deferred, None
        for w in deferred.values():
            self.kick(w, now)

    def kick(self, w: _Worker, now: float) -> None:
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
                    step = self.step_time(1, s.ctx, w.degree) if self._ctx_slope or w.degree > 1 else self._step1
                    self._start_step(w, (s,), now, step)
                else:
                    self._wake(w, r)
            return
        due = []
        earliest = _INF
        for s in active.values():
            if s.in_flight:
                continue
            r = s.next_req if s.next_req >= s.copy_until else s.copy_until
            if r <= now:
                due.append(s)
            elif r < earliest:
                earliest = r
        if not due:  # (about half the calls: a step just ended, the next requests are to come)
            if earliest < _INF:
                self._wake(w, earliest)
            return
        # Over b* under the quality valve (more active sessions than a full step meets the
        # SLO with): the worker's sessions run as one group (workers.batching.valve_group_step).
        valve_from, step_n, raw_step = w.rules if w.rules is not None else self.rules(w)
        grouped = len(active) >= valve_from
        early = []  # not due yet, but within one period: may be produced ahead (alignment)
        upcoming = [] if grouped else None  # in-stream sessions not due yet: their requests
        align = self._align
        if align or grouped:
            for s in active.values():
                if s.in_flight:
                    continue
                r = s.next_req if s.next_req >= s.copy_until else s.copy_until
                if r > now:
                    if grouped and not s.fresh:
                        upcoming.append(r)
                    if align and s.copy_until <= now and r - s.period <= now:
                        early.append(s)
        formed = form_step(now, due, early, upcoming=upcoming, max_batch=w.max_batch, n_active=len(active),
                           slo_s=self._slo_s, step_s=step_n)
        if isinstance(formed, float):  # a hold: first chunks wait for in-stream ones about to be due
            self._wake(w, formed)
            return
        due = formed
        n = len(due)
        ctx = sum(s.ctx for s in due) / n if self._ctx_slope else 0.0
        self._start_step(w, due, now, self.step_time(n, ctx, w.degree) if ctx else raw_step[n])

    def _start_step(self, w: _Worker, sessions, now: float, step: float) -> None:
        """``sessions`` start a step of ``step`` seconds on ``w`` at ``now`` (degraded past the valve's limit)."""
        degraded = step > self._valve_s
        end = now + (step * self.cfg.valve_step_ratio if degraded else step)
        batch = []
        for s in sessions:
            batch.append((s, s.next_req, s.migrated_next))
            s.in_flight = True
            s.migrated_next = False
        w.busy = True
        w.step_end = end
        sim = self.sim
        sim.seq += 1
        heapq.heappush(sim.heap, (end, _STEP, sim.seq, (w, batch, now, degraded)))

    def _wake(self, w: _Worker, t: float) -> None:
        """Look at ``w`` again at ``t``, unless an earlier wake-up is set."""
        if w.wake_at is None or t < w.wake_at:
            w.wake_at = t
            sim = self.sim
            sim.seq += 1
            heapq.heappush(sim.heap, (t, _WAKE, sim.seq, w))

    # ------------------------------------------------------------ events

    def on_wake(self, t: float, w: _Worker) -> None:
        """The wake-up of ``w`` set for ``t``: kick it."""
        if w.wake_at == t:
            w.wake_at = None
        self.kick(w, t)

    def step_done(self, now: float, payload: tuple[_Worker, list, float, bool]) -> None:
        """The step of ``payload`` (worker, batch, start time, degraded) ended at ``now``: its chunks are done."""
        w, batch, started, degraded = payload
        sim = self.sim
        w.busy = False
        n = len(batch)
        sim.s_n.append(n)
        sim.s_degraded.append(degraded)
        if degraded:
            sim.counters["degraded_chunks"] += n
        if self.cfg.record_chunks:
            sim.s_start.append(started)
            sim.s_done.append(now)
            sim.s_worker.append(w.idx)
            for _, treq, mig in batch:
                sim.c_req.append(treq)
                sim.c_mig.append(mig)
        elif self._windowed:  # the request times alone: what a measurement window selects on
            sim.c_req.extend([treq for _, treq, _ in batch])
        window = self._ctx_window
        dirty = sim._dirty
        add_sess, add_index, add_first, add_lat = sim.c_sess.append, sim.c_index.append, sim.c_first.append, sim.lat.append
        for s, treq, _ in batch:
            add_sess(s.idx)
            add_index(s.next_index)
            add_first(s.fresh)
            s.fresh = False
            lat = now - treq
            if lat < 0.0:  # made ahead (phase alignment): ready before it was asked for
                lat = 0.0
            add_lat(lat)
            s.in_flight = False
            s.next_index += 1
            # views are rebuilt only when something a policy sees changed
            if s.recent != lat or s.ctx < window:
                s.recent = lat
                if s.ctx < window:
                    s.ctx = min(s.ctx + s.frames, window)
                if not s.dirty:
                    s.dirty = True
                    dirty.append(s)
            if s.wants:
                nxt = treq + s.period
                s.next_req = nxt if nxt > now else now
        if w.status is DRAINING:
            sim._maybe_release(w, now)
        self.kick(w, now)
