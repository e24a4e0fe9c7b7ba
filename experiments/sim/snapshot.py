"""The policies' view of the simulator: the incrementally cached :class:`Snapshot`, and
the per-interval record taken with it.

A session's frozen view is rebuilt only when something a policy sees changed (it is
queued in ``_dirty``); worker views only when a worker starts, changes status or leaves.
Functions of a :class:`experiments.sim.engine.Simulator`'s state (its cached views,
dirty list and status counts), which the simulator calls at each control tick.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import fields
from typing import Any

from experiments.sim.state import ACTIVE, IDLE, MIGRATING, SUSPENDED, _Session
from policies.types import SessionView, Snapshot, WorkerView


def build_snapshot(sim: Any, now: float) -> Snapshot:
    """The immutable view the policies see at ``now``.

    Views are cached: a session's view is rebuilt only when something a policy sees
    changed (it was queued in ``_dirty``), and the worker views only when a worker
    started, changed status or left. The result equals a full rebuild.
    """
    wviews = sim._wviews
    if wviews is None:
        cfg = sim.cfg
        placement_batch = cfg.placement_batch or cfg.max_batch
        # the quality valve's batch: the engine's cap above the policies' b*
        valve_batch = cfg.max_batch if cfg.quality_valve and cfg.max_batch > placement_batch else 0
        built = []
        for w in sim.alive.values():
            v = w.view
            if v is None or v.status is not w.status:
                # per GPU: a group leader's own cap and memory (policies.parallelism.unit_view sums a group);
                # a simulated worker serves its pool's model (experiments.sim.pools: one pool per model)
                v = w.view = WorkerView(w.address, w.status, w.memory, placement_batch, w.started, sim.pool_models,
                                        valve_batch)
            built.append(v)
        wviews = sim._wviews = tuple(built)
    views = sim._views
    model = sim.wl.model
    dirty, sim._dirty = sim._dirty, []
    for s in dirty:
        s.dirty = False
        if s.idx in views:
            views[s.idx] = s.view = session_view(s, model, None)
    if sim.cfg.oracle_hints:  # a suspended session's next activation moves with ``now``
        for s in sim.open.values():
            if s.status is SUSPENDED:
                acts = sim._activations[s.idx]
                k = bisect_right(acts, now)
                views[s.idx] = s.view = session_view(s, model, float(acts[k]) if k < len(acts) else None)
    sim._status_counts = dict(sim._counts)
    return Snapshot(
        now_s=now,
        workers=wviews,
        sessions=tuple(views.values()),  # type: ignore[arg-type]  (every open session has a view by now)
        slo_s=sim.snapshot_slo,
        latency=sim.decision_latency,
        migrate_bytes_per_s=sim.cfg.migrate_bytes_per_s,
        offload_bytes_per_s=sim.cfg.offload_bytes_per_s,
        min_workers=sim.cfg.min_workers,
        max_workers=sim.cfg.max_workers,
        worker_startup_s=sim.cfg.worker_startup_s,
        groups=sim.actions.group_records(),
        parallel=sim.cfg.parallel,
        chunks_made=len(sim.lat),
        degraded_chunks=sim.counters["degraded_chunks"],
        bursts_ended=sim.bursts.ended,
        burst_exposure_s=sim.bursts.exposure_s(now),
    )


# A view is made for every session that made a chunk since the last snapshot (hundreds of
# thousands a run). The frozen dataclass's __init__ sets each field through
# object.__setattr__; setting the slots directly makes the same object in half the time.
_VIEW_FIELDS = ("session_id", "status", "worker", "state_bytes", "model", "since_s", "chunk_period_s",
                "context_frames", "recent_latency_s", "next_active_s")
if tuple(f.name for f in fields(SessionView)) != _VIEW_FIELDS or hasattr(SessionView, "__post_init__"):
    raise TypeError(
        f"policies.types.SessionView changed (fields {[f.name for f in fields(SessionView)]}, or a __post_init__): "
        "update experiments.sim.snapshot.session_view, which sets its slots directly"
    )
_new_view = object.__new__
(_set_sid, _set_status, _set_worker, _set_bytes, _set_model, _set_since, _set_period, _set_ctx, _set_recent,
 _set_next) = (getattr(SessionView, name).__set__ for name in _VIEW_FIELDS)


def session_view(s: _Session, model: str, next_active: float | None) -> SessionView:
    """The frozen view of one session the policies see (equal to ``SessionView(...)`` of its fields)."""
    # policy contract: a MIGRATING session names its target; a new pending one (no
    # state yet, also while it waits idle as SUSPENDED) has state_bytes 0
    where = s.target if s.status is MIGRATING else s.worker
    view = _new_view(SessionView)
    _set_sid(view, s.sid)
    _set_status(view, s.status)
    _set_worker(view, where.address if where is not None else None)
    _set_bytes(view, 0 if where is None and not s.on_host else s.nbytes)
    _set_model(view, model)
    _set_since(view, s.since)
    _set_period(view, s.period)
    _set_ctx(view, s.ctx)
    _set_recent(view, s.recent)
    _set_next(view, next_active)
    return view


def record_interval(sim: Any, now: float, snap: Snapshot) -> None:
    """Append the interval row of ``now`` (counts taken while ``snap`` was built)."""
    sim._advance_cost(now)
    counts = sim._status_counts  # counted while the snapshot was built
    prev_cost = sim._cost_recorded
    prev_mig = sim._mig_recorded
    sim.intervals.append(
        (now, sim.n_alive, counts[ACTIVE], counts[IDLE], counts[SUSPENDED],
         sim.counters["migrations"] - prev_mig, sim.cost - prev_cost)
    )
    sim._cost_recorded = sim.cost
    sim._mig_recorded = sim.counters["migrations"]
