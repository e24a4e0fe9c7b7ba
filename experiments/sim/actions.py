"""Applying the policies' actions in the simulator: the mechanisms only.

Whether an action may be applied is decided by the shared rules of
:mod:`policies.semantics` (the live control loop uses the same ones): :class:`_SimFacts`
shows them the simulator's state, a refusal is logged with its reason and counted, and
an accepted action runs its mechanism here (book memory, copy bytes in virtual time,
start or release workers). ``ScaleTo`` also has outcomes only the simulator knows
(``cluster-full``, ``scale-down-busy``).

:class:`ActionApplier` is a collaborator of :class:`experiments.sim.engine.Simulator`:
it works on the simulator's state through the ``sim`` it is given, and the simulator
calls :meth:`ActionApplier.apply` for each action of a tick.
"""

from __future__ import annotations

import logging
from typing import Any

from experiments.sim.state import (
    _COPY,
    _RELEASE,
    ACTIVE,
    DRAINING,
    IDLE,
    MIGRATING,
    RUNNING,
    STARTING,
    SUSPENDED,
)
from policies.semantics import (
    ActionRefused,
    Refusal,
    SessionFacts,
    WorkerFacts,
    check,
    clip_scale,
    decided,
)
from experiments.sim.models import kv_share
from policies.types import (
    TIERS,
    Action,
    FormGroup,
    Migrate,
    Offload,
    ParallelGroup,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
    SplitGroup,
)

# the logger keeps the engine's name: refusals were always logged there
logger = logging.getLogger("experiments.sim.engine")


class _SimFacts:
    """The simulator's state at ``now`` as :func:`policies.semantics.check` reads it."""

    __slots__ = ("sim", "now", "min_workers")

    def __init__(self, sim: Any, now: float) -> None:
        self.sim, self.now, self.min_workers = sim, now, sim.cfg.min_workers

    def session(self, session_id: str) -> SessionFacts | None:
        s = self.sim.by_sid.get(session_id)
        if s is None:
            return None
        return SessionFacts(
            s.status, worker=None if s.worker is None else s.worker.address, state_bytes=s.nbytes, opened=s.opened,
            offloaded=s.on_host, copying=s.copy_until > self.now, computing=s.in_flight,
        )

    def worker(self, address: str) -> WorkerFacts | None:
        w = self.sim.by_addr.get(address)
        if w is None:
            return None
        return WorkerFacts(w.status, used_bytes=w.used, memory_bytes=w.memory * w.degree, group=w.group)

    def serving(self) -> int:
        return sum(1 for w in self.sim.alive.values() if w.status is not DRAINING)

    def tiers(self) -> tuple[str, ...]:
        return TIERS  # every tier is a host copy at offload_bytes_per_s


class ActionApplier:
    """Applies policy actions to a :class:`~experiments.sim.engine.Simulator`'s state."""

    __slots__ = ("sim", "groups", "_records")

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.groups: dict[str, ParallelGroup] = {}  # parallel groups by leader address
        self._records: tuple[ParallelGroup, ...] | None = ()

    def group_records(self) -> tuple[ParallelGroup, ...]:
        """The parallel groups as the snapshot shows them."""
        if self._records is None:
            self._records = tuple(self.groups.values())
        return self._records

    def _refuse(self, now: float, action: Action, exc: ActionRefused, worker: str | None = None) -> None:
        self.sim.refused[exc.refusal.value] += 1
        self.sim.decisions.append(decided(now, action, False, exc.reason, worker))
        logger.debug("t=%.3f refused %r: %s", now, action, exc.reason)

    def _accept(self, now: float, action: Action, worker: str | None = None) -> None:
        self.sim.decisions.append(decided(now, action, True, None, worker))

    def apply(self, action: Action, now: float) -> None:
        if isinstance(action, ScaleTo):
            self._scale_to(action, now)
            return
        try:
            check(action, _SimFacts(self.sim, now))
        except ActionRefused as exc:
            self._refuse(now, action, exc)
            return
        if isinstance(action, (Place, Resume)):
            self._place(action, now)
        elif isinstance(action, Migrate):
            self._migrate(action, now)
        elif isinstance(action, Offload):
            self._offload(action, now)
        elif isinstance(action, Retire):
            self._retire(action, now)
        elif isinstance(action, FormGroup):
            self._form(action, now)
        elif isinstance(action, SplitGroup):
            self._split(action, now)
        elif isinstance(action, Reject):
            self.sim.counters["rejected"] += 1
            self._accept(now, action)
            self.sim._close(self.sim.by_sid[action.session_id], now)

    def _place(self, action: Place | Resume, now: float) -> None:
        s, w = self.sim.by_sid[action.session_id], self.sim.by_addr[action.worker]
        if s.on_host:
            start = max(now, s.host_ready)
            s.copy_until = start + s.nbytes / self.sim.cfg.offload_bytes_per_s
            s.on_host = False
            self.sim.counters["resumes"] += 1
            self.sim.counters["bytes_moved"] += s.nbytes
        else:
            s.copy_until = now
        w.sessions[s.idx] = s
        w.used += s.nbytes
        s.worker = w
        self._accept(now, action)
        if s.wants:
            self.sim._set_status(s, ACTIVE, now)
            w.active[s.idx] = s
            self.sim.steps.kick(w, now)
        else:
            self.sim._set_status(s, IDLE, now)

    def _migrate(self, action: Migrate, now: float) -> None:
        s, t = self.sim.by_sid[action.session_id], self.sim.by_addr[action.target]
        start = s.worker.step_end if s.in_flight else now
        s.copy_until = start + self.sim.cfg.migration_fixed_s + s.nbytes / self.sim.cfg.migrate_bytes_per_s
        s.worker.active.pop(s.idx, None)
        t.used += s.nbytes
        s.target = t
        self.sim._set_status(s, MIGRATING, now)
        self.sim.counters["migrations"] += 1
        self.sim.counters["bytes_moved"] += s.nbytes
        self._accept(now, action)
        self.sim._push(s.copy_until, _COPY, (s, t))

    def _offload(self, action: Offload, now: float) -> None:
        s = self.sim.by_sid[action.session_id]
        w = s.worker
        w.sessions.pop(s.idx, None)
        s.worker = None
        s.on_host = True
        s.host_ready = now + s.nbytes / self.sim.cfg.offload_bytes_per_s
        self.sim._set_status(s, SUSPENDED, now)
        self.sim.counters["offloads"] += 1
        self.sim.counters["bytes_moved"] += s.nbytes
        self._accept(now, action, w.address)
        self.sim._push(s.host_ready, _RELEASE, (w, s.nbytes))

    def _scale_to(self, action: ScaleTo, now: float) -> None:
        n, clipped = clip_scale(action, self.sim.cfg.min_workers, self.sim.cfg.max_workers)
        if clipped is not None:
            self._refuse(now, action, clipped, worker="")
        live = [w for w in self.sim.alive.values() if w.status is not DRAINING]
        if n > len(live):
            # As live (framework.control_actions.ActionRunner._keep_drained): draining workers not yet released go
            # back in service first, newest first; they hold a warm GPU already.
            for w in sorted(self.sim.alive.values(), key=lambda w: -w.idx):
                if len(live) >= n:
                    break
                if w.status is DRAINING:
                    w.status = RUNNING
                    self.sim._wviews = None
                    live.append(w)
                    self.sim.steps.kick(w, now)
            if n == len(live):
                self._accept(now, action, str(n))
                return
            # Draining workers still occupy their GPUs: the cluster never holds more than
            # max_workers in all; the rest of the scale-up waits for them to leave.
            room = self.sim.cfg.max_workers - self.sim.n_alive
            start = min(n - len(live), room)
            for _ in range(start):
                self.sim._new_worker(now, STARTING)
            if start < n - len(live):
                self._refuse(now, action, ActionRefused(
                    Refusal.CLUSTER_FULL, f"only {max(room, 0)} of {n - len(live)} new workers fit: "
                    f"{self.sim.n_alive - len(live)} draining workers still hold GPUs"), str(n))
            else:
                self._accept(now, action, str(n))
            return
        excess = len(live) - n
        if excess == 0:
            return
        for w in sorted(live, key=lambda w: (w.status is RUNNING, -w.idx)):
            if excess == 0:
                break
            if w.status is STARTING or (not w.sessions and w.used == 0 and not w.busy and not w.group):
                w.status = DRAINING
                self.sim._wviews = None
                self.sim._release(w, now)
                excess -= 1
        if excess:
            self._refuse(now, action, ActionRefused(
                Refusal.SCALE_DOWN_BUSY, f"{excess} workers above the target still hold sessions; send Retire to drain them"),
                str(n))
        else:
            self._accept(now, action, str(n))

    def _retire(self, action: Retire, now: float) -> None:
        w = self.sim.by_addr[action.worker]
        self._accept(now, action)
        self.sim._wviews = None
        if w.status is STARTING:  # holds nothing yet: cancel it
            w.status = DRAINING
            self.sim._release(w, now)
            return
        w.status = DRAINING
        self.sim._maybe_release(w, now)

    # ------------------------------------------------------------ parallel groups

    def _transform(self, now: float, workers: list, k_from: int, k_to: int) -> float:
        """Pause the sessions of ``workers`` while their KV is re-sharded; returns the end.

        It starts once the steps in flight on those workers end, takes
        ``transform_fixed_s`` plus the KV bytes that change rank over one link
        (``(k - 1)/k`` of each session's KV for the larger degree ``k``; serialised,
        an upper bound), and every session's next chunk waits for it (``copy_until``).
        """
        sim = self.sim
        cfg, par = sim.cfg, sim.cfg.parallel
        k = max(k_from, k_to)
        share = kv_share(sim.wl.model) * (k - 1) / k
        sessions = [s for w in workers for s in w.sessions.values()]
        moved = sum(s.nbytes for s in sessions) * share
        start = max([now] + [w.step_end for w in workers if w.busy])
        end = start + cfg.transform_fixed_s + moved / par.link_bytes_per_s
        for s in sessions:
            if s.copy_until < end:
                s.copy_until = end
        sim.counters["transformations"] += 1
        sim.counters["transform_bytes"] += int(moved)
        sim.counters["transform_session_pause_s"] += (end - now) * len(sessions)
        return end

    def _form(self, action: FormGroup, now: float) -> None:
        sim = self.sim
        if sim.cfg.parallel is None:
            self._refuse(now, action, ActionRefused(Refusal.GROUP_BAD_WORKERS, "this run has no parallel step model"))
            return
        ws = [sim.by_addr[a] for a in action.workers]
        for w in ws:  # a copy into or out of a member would land on a worker that no longer steps alone
            if w.used != sum(s.nbytes for s in w.sessions.values()) or any(
                    s.status is MIGRATING for s in w.sessions.values()):
                self._refuse(now, action, ActionRefused(
                    Refusal.GROUP_BAD_WORKERS, f"worker {w.address!r} has a copy in flight"))
                return
        leader, k = ws[0], len(ws)
        self._transform(now, ws, 1, k)
        for m in ws[1:]:
            for i, s in m.sessions.items():
                leader.sessions[i] = s
                if i in m.active:
                    leader.active[i] = s
                s.worker = leader
                if not s.dirty:
                    s.dirty = True
                    sim._dirty.append(s)
            leader.used += m.used
            m.used = 0
            m.sessions.clear()
            m.active.clear()
        leader.regroup(k, sim.cfg.parallel.group_max_batch(sim.cfg.max_batch, k))
        for w in ws:
            w.group = tuple(action.workers)
        self.groups[leader.address] = ParallelGroup(f"g-{leader.address}", tuple(action.workers), k, sim.wl.model)
        self._records = None
        self._accept(now, action)
        sim.steps.kick(leader, now)

    def _split(self, action: SplitGroup, now: float) -> None:
        sim = self.sim
        leader = sim.by_addr[action.workers[0]]
        if leader.used > leader.memory:
            self._refuse(now, action, ActionRefused(
                Refusal.NO_MEMORY, f"the group's sessions take {leader.used} bytes, one GPU has {leader.memory}"))
            return
        self._transform(now, [leader], leader.degree, 1)
        leader.regroup(1, sim.cfg.max_batch)
        for a in action.workers:
            sim.by_addr[a].group = ()
        del self.groups[leader.address]
        self._records = None
        self._accept(now, action)
        for a in action.workers:
            sim.steps.kick(sim.by_addr[a], now)
