"""Applying the policies' actions in the simulator: place, resume, migrate, offload,
scale and retire, each refused (logged with the reason, and counted) when impossible.

A mixin of :class:`experiments.sim.engine.Simulator`.
"""

from __future__ import annotations

import logging

from experiments.sim.state import (
    _COPY,
    _RELEASE,
    ACTIVE,
    DRAINING,
    IDLE,
    MIGRATING,
    PENDING,
    RUNNING,
    STARTING,
    SUSPENDED,
    _Worker,
)
from policies.types import (
    Action,
    Migrate,
    Offload,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
)

# the logger keeps the engine's name: refusals were always logged there
logger = logging.getLogger("experiments.sim.engine")


class _Actions:
    """The action handlers (mixed into :class:`~experiments.sim.engine.Simulator`)."""

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
        s.copy_until = start + self.cfg.migration_fixed_s + s.nbytes / self.cfg.migrate_bytes_per_s
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
