"""The policies' view of the simulator: the incrementally cached :class:`Snapshot`, and
the per-interval record taken with it.

A session's frozen view is rebuilt only when something a policy sees changed (it is
queued in ``_dirty``); worker views only when a worker starts, changes status or leaves.
A mixin of :class:`experiments.sim.engine.Simulator`.
"""

from __future__ import annotations

from bisect import bisect_right

from experiments.sim.state import ACTIVE, IDLE, MIGRATING, PENDING, SUSPENDED, _Session
from policies.types import SessionView, Snapshot, WorkerView


class _Snapshots:
    """Snapshot building and interval records (mixed into :class:`~experiments.sim.engine.Simulator`)."""

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
        # state yet, also while it waits idle as SUSPENDED) has state_bytes 0
        where = s.target if s.status is MIGRATING else s.worker
        nbytes = 0 if where is None and not s.on_host else s.nbytes
        return SessionView(
            s.sid, s.status, where.address if where is not None else None, nbytes, model,
            s.since, s.period, s.ctx, s.recent, next_active,
        )
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
