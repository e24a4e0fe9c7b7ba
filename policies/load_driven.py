"""TurboServe's load-driven autoscaler: the GPUs the active load needs, plus headroom for its swings.

Registered under kind ``"autoscaling"`` as ``load-driven``; it follows the shared rules of
:mod:`policies.autoscaling` (what counts as the size, one ``ScaleTo`` per decision, which
workers retire), on whose base and per-GPU capacity (:func:`~policies.autoscaling.sessions_per_gpu`)
it builds. What is its own: the headroom estimated from the demand's swing over a start-up
time, the slots of idle and returning sessions it pays for, warm spares, and scale-in
hysteresis, all carried in :class:`LoadDrivenState` from one decision to the next.

Examples
--------
>>> from policies.registry import make
>>> make("autoscaling", "load-driven").initial_state().below_since_s is None
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

from policies.admission import CapacityLedger
from policies.autoscaling import (
    _EPS,
    UNMET_SLO_SLACK,
    Census,
    _Autoscaler,
    _ceil,
    _reference_worker,
    fewest_active_rank,
    sessions_per_gpu,
)
from policies.registry import register
from policies.types import DEFAULT_WORKER_MEMORY_BYTES, SessionStatus, Snapshot, WorkerStatus

_RUNNING = WorkerStatus.RUNNING


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
    # admission_wait_share: the sessions counted as demand at the previous decision, and
    # weighted means of the sessions that entered the demand and of seconds between decisions
    in_demand: frozenset[str] = frozenset()
    arrivals: float = 0.0
    arrival_s: float = 0.0

    @property
    def arrival_rate_per_s(self) -> float:
        """Estimated sessions entering the demand per second (0 before any time is seen)."""
        return self.arrivals / self.arrival_s if self.arrival_s > 0 else 0.0

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
    admission_wait_share
        Share of the sessions entering the demand (new ones, returns) that may find no
        free slot and wait for capacity (``None``, default: off, the headroom is the
        ``headroom_quantile`` of the swing). The admission percentile users are promised
        sets it: first chunks and resumes within the deadline at p99 need at most 1% of
        them to wait, so 0.01. A horizon whose swing ``X`` exceeds the headroom ``h``
        leaves about ``(X - h)+`` sessions waiting, so the headroom is the smallest
        ``h`` with ``sigma * L(h / sigma)`` (the expected overflow of a normal swing,
        ``L`` the standard normal loss function) at most this share of the sessions
        expected to enter the demand over the horizon (a rate learnt from the
        snapshots over ``rate_window_s``); never below the ``headroom_quantile``
        headroom and never above the swing's ``1 - share`` quantile (at which that
        share of horizons overflow at all; also the headroom before any entry is seen).
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
        admission_wait_share: float | None = None,
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
        if admission_wait_share is not None and not 0 < admission_wait_share < 0.5:
            raise ValueError(f"admission_wait_share must be in (0, 0.5) or None, got {admission_wait_share!r}")
        self.admission_wait_share = None if admission_wait_share is None else float(admission_wait_share)
        # the swing's quantile at which only that share of horizons overflow (the cap)
        self._z_cap = None if admission_wait_share is None else NormalDist().inv_cdf(1.0 - admission_wait_share)
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

    def observe_arrivals(self, state: LoadDrivenState, now_s: float, in_demand: frozenset[str]) -> LoadDrivenState:
        """``state`` with the sessions that entered the demand since the last decision counted."""
        if state.last_s is None or now_s <= state.last_s:
            return replace(state, in_demand=in_demand)
        alpha = self._alpha(now_s - state.last_s)
        entered = len(in_demand - state.in_demand)
        return replace(
            state,
            in_demand=in_demand,
            arrivals=state.arrivals + alpha * (entered - state.arrivals),
            arrival_s=state.arrival_s + alpha * (now_s - state.last_s - state.arrival_s),
        )

    def swing(self, snap: Snapshot, state: LoadDrivenState) -> float:
        """Standard deviation of the demand's change over one horizon (sessions)."""
        if self.headroom_model == "horizon":
            weight = max(state.weight_horizon, self._min_weight)
            return math.sqrt(state.var_horizon / weight) if weight > 0 else 0.0
        weight = max(state.weight, self._min_weight)
        return math.sqrt(state.var_rate / weight * self._horizon(snap)) if weight > 0 else 0.0

    def headroom(self, snap: Snapshot, state: LoadDrivenState) -> int:
        """Spare sessions to provision for: the ``headroom_quantile`` of the demand swing,
        or what keeps the share of entering sessions that wait within ``admission_wait_share``."""
        sigma = self.swing(snap, state)
        spare = int(self._z * sigma + _EPS)
        if self._z_cap is not None and sigma > 0:
            entering = state.arrival_rate_per_s * self._horizon(snap)
            if entering <= 0:
                k = self._z_cap
            else:
                k = min(self._z_cap, _loss_inverse(self.admission_wait_share * entering / sigma))
            spare = max(spare, math.ceil(k * sigma - _EPS))
        return spare

    def _horizon(self, snap: Snapshot) -> float:
        """The horizon ``T`` the headroom covers: ``headroom_horizon_s``, else a worker start-up."""
        return snap.worker_startup_s if self.headroom_horizon_s is None else self.headroom_horizon_s

    def _idle_since(self, snap: Snapshot) -> float | None:
        """With ``provision_idle``: sessions idle since this time or later count as demand."""
        if not self.provision_idle:
            return None
        keep = snap.worker_startup_s if self.provision_idle_s is None else self.provision_idle_s
        return snap.now_s - keep

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
        since = self._idle_since(ledger.snap)  # None without provision_idle
        if self.provision_idle:  # counted here only: no other autoscaler pays for the pass
            acted = ledger.acted
            idle = sum(1 for ld in ledger.loads.values() if ld.view.status is _RUNNING
                       for s in ld.idle if s.session_id not in acted and s.since_s >= since)
            if idle:
                census = replace(census, demand=census.demand + idle)
        if self.provision_returns:
            state = self.observe_returns(state, now, ledger.snap)
            expected = len(state.suspended) * state.return_rate_per_s * ledger.snap.worker_startup_s
            census = replace(census, demand=census.demand + int(expected + 0.5))
        if self.admission_wait_share is not None:
            state = self.observe_arrivals(state, now, _demand_ids(ledger.snap, since))
        if self.headroom_model == "horizon":
            state = self.observe_horizon(state, now, census.demand, self._horizon(ledger.snap))
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


_WANTS_SLOT = (SessionStatus.ACTIVE, SessionStatus.MIGRATING, SessionStatus.PENDING)


def _demand_ids(snap: Snapshot, idle_since: float | None) -> frozenset[str]:
    """The sessions the demand counts: active, moving or waiting, and (``idle_since`` not
    None) the idle ones whose spell began at or after it."""
    return frozenset(
        s.session_id for s in snap.sessions
        if s.status in _WANTS_SLOT
        or (idle_since is not None and s.status is SessionStatus.IDLE and s.since_s >= idle_since)
    )


_STANDARD_NORMAL = NormalDist()


def _normal_loss(k: float) -> float:
    """``E[(Z - k)+]`` for a standard normal ``Z``."""
    return _STANDARD_NORMAL.pdf(k) - k * (1.0 - _STANDARD_NORMAL.cdf(k))


def _loss_inverse(target: float) -> float:
    """The ``k >= 0`` at which :func:`_normal_loss` falls to ``target`` (0 when it never rises that high)."""
    if target >= _normal_loss(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while _normal_loss(hi) > target:
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _normal_loss(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
