"""Autoscaling policies: how many workers (GPUs) the cluster should have.

Registered under kind ``"autoscaling"``: ``fixed``, ``hpa``, ``load-driven``.

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
from statistics import NormalDist
from dataclasses import dataclass, replace
from typing import Any

from policies.admission import CapacityLedger, WorkerLoad
from policies.base import LedgerPolicy
from policies.registry import register
from policies.types import DEFAULT_WORKER_MEMORY_BYTES, Action, Retire, ScaleTo, SessionStatus, Snapshot, WorkerStatus

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


@dataclass(frozen=True, slots=True)
class LoadDrivenState:
    """Memory of the load-driven autoscaler, carried from one decision to the next.

    ``below_since_s`` and ``window_max``: since when the budget is below the size, and
    its maximum since then (scale-in hysteresis). ``last_s`` and ``last_demand``: the
    previous decision's time and demand. ``var_rate`` and ``weight``: an exponentially
    weighted mean of ``(demand change)^2 / seconds`` between decisions and the weight
    it has gathered so far (``var_rate / weight`` is the bias-corrected estimate of how
    fast the demand's variance grows, in sessions^2 per second).
    """

    below_since_s: float | None = None
    window_max: int = 0
    last_s: float | None = None
    last_demand: int = 0
    var_rate: float = 0.0
    weight: float = 0.0
    # headroom_model="horizon": demand samples of the last horizon (and one older, the
    # anchor), and the weighted mean of (demand - demand one horizon ago)^2
    recent: tuple[tuple[float, int], ...] = ()
    var_horizon: float = 0.0
    weight_horizon: float = 0.0
    # provision_returns: the suspended sessions at the previous decision, and weighted
    # means of suspended session-seconds and of returns between decisions
    suspended: frozenset[str] = frozenset()
    suspended_s: float = 0.0
    returns: float = 0.0

    @property
    def return_rate_per_s(self) -> float:
        """Estimated returns per suspended session-second (0 before any is seen)."""
        return self.returns / self.suspended_s if self.suspended_s > 0 else 0.0

    @property
    def variance_per_s(self) -> float:
        """Bias-corrected estimate of the demand's variance growth (sessions^2 / s)."""
        return self.var_rate / self.weight if self.weight > 0 else 0.0


@register("autoscaling", "load-driven")
class LoadDriven(_Autoscaler):
    """TurboServe autoscaling: the GPUs the active load needs, plus headroom for its swings.

    Per-GPU capacity ``b*`` is the largest batch (up to the worker's ``max_batch``)
    whose predicted step, at the mean context, meets the SLO, and whose states fit the
    device (:func:`sessions_per_gpu`; at least 1). The budget is ``max(ceil((demand +
    headroom) / (target_utilisation * b*)), ceil(device bytes / memory per GPU))``.
    Scale out at once when the budget exceeds the size; scale in only after the budget
    has stayed at least one below the size for ``downscale_delay_s``, to the highest
    budget seen in that time, by draining (``Retire``) the workers with the fewest
    active sessions (idle state leaves by offload; active sessions finish their burst
    there unless the placement policy moves them).

    Headroom: a session that arrives or returns from idle while every slot is taken
    waits for another session to leave or for a new worker, which takes
    ``snap.worker_startup_s``. Sessions arrive and leave at random, so over a horizon
    ``T`` the demand moves by about ``N(0, v T)`` with ``v`` the variance rate (for
    Poisson arrivals and departures of rates ``a`` and ``d``, ``v = a + d``). The
    policy estimates ``v`` from successive snapshots (an exponentially weighted mean of
    ``(demand change)^2 / dt`` over ``rate_window_s``, kept in
    :class:`LoadDrivenState`; until ``warmup_s`` of history is seen, the missing part
    counts as no churn, so one early change does not buy a burst of headroom) and keeps
    ``headroom = floor(z_q * sqrt(v T))`` spare sessions, ``z_q`` the
    ``headroom_quantile`` of the standard normal. The headroom
    grows with the square root of the churn, so it is a smaller share of a larger
    cluster, and it decays once the load is quiet.

    Parameters
    ----------
    target_utilisation
        Share of a GPU's ``b*`` sessions to fill (1.0: the headroom below is the slack
        kept for the load's swings; lower keeps a proportional margin too).
    downscale_delay_s
        How long the budget must stay below the size before scaling in. ``None``
        (default): the worker start-up time of the snapshot. A GPU is paid from its
        request, so releasing one that is needed again within a start-up time costs
        more than keeping it (the ski-rental break-even).
    headroom_quantile
        Quantile of the demand swing over the horizon to provision for (0 disables
        the headroom; 0.8 by default).
    headroom_horizon_s
        The horizon ``T``; ``None`` (default) uses ``snap.worker_startup_s``.
    rate_window_s
        Time constant of the variance-rate estimate (300 s).
    warmup_s
        History the estimate needs before it is taken at face value (0 s: the first
        changes count in full, so a cluster that knows nothing of its load yet keeps
        generous headroom early; 60 s makes it calmer, and slower, at the start). With
        ``headroom_model="horizon"`` the first sample is a change over one whole horizon,
        so a policy that starts cold keeps no headroom for its first horizon (one worker
        start-up time): newcomers then find only the slots the load left free, which is
        part of the TTFC tail of a simulated trace that starts in steady state. A
        fallback to the random-walk estimate until a horizon sample exists was tried and
        not kept (it moved TTFC p99 both ways across the built-in traces).
    provision_idle
        Count the idle sessions still resident on a worker as demand (default False),
        for at most ``provision_idle_s`` of their idle spell. Pair it with the
        placement's ``keep_idle_slots``: the slots placement keeps for idle sessions are
        then provisioned, so a newcomer takes a free slot instead of evicting an idle
        session that is about to come back (whose resume would wait for the copy back
        from host memory).
    provision_idle_s
        How long into its idle spell an idle session's slot is paid for. ``None``
        (default): the worker start-up time of the snapshot, the ski-rental break-even:
        a slot released after that long and needed again costs at most one start-up of
        waiting, while keeping every idle session's slot for its whole spell paid
        1.2-1.3x the oracle's GPU-hours on the built-in traces (docs/RESULTS.md).
    provision_returns
        Also count the suspended sessions expected to come back within one start-up
        time as demand (default False): their number times a return rate learnt from
        the snapshots (returns per suspended session-second, weighted over
        ``rate_window_s``). A suspended session that comes back finds a free slot
        instead of waiting for a departure or a new worker. Not yet on the frontier
        grid; try it with ``--config autoscale.provision-returns=true``.
    unmet_slo_slack
        Where the SLO is below one session's step (no batch meets it): the share by
        which a batch may step slower than one session alone and still count as one
        GPU's capacity (:func:`sessions_per_gpu`). Pass the placement's ``min_gain``, so
        the GPUs bought are ones placement moves sessions onto.
    spare_workers
        Workers kept beyond the budget while any session is open (default 0): when a
        worker dies, its sessions recover onto the capacity of warm workers at once
        instead of waiting for a new worker's start-up (N+k redundancy, paid for all the
        time). ``turboserve.autoscale.spare-workers``.
    headroom_model
        How the swing over the horizon is estimated. ``"horizon"`` (default) measures
        it: the weighted mean of ``(demand now - demand one horizon ago)^2``, which
        holds for loads that swing back (sessions that go idle and return) as for loads
        that drift. ``"random-walk"`` extrapolates the one-tick variance rate ``v`` to
        ``v T``, which is exact for Poisson arrivals and departures but overstates the
        swing of a mean-reverting load by a wide margin.
    worker_max_batch, worker_memory_bytes
        Size of a new worker when the snapshot has none to copy it from.
    """

    name = "load-driven"
    retire_rank = staticmethod(fewest_active_rank)

    def __init__(
        self,
        *,
        target_utilisation: float = 1.0,
        downscale_delay_s: float | None = None,
        headroom_quantile: float = 0.8,
        headroom_horizon_s: float | None = None,
        rate_window_s: float = 300.0,
        warmup_s: float = 0.0,
        headroom_model: str = "horizon",
        worker_max_batch: int = 32,
        worker_memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES,
        provision_idle: bool = False,
        provision_idle_s: float | None = None,
        provision_returns: bool = False,
        unmet_slo_slack: float = UNMET_SLO_SLACK,
        spare_workers: int = 0,
    ) -> None:
        self.provision_idle = bool(provision_idle)
        self.provision_returns = bool(provision_returns)
        if provision_idle_s is not None and not provision_idle_s >= 0:
            raise ValueError(f"provision_idle_s must be >= 0 or None, got {provision_idle_s!r}")
        self.provision_idle_s = None if provision_idle_s is None else float(provision_idle_s)
        if headroom_model not in ("horizon", "random-walk"):
            raise ValueError(f"headroom_model must be 'horizon' or 'random-walk', got {headroom_model!r}")
        self.headroom_model = headroom_model
        if not 0 < target_utilisation:
            raise ValueError(f"target_utilisation must be > 0, got {target_utilisation!r}")
        if downscale_delay_s is not None and downscale_delay_s < 0:
            raise ValueError(f"downscale_delay_s must be >= 0 or None, got {downscale_delay_s!r}")
        if not 0 <= headroom_quantile < 1:
            raise ValueError(f"headroom_quantile must be in [0, 1), got {headroom_quantile!r}")
        if headroom_horizon_s is not None and headroom_horizon_s < 0:
            raise ValueError(f"headroom_horizon_s must be >= 0 or None, got {headroom_horizon_s!r}")
        if not rate_window_s > 0:
            raise ValueError(f"rate_window_s must be > 0, got {rate_window_s!r}")
        if not warmup_s >= 0:
            raise ValueError(f"warmup_s must be >= 0, got {warmup_s!r}")
        if worker_max_batch < 1 or worker_memory_bytes <= 0:
            raise ValueError(
                f"worker_max_batch must be >= 1 and worker_memory_bytes > 0, got "
                f"{worker_max_batch!r} and {worker_memory_bytes!r}"
            )
        self.target = float(target_utilisation)
        self.downscale_delay_s = None if downscale_delay_s is None else float(downscale_delay_s)
        self.headroom_quantile = float(headroom_quantile)
        # z of the quantile; below the median there is no headroom to keep
        self._z = max(NormalDist().inv_cdf(headroom_quantile), 0.0) if headroom_quantile > 0 else 0.0
        self.headroom_horizon_s = None if headroom_horizon_s is None else float(headroom_horizon_s)
        self.rate_window_s = float(rate_window_s)
        self.warmup_s = float(warmup_s)
        # the weight an estimate has gathered after warmup_s of history
        self._min_weight = self._alpha(self.warmup_s)
        self.worker_max_batch = worker_max_batch
        self.worker_memory_bytes = worker_memory_bytes
        if not unmet_slo_slack >= 0:
            raise ValueError(f"unmet_slo_slack must be >= 0, got {unmet_slo_slack!r}")
        self.unmet_slo_slack = float(unmet_slo_slack)
        if isinstance(spare_workers, bool) or not isinstance(spare_workers, int) or spare_workers < 0:
            raise ValueError(f"spare_workers must be an int >= 0, got {spare_workers!r}")
        self.spare_workers = spare_workers

    def __repr__(self) -> str:
        return (
            f"LoadDriven(target_utilisation={self.target}, downscale_delay_s={self.downscale_delay_s}, "
            f"headroom_quantile={self.headroom_quantile})"
        )

    def initial_state(self) -> LoadDrivenState:
        """Budget not below the size, no load history."""
        return LoadDrivenState()

    def _alpha(self, dt: float) -> float:
        """Weight of ``dt`` seconds of new evidence in the estimates kept over ``rate_window_s``."""
        return -math.expm1(-dt / self.rate_window_s)

    def observe(self, state: LoadDrivenState, now_s: float, demand: int) -> LoadDrivenState:
        """``state`` with the demand seen at ``now_s`` folded into the variance-rate estimate."""
        if state.last_s is None:
            return replace(state, last_s=now_s, last_demand=demand)
        dt = now_s - state.last_s
        if dt <= 0:
            return state
        alpha = self._alpha(dt)
        sample = (demand - state.last_demand) ** 2 / dt
        return replace(
            state,
            last_s=now_s,
            last_demand=demand,
            var_rate=state.var_rate + alpha * (sample - state.var_rate),
            weight=state.weight + alpha * (1.0 - state.weight),
        )

    def observe_horizon(self, state: LoadDrivenState, now_s: float, demand: int, horizon_s: float) -> LoadDrivenState:
        """``state`` with the change of demand over one horizon folded into its estimate.

        Keeps the samples of the last ``horizon_s`` plus the newest older one (the
        anchor); once the anchor is a horizon old, ``(demand - anchor)^2`` is one sample of
        the swing the headroom must cover, weighted like :meth:`observe`'s.
        """
        recent = state.recent + ((now_s, demand),)
        cut = 0
        while cut + 1 < len(recent) and recent[cut + 1][0] <= now_s - horizon_s:
            cut += 1
        recent = recent[cut:]
        anchor_s, anchor = recent[0]
        var, weight = state.var_horizon, state.weight_horizon
        if state.last_s is not None and now_s - anchor_s >= horizon_s and now_s > state.last_s:
            alpha = self._alpha(now_s - state.last_s)
            var += alpha * ((demand - anchor) ** 2 - var)
            weight += alpha * (1.0 - weight)
        return replace(state, recent=recent, var_horizon=var, weight_horizon=weight)

    def observe_returns(self, state: LoadDrivenState, now_s: float, snap: Snapshot) -> LoadDrivenState:
        """``state`` with the suspended sessions of ``snap`` and the returns since the last decision.

        A session suspended at the last decision and resident or pending now has come
        back; one that closed meanwhile counts as suspended time without a return.
        """
        suspended = frozenset(s.session_id for s in snap.sessions if s.status is SessionStatus.SUSPENDED)
        if state.last_s is None or now_s <= state.last_s:
            return replace(state, suspended=suspended)
        dt = now_s - state.last_s
        alpha = self._alpha(dt)
        back = sum(1 for s in snap.sessions if s.session_id in state.suspended and s.status is not SessionStatus.SUSPENDED)
        return replace(
            state,
            suspended=suspended,
            suspended_s=state.suspended_s + alpha * (len(state.suspended) * dt - state.suspended_s),
            returns=state.returns + alpha * (back - state.returns),
        )

    def headroom(self, snap: Snapshot, state: LoadDrivenState) -> int:
        """Spare sessions to provision for: the ``headroom_quantile`` of the demand swing."""
        horizon = snap.worker_startup_s if self.headroom_horizon_s is None else self.headroom_horizon_s
        if self.headroom_model == "horizon":
            weight = max(state.weight_horizon, self._min_weight)
            variance = state.var_horizon / weight if weight > 0 else 0.0
            return int(self._z * math.sqrt(variance) + _EPS)
        weight = max(state.weight, self._min_weight)
        variance = state.var_rate / weight if weight > 0 else 0.0
        return int(self._z * math.sqrt(variance * horizon) + _EPS)

    def budget(self, ledger: CapacityLedger, census: Census | None = None, headroom: int = 0) -> tuple[int, int]:
        """``(gpu budget, b*)`` for the load in ``ledger`` plus ``headroom`` spare sessions.

        ``b*`` is :func:`sessions_per_gpu` (the batch whose step meets the SLO, and whose
        states fit); the budget fills ``target_utilisation`` of it, and never holds less
        than the device bytes of the on-device sessions.
        """
        census = census if census is not None else Census.of(ledger)
        ref = _reference_worker(ledger)
        memory = ref.view.memory_bytes if ref else self.worker_memory_bytes
        b_star = sessions_per_gpu(ledger, max_batch=self.worker_max_batch, memory_bytes=self.worker_memory_bytes,
                                  unmet_slo_slack=self.unmet_slo_slack)
        gpus = max(_ceil((census.demand + headroom) / (self.target * b_star)), _ceil(census.device_bytes / memory))
        if census.demand or census.device_bytes:
            gpus += self.spare_workers  # a lost worker's sessions recover onto warm capacity
        return gpus, b_star

    def _desired(self, ledger: CapacityLedger, census: Census, state: LoadDrivenState) -> tuple[int, LoadDrivenState, str]:
        now = ledger.snap.now_s
        current = census.current
        if self.provision_idle:  # counted here only: no other autoscaler pays for the pass
            acted = ledger.acted
            keep = ledger.snap.worker_startup_s if self.provision_idle_s is None else self.provision_idle_s
            since = now - keep  # idle since then or later: its slot is still paid for
            idle = sum(1 for ld in ledger.loads.values() if ld.view.status is _RUNNING
                       for s in ld.idle if s.session_id not in acted and s.since_s >= since)
            if idle:
                census = replace(census, demand=census.demand + idle)
        if self.provision_returns:
            state = self.observe_returns(state, now, ledger.snap)
            expected = len(state.suspended) * state.return_rate_per_s * ledger.snap.worker_startup_s
            census = replace(census, demand=census.demand + int(expected + 0.5))
        if self.headroom_model == "horizon":
            horizon = ledger.snap.worker_startup_s if self.headroom_horizon_s is None else self.headroom_horizon_s
            state = self.observe_horizon(state, now, census.demand, horizon)
        state = self.observe(state, now, census.demand)
        spare = self.headroom(ledger.snap, state) if census.demand else 0
        budget, b_star = self.budget(ledger, census, spare)
        kept = self.spare_workers if census.demand or census.device_bytes else 0
        extra = f" + {kept} spare" if kept else ""
        cause = f"load-driven: {census.demand} sessions + {spare} headroom at {b_star} per GPU{extra} -> {budget} GPUs"
        if budget >= current:
            return budget, replace(state, below_since_s=None, window_max=0), cause
        if state.below_since_s is None:
            state = replace(state, below_since_s=now, window_max=budget)
        else:
            state = replace(state, window_max=max(state.window_max, budget))
        delay = ledger.snap.worker_startup_s if self.downscale_delay_s is None else self.downscale_delay_s
        if now - state.below_since_s >= delay:
            return state.window_max, replace(state, below_since_s=None, window_max=0), cause
        return current, state, cause
