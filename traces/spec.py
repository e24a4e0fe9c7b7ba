"""The workload spec records: a client's model mix, rates, distributions; the whole workload.

:class:`WorkloadSpec` holds :class:`ClientSpec` entries (each with its rate, or
:class:`RateWindows` of measured rates, its inter-arrival CV and family, session
lifetime and active/idle distributions, and :class:`Variant` model mix);
:mod:`traces.generator` turns a spec into a trace, :mod:`traces.spec_io` reads and
writes specs as plain data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from traces.distributions import Dist, Family
from traces.rates import Constant, RateShape

#: Inter-arrival families a client may use (their index is the family code of :meth:`RateWindows.lookup`).
ARRIVAL_FAMILIES = (Family.GAMMA, Family.WEIBULL, Family.EXPONENTIAL)


@dataclass(frozen=True, slots=True)
class Variant:
    """One entry of a client's model/resolution mix, drawn per session with ``weight``."""

    model: str = "tiny"
    chunk_frames: int = 12
    height: int = 64
    width: int = 64
    fps: int = 16
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "height", "width", "fps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and value > 0):
                raise ValueError(f"variant {name} must be a positive integer, got {value!r}")
        if not self.weight > 0:
            raise ValueError(f"variant weight must be > 0, got {self.weight!r}")


@dataclass(frozen=True, slots=True)
class RateWindows:
    """A piecewise-constant arrival rate with a CV and family per window (ServeGen's form).

    Window ``i`` covers ``[i * window_s, (i + 1) * window_s)``; times past the last
    window wrap around (the windows are treated as one period of a cycle).
    """

    rates: tuple[float, ...]
    cvs: tuple[float, ...]
    families: tuple[str, ...]
    window_s: float = 600.0

    def __post_init__(self) -> None:
        n = len(self.rates)
        if n == 0 or len(self.cvs) != n or len(self.families) != n:
            raise ValueError(
                f"rate windows need equally long, non-empty rates/cvs/families; got "
                f"{len(self.rates)}, {len(self.cvs)}, {len(self.families)}"
            )
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s!r}")
        if min(self.rates) < 0 or not all(map(math.isfinite, self.rates)):
            raise ValueError("window rates must be finite and >= 0")
        families = tuple(str(f).lower() for f in self.families)
        known = {f.value for f in ARRIVAL_FAMILIES}
        unknown = set(families) - known
        if unknown:
            raise ValueError(f"unknown window families {sorted(unknown)}; known: {sorted(known)}")
        object.__setattr__(self, "families", families)

    @property
    def mean_rate(self) -> float:
        """Time-averaged rate over all windows."""
        return float(np.mean(self.rates))

    def mean_over(self, t0: float, t1: float) -> float:
        """Time-averaged rate over ``[t0, t1)`` (seconds, wrapping like :meth:`lookup`)."""
        if not t1 > t0:
            return self.mean_rate
        edges = np.unique(np.concatenate([
            [t0, t1], np.arange(np.ceil(t0 / self.window_s), np.floor(t1 / self.window_s) + 1)
            * self.window_s,
        ]))
        edges = edges[(edges >= t0) & (edges <= t1)]
        rate, _, _ = self.lookup(0.5 * (edges[:-1] + edges[1:]))
        return float(np.sum(rate * np.diff(edges)) / (t1 - t0))

    def lookup(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rate, CV and family code (index in ``ARRIVAL_FAMILIES``) at times ``t``."""
        i = np.floor(np.asarray(t) / self.window_s).astype(np.int64) % len(self.rates)
        names = np.asarray(self.families)
        fam = np.zeros(len(names), dtype=np.int64)
        for code, family in enumerate(ARRIVAL_FAMILIES):
            fam[names == family.value] = code
        return np.asarray(self.rates)[i], np.asarray(self.cvs)[i], fam[i]


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client (tenant): how it opens sessions and how its sessions behave.

    Parameters
    ----------
    client_id
        Name of the client (the ``client_id`` column; prefix of its session ids).
    rate
        Base session-arrival rate in sessions per second, or :class:`RateWindows`.
    interarrival
        Family of the inter-arrival times: ``gamma``, ``weibull`` or ``exponential``
        (ignored for :class:`RateWindows`, which carry a family per window).
    cv
        Target CV of the inter-arrival times (ignored for :class:`RateWindows`).
    shape
        Optional per-client rate multiplier ``m_c(t)`` (e.g. a diurnal shifted in phase).
    lifetime
        Session lifetime (open to close), heavy-tailed.
    active, idle
        Lengths of active and idle periods; ``None`` for sessions that never go idle.
    mix
        Model/resolution variants, drawn per session by weight.
    weight
        Multiplier of the client's rate (and its share under ``WorkloadSpec.total_rate``).
    """

    client_id: str
    rate: float | RateWindows = 0.1
    interarrival: Family | str = Family.GAMMA
    cv: float = 1.0
    shape: RateShape | None = None
    lifetime: Dist = Dist(Family.LOGNORMAL, 600.0, 2.0)
    active: Dist | None = Dist(Family.GAMMA, 60.0, 1.0)
    idle: Dist | None = Dist(Family.LOGNORMAL, 45.0, 2.0)
    mix: tuple[Variant, ...] = (Variant(),)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must be a non-empty string")
        fam = Family(self.interarrival)
        if fam not in ARRIVAL_FAMILIES:
            raise ValueError(
                f"client {self.client_id!r}: interarrival {fam.value!r} is not one of "
                f"{[f.value for f in ARRIVAL_FAMILIES]}"
            )
        object.__setattr__(self, "interarrival", fam)
        if fam is Family.EXPONENTIAL and self.cv != 1.0:
            raise ValueError(
                f"client {self.client_id!r}: exponential inter-arrivals have cv 1, got cv="
                f"{self.cv!r}; use gamma or weibull for another cv"
            )
        if isinstance(self.rate, (int, float)) and not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"client {self.client_id!r}: rate must be >= 0, got {self.rate!r}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"client {self.client_id!r}: cv must be > 0, got {self.cv!r}")
        if (self.active is None) != (self.idle is None):
            raise ValueError(f"client {self.client_id!r}: give both active and idle, or neither")
        if not self.mix:
            raise ValueError(f"client {self.client_id!r}: mix needs at least one variant")
        if not self.weight >= 0:
            raise ValueError(f"client {self.client_id!r}: weight must be >= 0, got {self.weight!r}")

    @property
    def mean_rate(self) -> float:
        """The time-averaged base rate (before ``weight`` and any shape)."""
        return self.rate.mean_rate if isinstance(self.rate, RateWindows) else float(self.rate)

    def mean_rate_over(self, t0: float, t1: float) -> float:
        """The base rate averaged over ``[t0, t1)`` (window time for :class:`RateWindows`)."""
        if isinstance(self.rate, RateWindows):
            return self.rate.mean_over(t0, t1)
        return float(self.rate)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A whole workload: clients, duration, an aggregate rate shape, and the seed.

    Parameters
    ----------
    clients
        The clients.
    duration_s
        Length of the trace.
    rate
        Aggregate multiplier ``m(t)`` of every client's rate (:mod:`traces.rates`).
    total_rate
        If given, the clients' rates are rescaled so that their sum (with weights, before
        ``rate`` and ``scale``), averaged over the trace's ``[0, duration_s)``, is
        ``total_rate`` sessions per second.
    scale
        Multiplier of all rates (load scaling: 2.0 is twice the sessions).
    warmup_s
        Simulated time before 0, so the trace starts in steady state.
    offset_s
        Where in the clients' :class:`RateWindows` time 0 falls (e.g. 86400 = day 2).
    seed
        Seed of all randomness.
    grid_s
        Resolution of the numerical integral of the rate (seconds).
    """

    clients: tuple[ClientSpec, ...]
    duration_s: float
    rate: RateShape = field(default_factory=Constant)
    total_rate: float | None = None
    scale: float = 1.0
    warmup_s: float = 0.0
    offset_s: float = 0.0
    seed: int = 0
    grid_s: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        if not self.clients:
            raise ValueError("a workload needs at least one client")
        ids = [c.client_id for c in self.clients]
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids must be unique, got {ids}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"duration_s must be a finite number > 0, got {self.duration_s!r}")
        for name in ("scale", "warmup_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.total_rate is not None and not self.total_rate > 0:
            raise ValueError(f"total_rate must be > 0 or None, got {self.total_rate!r}")
        if not self.grid_s > 0:
            raise ValueError(f"grid_s must be > 0, got {self.grid_s!r}")

    def client_factors(self) -> np.ndarray:
        """Per-client multiplier of its base rate: weight, ``total_rate`` and ``scale``."""
        weights = np.array([c.weight for c in self.clients], dtype=np.float64)
        factors = weights * self.scale
        if self.total_rate is not None:
            span = (self.offset_s, self.offset_s + self.duration_s)
            mean_sum = float(np.sum(weights * [c.mean_rate_over(*span) for c in self.clients]))
            if mean_sum <= 0:
                raise ValueError("total_rate needs at least one client with a rate > 0")
            factors *= self.total_rate / mean_sum
        return factors
