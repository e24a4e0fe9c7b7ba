"""Autoscalers that follow the documented rules of other serving systems, as baselines.

Registered under kind ``"autoscaling"``:

- ``ray-serve``: Ray Serve's default request-based policy
  (``python/ray/serve/autoscaling_policy.py``): the ongoing load averaged over a
  look-back window, divided by a per-replica target; a scale-up is taken once it has
  been wanted for ``upscale_delay_s`` (30 s), a scale-down after ``downscale_delay_s``
  (600 s). Sessions stand for ongoing requests; the per-replica target is
  ``target_utilisation`` of the sessions a GPU serves within the SLO.
- ``predictive``: an NVIDIA Dynamo planner-like predictive autoscaler: every
  ``adjustment_interval_s`` (180 s) it forecasts the next interval's peak demand from
  the peaks of past intervals (Holt's linear exponential smoothing, a light stand-in for
  Dynamo's default ARIMA predictor) and sets the replicas for that forecast at once.
- ``turboserve-ref``: the reference scheduler of TurboServe as a third-party
  re-implementation describes it (Tele-AI/TeleFuser,
  ``telefuser/service/livekit/turboserve.py``): budget ``max(ceil(a/c), ceil(a/(c rho)))``
  with ``a`` the active sessions, ``c`` the sessions a GPU serves and ``rho`` 0.75-0.9;
  scale out at once; scale in after a ``hold_s`` (5 s) hold, releasing the workers with
  the fewest sessions (the placement policy moves their sessions away); decisions every
  ``tick_s`` (5 s). Its migration rule (at most 3 moves a tick, each gaining more than
  40 ms after the copy) is the placement's (``migration-aware`` with those parameters).

Each keeps its memory in an explicit frozen state record, takes time from the snapshot,
and shares the size rules of :mod:`policies.autoscaling` (bounds, ``Retire`` of the
cheapest workers on scale-in).

Examples
--------
>>> from policies.registry import make
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> snap = Snapshot(now_s=0.0, workers=(WorkerView("w1", max_batch=2),), slo_s=1.0,
...                 sessions=tuple(SessionView(f"s{i}", SessionStatus.ACTIVE, "w1") for i in range(4)))
>>> policy = make("autoscaling", "turboserve-ref", rho=0.9)
>>> policy.decide(snap, policy.initial_state())[0][0].n
3
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from policies.admission import CapacityLedger
from policies.autoscaling import Census, _Autoscaler, _ceil, sessions_per_gpu
from policies.registry import register
from policies.types import DEFAULT_WORKER_MEMORY_BYTES


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class RayServeState:
    """Demand samples ``(time_s, demand)`` inside the look-back window, and since when a
    scale-up or a scale-down has been wanted."""

    samples: tuple[tuple[float, int], ...] = ()
    up_since_s: float | None = None
    down_since_s: float | None = None


@register("autoscaling", "ray-serve")
class RayServe(_Autoscaler):
    """Ray Serve's default autoscaling rule (see the module docstring).

    Parameters
    ----------
    target_utilisation
        Per-replica target as a share of the sessions one GPU serves within the SLO
        (Ray's ``target_ongoing_requests``; 0.8).
    upscale_delay_s, downscale_delay_s, look_back_period_s
        Ray Serve's defaults: 30 s, 600 s, 30 s.
    worker_max_batch, worker_memory_bytes
        Size of a new worker when the snapshot has none to copy it from.
    """

    name = "ray-serve"

    def __init__(self, *, target_utilisation: float = 0.8, upscale_delay_s: float = 30.0,
                 downscale_delay_s: float = 600.0, look_back_period_s: float = 30.0,
                 worker_max_batch: int = 32, worker_memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES) -> None:
        _check_positive(target_utilisation=target_utilisation, look_back_period_s=look_back_period_s)
        _check_nonnegative(upscale_delay_s=upscale_delay_s, downscale_delay_s=downscale_delay_s)
        self.target = float(target_utilisation)
        self.upscale_delay_s = float(upscale_delay_s)
        self.downscale_delay_s = float(downscale_delay_s)
        self.look_back_s = float(look_back_period_s)
        self.worker_max_batch, self.worker_memory_bytes = worker_max_batch, worker_memory_bytes

    def __repr__(self) -> str:
        return (f"RayServe(target_utilisation={self.target}, upscale_delay_s={self.upscale_delay_s}, "
                f"downscale_delay_s={self.downscale_delay_s}, look_back_period_s={self.look_back_s})")

    def initial_state(self) -> RayServeState:
        """No samples, nothing wanted."""
        return RayServeState()

    def _desired(self, ledger: CapacityLedger, census: Census, state: RayServeState) -> tuple[int, RayServeState, str]:
        now = ledger.snap.now_s
        current = census.current
        samples = tuple(x for x in state.samples if x[0] > now - self.look_back_s) + ((now, census.demand),)
        mean = sum(d for _, d in samples) / len(samples)
        per_replica = self.target * sessions_per_gpu(ledger, max_batch=self.worker_max_batch,
                                                     memory_bytes=self.worker_memory_bytes)
        raw = _ceil(mean / per_replica) if mean else 0
        if census.demand and census.running == 0:
            raw = max(raw, 1)
        cause = f"ray-serve: mean load {mean:.1f} over {self.look_back_s:g}s / {per_replica:.2f} per replica"
        up, down, desired = state.up_since_s, state.down_since_s, current
        if raw > current:
            up, down = (now if up is None else up), None
            if now - up >= self.upscale_delay_s:
                desired, up = raw, None
        elif raw < current:
            up, down = None, (now if down is None else down)
            if now - down >= self.downscale_delay_s:
                desired, down = raw, None
        else:
            up = down = None
        return desired, RayServeState(samples, up, down), cause


@dataclass(frozen=True, slots=True)
class PredictiveState:
    """Holt's smoothing of interval peaks (``level``, ``trend``), the current interval's
    peak so far, and when the next adjustment is due."""

    level: float | None = None
    trend: float = 0.0
    peak: int = 0
    next_adjust_s: float | None = None


@register("autoscaling", "predictive")
class Predictive(_Autoscaler):
    """A Dynamo-planner-like predictive autoscaler (see the module docstring).

    Parameters
    ----------
    target_utilisation
        Share of a GPU's SLO capacity a forecast session takes (0.8).
    adjustment_interval_s
        Seconds between adjustments (Dynamo's planner: 180).
    alpha, beta
        Holt's smoothing of the level and of the trend of interval peaks.
    worker_max_batch, worker_memory_bytes
        Size of a new worker when the snapshot has none to copy it from.
    """

    name = "predictive"

    def __init__(self, *, target_utilisation: float = 0.8, adjustment_interval_s: float = 180.0,
                 alpha: float = 0.5, beta: float = 0.3, worker_max_batch: int = 32,
                 worker_memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES) -> None:
        _check_positive(target_utilisation=target_utilisation, adjustment_interval_s=adjustment_interval_s)
        if not (0 < alpha <= 1 and 0 <= beta <= 1):
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= beta <= 1, got alpha={alpha!r}, beta={beta!r}")
        self.target = float(target_utilisation)
        self.interval_s = float(adjustment_interval_s)
        self.alpha, self.beta = float(alpha), float(beta)
        self.worker_max_batch, self.worker_memory_bytes = worker_max_batch, worker_memory_bytes

    def __repr__(self) -> str:
        return (f"Predictive(target_utilisation={self.target}, adjustment_interval_s={self.interval_s}, "
                f"alpha={self.alpha}, beta={self.beta})")

    def initial_state(self) -> PredictiveState:
        """No history; the first decision adjusts."""
        return PredictiveState()

    def forecast(self, state: PredictiveState, peak: int) -> tuple[float, PredictiveState]:
        """Fold an interval's ``peak`` into the smoothing; the next interval's forecast."""
        if state.level is None:
            level, trend = float(peak), 0.0
        else:
            level = self.alpha * peak + (1 - self.alpha) * (state.level + state.trend)
            trend = self.beta * (level - state.level) + (1 - self.beta) * state.trend
        return max(level + trend, 0.0), replace(state, level=level, trend=trend)

    def _desired(self, ledger: CapacityLedger, census: Census, state: PredictiveState) -> tuple[int, PredictiveState, str]:
        now = ledger.snap.now_s
        peak = max(state.peak, census.demand)
        if state.next_adjust_s is not None and now < state.next_adjust_s:
            if census.demand and census.running + census.starting == 0:
                return 1, replace(state, peak=peak), "predictive: no worker"
            return census.current, replace(state, peak=peak), "predictive: between adjustments"
        predicted, state = self.forecast(state, peak)
        per_gpu = self.target * sessions_per_gpu(ledger, max_batch=self.worker_max_batch,
                                                 memory_bytes=self.worker_memory_bytes)
        desired = _ceil(predicted / per_gpu) if predicted else 0
        if census.demand:
            desired = max(desired, 1)
        state = replace(state, peak=census.demand, next_adjust_s=now + self.interval_s)
        return desired, state, f"predictive: forecast peak {predicted:.1f} sessions / {per_gpu:.2f} per GPU"


@dataclass(frozen=True, slots=True)
class RefState:
    """When the last tick ran and since when the budget has been below the size."""

    last_tick_s: float | None = None
    below_since_s: float | None = None


@register("autoscaling", "turboserve-ref")
class TurboServeRef(_Autoscaler):
    """The TurboServe reference autoscaling rule, as re-implemented by TeleFuser (module docstring).

    Parameters
    ----------
    rho
        Target load per GPU as a share of its capacity (0.75-0.9 in the reference; 0.85).
    hold_s
        How long the budget must stay below the size before scaling in (5 s).
    tick_s
        Seconds between decisions (5 s).
    worker_max_batch, worker_memory_bytes
        Size of a new worker when the snapshot has none to copy it from.
    """

    name = "turboserve-ref"

    def __init__(self, *, rho: float = 0.85, hold_s: float = 5.0, tick_s: float = 5.0,
                 worker_max_batch: int = 32, worker_memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES) -> None:
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho!r}")
        _check_nonnegative(hold_s=hold_s, tick_s=tick_s)
        self.rho, self.hold_s, self.tick_s = float(rho), float(hold_s), float(tick_s)
        self.worker_max_batch, self.worker_memory_bytes = worker_max_batch, worker_memory_bytes

    def __repr__(self) -> str:
        return f"TurboServeRef(rho={self.rho}, hold_s={self.hold_s}, tick_s={self.tick_s})"

    def initial_state(self) -> RefState:
        """No tick yet."""
        return RefState()

    def _desired(self, ledger: CapacityLedger, census: Census, state: RefState) -> tuple[int, RefState, str]:
        now = ledger.snap.now_s
        current = census.current
        if state.last_tick_s is not None and now - state.last_tick_s < self.tick_s:
            return current, state, "turboserve-ref: between ticks"
        c = sessions_per_gpu(ledger, max_batch=self.worker_max_batch, memory_bytes=self.worker_memory_bytes)
        a = census.demand
        budget = max(math.ceil(a / c), _ceil(a / (c * self.rho)))
        cause = f"turboserve-ref: {a} sessions, {c} per GPU, rho {self.rho:g} -> {budget} GPUs"
        if budget >= current:
            return budget, RefState(now, None), cause
        below = now if state.below_since_s is None else state.below_since_s
        if now - below >= self.hold_s:
            return budget, RefState(now, None), cause
        return current, RefState(now, below), cause
