"""Session and worker bookkeeping of the simulator: the event heap, cost, status changes,
trace events (open, active, idle, close) and finished copies.

A mixin of :class:`experiments.sim.engine.Simulator`; it works on the state that
``Simulator.__init__`` sets up.
"""

from __future__ import annotations

import heapq
from typing import Any

from experiments.sim.state import (
    _READY,
    ACTIVE,
    CLOSED,
    DRAINING,
    IDLE,
    MIGRATING,
    PENDING,
    STARTING,
    SUSPENDED,
    _Session,
    _Worker,
)
from policies.types import SessionStatus, WorkerStatus


class _Bookkeeping:
    """Plumbing, trace events and copies (mixed into :class:`~experiments.sim.engine.Simulator`)."""

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
            if not s.wants:
                s.fresh = True  # a new burst: its first chunk waits for admission, not in-stream
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
