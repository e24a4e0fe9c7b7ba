"""Autoscaling policies: how many workers (GPUs) the cluster should have.

Registered under kind ``"autoscaling"``: ``fixed``, ``hpa`` (here), ``load-driven``
(TurboServe's, :mod:`policies.load_driven`) and the reference systems' rules
(:mod:`policies.reference_autoscalers`), all on the shared base below.

Shared rules (what the simulator and the live controller rely on):

- The size that counts is the number of RUNNING plus STARTING workers; DRAINING ones
  are on their way out and do not count. So a scale-up still starting is capacity on
  the way, and a second decision does not ask for it again.
- A decision returns at most one ``ScaleTo(n)`` (``n`` = desired RUNNING + STARTING
  workers) and only when ``n`` differs from the current size. On scale-in it also
  returns ``Retire(worker)`` for exactly ``current - n`` workers: STARTING ones first
  (they hold nothing), then running ones with the fewest sessions, then the least
  state. Draining moves the sessions away (the placement policy migrates active ones
  and offloads idle ones) before the worker is released.
- ``n`` always lies within ``[snap.min_workers, snap.max_workers]``.
- Demand is the active sessions (ACTIVE and MIGRATING) plus the pending ones, including
  those the placement policy refused in the same decision: a full cluster that
  refuses newcomers still scales out.

Examples
--------
>>> from policies.registry import make
>>> from policies.types import Snapshot, WorkerView
>>> snap = Snapshot(now_s=0.0, workers=(WorkerView("w1"),), sessions=(), min_workers=0)
>>> make("autoscaling", "fixed", n=3).decide(snap, None)[0]
[ScaleTo(cause='fixed: 3 workers', n=3)]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Any

from policies.admission import CapacityLedger, WorkerLoad
from policies.base import LedgerPolicy
from policies.registry import register
from policies.types import Action, Retire, ScaleTo, Snapshot, WorkerStatus

_STARTING = WorkerStatus.STARTING
_DRAINING = WorkerStatus.DRAINING
_RUNNING = WorkerStatus.RUNNING
_EPS = 1e-9  # float noise must not turn 5.0 into 6 workers under ceil
#: Where the SLO is below one session's step: how much slower than running alone a
#: batch may step and still count within :func:`sessions_per_gpu`'s capacity. The
#: built-in configuration passes ``turboserve.control.migration-gain`` (the gain a
#: move must bring, 0.1 by default) to the load-driven autoscaler instead.
UNMET_SLO_SLACK = 0.1


def _ceil(x: float) -> int:
    return math.ceil(x - _EPS)


@dataclass(frozen=True, slots=True)
class Census:
    """What an autoscaler reads from one ledger: the size and the demand."""

    running: int
    starting: int
    demand: int  # active (ACTIVE + MIGRATING + placed) + pending sessions not placed (refused ones too)
    device_bytes: int  # memory of on-device sessions + reserve of the still-pending ones
    context_sum: float  # context frames summed over the active sessions

    @property
    def current(self) -> int:
        """Workers that count as the cluster size (RUNNING + STARTING)."""
        return self.running + self.starting

    @classmethod
    def of(cls, ledger: CapacityLedger) -> Census:
        """Count one ledger (which earlier policies of the decision may have booked into)."""
        running = starting = active = nbytes = 0
        ctx = 0.0
        acted, refused = ledger.acted, ledger.refused
        for ld in ledger.loads.values():
            status = ld.view.status
            if status is _RUNNING:
                running += 1
            elif status is _STARTING:
                starting += 1
            active += ld.n_active
            nbytes += ld.mem_used
            ctx += ld.ctx_sum
        waiting = [s for s in ledger.pending if s.session_id not in acted or s.session_id in refused]
        nbytes += sum(ledger.reserve(s) for s in waiting) - ledger.in_flight_bytes
        return cls(running, starting, active + len(waiting), nbytes, ctx)


def scale_actions(ledger: CapacityLedger, current: int, desired: int, cause: str,
                  rank: Any = None) -> list[Action]:
    """``ScaleTo(desired)`` plus, when shrinking, the ``Retire`` of the cheapest workers.

    ``rank`` orders the candidates (default :func:`retire_rank`: STARTING first, then
    the fewest sessions). Bounds are applied by the caller. Returns ``[]`` when
    ``desired == current``.
    """
    if desired == current:
        return []
    actions: list[Action] = [ScaleTo(desired, cause=cause)]
    if desired < current:
        candidates = (ld for ld in ledger.loads.values() if ld.view.status is not _DRAINING)
        for ld in heapq.nsmallest(current - desired, candidates, key=rank or retire_rank):
            actions.append(Retire(ld.address, cause=cause))
    return actions


def retire_rank(ld: WorkerLoad) -> tuple:
    """STARTING workers first (they hold nothing), then the fewest sessions, the least state."""
    return (ld.view.status is not _STARTING, ld.n_sessions, ld.mem_used, ld.address)


def fewest_active_rank(ld: WorkerLoad) -> tuple:
    """STARTING first, then the fewest active sessions (a drain that waits ends soonest)."""
    return (ld.view.status is not _STARTING, ld.n_active, ld.n_sessions, ld.mem_used, ld.address)


def _clamp(n: int, snap: Snapshot) -> int:
    if snap.min_workers > snap.max_workers:
        raise ValueError(
            f"snapshot bounds are inverted: min_workers={snap.min_workers} > max_workers={snap.max_workers}"
        )
    return min(max(n, snap.min_workers), snap.max_workers)


class _Autoscaler(LedgerPolicy):
    """Shared decision: count, ask the subclass for a target, clamp, emit actions."""

    kind = "autoscaling"

    retire_rank = staticmethod(retire_rank)

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """At most one ``ScaleTo`` (plus ``Retire`` actions on scale-in), and the next state."""
        census = Census.of(ledger)
        desired, state, cause = self._desired(ledger, census, state)
        desired = _clamp(desired, ledger.snap)
        return scale_actions(ledger, census.current, desired, cause, self.retire_rank), state

    def _desired(self, ledger: CapacityLedger, census: Census, state: Any) -> tuple[int, Any, str]:
        raise NotImplementedError


def _reference_worker(ledger: CapacityLedger) -> WorkerLoad | None:
    """A worker whose size stands for a new one (the first non-draining one)."""
    for ld in ledger.loads.values():
        if ld.view.status is not _DRAINING:
            return ld
    return None


def sessions_per_gpu(ledger: CapacityLedger, share: float = 1.0, *, max_batch: int = 32,
                     memory_bytes: int | None = None, unmet_slo_slack: float = UNMET_SLO_SLACK) -> int:
    """Active sessions one GPU serves within ``share`` of the SLO, and whose state fits (>= 1).

    The largest ``b`` (up to the reference worker's ``max_batch``) whose predicted
    step, at the snapshot's mean context, is at most ``share * slo``; and at most as
    many as the device memory of a worker holds states of the typical session
    (``ledger.reserve``), since an active session's state must be on its device.
    ``max_batch`` and ``memory_bytes`` describe a new worker when the snapshot has none.

    An SLO that one session's step alone misses cannot rank batch sizes (every chunk
    misses it). Then the limit is one session's step plus ``unmet_slo_slack`` of it: a
    GPU bought to run a session alone should make its chunks faster by more than
    migration-aware placement asks of a move (its ``min_gain``,
    ``turboserve.control.migration-gain``), else placement never moves a session onto
    it and it idles. On a steep batch curve that is still one session per GPU; where
    batching is nearly free, several.
    """
    snap = ledger.snap
    ref = _reference_worker(ledger)
    cap = ref.view.max_batch if ref else max_batch
    memory = ref.view.memory_bytes if ref else memory_bytes
    active = [ld for ld in ledger.loads.values() if ld.n_active]
    n_active = sum(ld.n_active for ld in active)
    mean_ctx = sum(ld.ctx_sum for ld in active) / n_active if n_active else 0.0
    limit = share * snap.slo_s
    alone = ledger.step_s(1, mean_ctx)
    if alone > snap.slo_s + _EPS:
        limit = alone * (1.0 + unmet_slo_slack)
    b_star = 1
    for b in range(2, cap + 1):
        if ledger.step_s(b, mean_ctx * b) > limit + _EPS:
            break
        b_star = b
    typical = max((ledger.reserve(x) for x in snap.sessions[:64]), default=0)
    if memory and typical > 0:
        b_star = min(b_star, max(int(memory // typical), 1))
    return b_star


@register("autoscaling", "fixed")
class Fixed(_Autoscaler):
    """Static provisioning: always ``n`` workers (clamped to the snapshot's bounds)."""

    name = "fixed"

    def __init__(self, *, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"fixed autoscaling needs n >= 0 workers, got {n!r}")
        self.n = n

    def __repr__(self) -> str:
        return f"Fixed(n={self.n})"

    def _desired(self, ledger: CapacityLedger, census: Census, state: Any) -> tuple[int, Any, str]:
        return self.n, state, f"fixed: {self.n} workers"


@dataclass(frozen=True, slots=True)
class HpaState:
    """HPA memory: recent recommendations ``(time_s, n)`` and when an upscale was first wanted."""

    history: tuple[tuple[float, int], ...] = ()
    up_since_s: float | None = None
    synced_s: float | None = None  # time of the last evaluation (every sync_period_s)


@register("autoscaling", "hpa")
class Hpa(_Autoscaler):
    """Kubernetes Horizontal Pod Autoscaler on session concurrency.

    ``desired = ceil(running * utilisation / target_utilisation)``, where
    ``utilisation = (active + pending sessions) / sum(max_batch of running workers)``,
    i.e. the mean share of batch slots in use (the metric is linear in the load, so the
    formula lands on the right size in one step). No change while
    ``|utilisation / target - 1| <= tolerance``. Scale-down takes the highest
    recommendation of the last ``downscale_stabilisation_s`` seconds (kept in
    :class:`HpaState`); scale-up waits until it has been wanted for
    ``upscale_delay_s``. With no running worker and some demand it asks for one.

    The metric is evaluated every ``sync_period_s`` (Kubernetes'
    ``--horizontal-pod-autoscaler-sync-period``, 15 s); between syncs the size stays.

    Parameters mirror ``turboserve.autoscale.*``: ``target_utilisation`` (0.8),
    ``tolerance`` (0.1), ``downscale_stabilisation_s`` (300), ``upscale_delay_s`` (0),
    ``sync_period_s`` (0: every decision; Kubernetes' default is 15).
    """

    name = "hpa"

    def __init__(
        self,
        *,
        target_utilisation: float = 0.8,
        tolerance: float = 0.1,
        downscale_stabilisation_s: float = 300.0,
        upscale_delay_s: float = 0.0,
        sync_period_s: float = 0.0,
    ) -> None:
        if not 0 < target_utilisation:
            raise ValueError(f"target_utilisation must be > 0, got {target_utilisation!r}")
        if not sync_period_s >= 0:
            raise ValueError(f"sync_period_s must be >= 0, got {sync_period_s!r}")
        self.sync_period_s = float(sync_period_s)
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        if downscale_stabilisation_s < 0 or upscale_delay_s < 0:
            raise ValueError(
                f"delays must be >= 0, got downscale_stabilisation_s={downscale_stabilisation_s!r}, "
                f"upscale_delay_s={upscale_delay_s!r}"
            )
        self.target = float(target_utilisation)
        self.tolerance = float(tolerance)
        self.window_s = float(downscale_stabilisation_s)
        self.upscale_delay_s = float(upscale_delay_s)

    def __repr__(self) -> str:
        return f"Hpa(target_utilisation={self.target}, tolerance={self.tolerance}, window_s={self.window_s})"

    def initial_state(self) -> HpaState:
        """No recommendation yet."""
        return HpaState()

    def _desired(self, ledger: CapacityLedger, census: Census, state: HpaState) -> tuple[int, HpaState, str]:
        now = ledger.snap.now_s
        current = census.current
        if self.sync_period_s and state.synced_s is not None and now - state.synced_s < self.sync_period_s:
            return current, state, "hpa: between syncs"
        if self.sync_period_s:
            state = replace(state, synced_s=now)
        capacity = sum(ld.view.max_batch for ld in ledger.loads.values() if ld.view.status is _RUNNING)
        if capacity == 0:
            raw = max(current, 1) if census.demand else current
            cause = "hpa: no running worker"
        else:
            ratio = census.demand / capacity / self.target
            raw = current if abs(ratio - 1.0) <= self.tolerance else _ceil(census.running * ratio)
            cause = f"hpa: utilisation {census.demand / capacity:.2f} / target {self.target:.2f}"
        history = tuple(h for h in state.history if h[0] > now - self.window_s) + ((now, raw),)
        if raw > current:
            up_since = state.up_since_s if state.up_since_s is not None else now
            desired = raw if now - up_since >= self.upscale_delay_s else current
        else:
            up_since = None
            desired = min(current, max(n for _, n in history))
        return desired, replace(state, history=history, up_since_s=up_since), cause
