"""ServeGen-style workload composer: per-client session arrivals and session lifecycles.

A workload is a set of clients (tenants). Each client opens sessions as a
*non-homogeneous renewal process*: inter-arrival times in *operational time*
``Lambda(t) = integral of rate(t)`` are i.i.d. with mean 1 and the client's target CV
(Gamma or Weibull, as ServeGen fits them), and are mapped back to wall time by inverting
``Lambda`` (time rescaling). Every session then follows an explicit state machine::

    open (active) --active period--> idle --idle period--> active --> ... --> close

with a heavy-tailed lifetime (lognormal or Pareto) and active/idle period lengths drawn
from the client's distributions; the session closes when its lifetime ends, whatever
state it is in.

Where this improves on ServeGen's generator:

* counts per window are random (a renewal process over the whole trace), not a fixed
  ``rate * window`` number of requests spread over each window;
* state is carried across windows: the renewal process continues through a window
  boundary (the gap that crosses it is drawn with the CV of the window it starts in),
  and sessions span windows;
* sessions have an explicit lifecycle, not independent one-shot requests;
* ``warmup_s`` starts the trace in steady state: sessions opened before time 0 that are
  still alive appear as ``open`` at 0 (followed by ``idle`` at 0 if they were idle).

Sessions still alive at ``duration_s`` are closed at ``duration_s``. Everything is drawn
from ``numpy.random.Generator`` streams spawned from the spec's seed (one per client, so
adding a client does not change the others): the same spec gives the same frame.

Examples
--------
>>> spec = WorkloadSpec(clients=(ClientSpec("c0", rate=0.5, cv=2.0),), duration_s=600.0)
>>> df = generate(spec)
>>> list(df.columns[:4])
['time_s', 'session_id', 'event', 'client_id']
>>> generate(spec).equals(df)  # the same spec and seed give the same trace
True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from traces.distributions import Dist, Family
from traces.rates import Constant, RateShape, rate_from_dict
from traces.schema import COLUMNS, EVENT_NAMES, SHAPE_COLUMNS

OPEN, ACTIVE, IDLE, CLOSE = range(4)
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


# ---------------------------------------------------------------------------------------
# Arrivals


def _rate_grid(
    client: ClientSpec, spec: WorkloadSpec, factor: float, t0: float, t1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid times, cumulative rate ``Lambda`` at them, and CV/family per grid cell."""
    n_cells = max(1, math.ceil((t1 - t0) / spec.grid_s))
    edges = np.minimum(t0 + spec.grid_s * np.arange(n_cells + 1), t1)
    if isinstance(client.rate, RateWindows):
        # Put window boundaries exactly on the grid so a window's rate is not smeared.
        w = client.rate.window_s
        first, last = math.ceil((t0 + spec.offset_s) / w), math.floor((t1 + spec.offset_s) / w)
        bounds = np.arange(first, last + 1) * w - spec.offset_s
        edges = np.unique(np.concatenate([edges, bounds[(bounds > t0) & (bounds < t1)]]))
    mid = 0.5 * (edges[:-1] + edges[1:])
    if isinstance(client.rate, RateWindows):
        rate, cv, fam = client.rate.lookup(mid + spec.offset_s)
    else:
        rate = np.full(len(mid), client.rate)
        cv = np.full(len(mid), client.cv)
        fam = np.full(len(mid), ARRIVAL_FAMILIES.index(Family(client.interarrival)))
    rate = rate * factor * spec.rate(mid)
    if client.shape is not None:
        rate = rate * client.shape(mid)
    if np.any(rate < 0) or not np.all(np.isfinite(rate)):
        raise ValueError(f"client {client.client_id!r}: the rate became negative or non-finite")
    big_lambda = np.concatenate([[0.0], np.cumsum(rate * np.diff(edges))])
    return edges, big_lambda, cv, fam


def _renewal(
    rng: np.random.Generator, seg_edges: np.ndarray, seg_cv: np.ndarray, seg_fam: np.ndarray
) -> np.ndarray:
    """Arrival times in operational time on ``[0, seg_edges[-1])`` of a unit-rate renewal
    process whose gap CV and family change at ``seg_edges`` (a gap takes the segment it
    starts in)."""
    end_all = float(seg_edges[-1])
    if end_all <= 0:
        return np.empty(0)
    out: list[np.ndarray] = []

    def gaps(seg: int, n: int) -> np.ndarray:
        cv = float(seg_cv[seg])
        fam = ARRIVAL_FAMILIES[int(seg_fam[seg])]
        if cv <= 0:
            return np.ones(n)
        return Dist(fam, 1.0, 1.0 if fam is Family.EXPONENTIAL else cv).sample(rng, n)

    # An approximately stationary start: a virtual arrival a uniform share of a gap ago.
    first_seg = int(np.searchsorted(seg_edges, 0.0, side="right") - 1)
    pos = -float(rng.uniform() * gaps(min(first_seg, len(seg_cv) - 1), 1)[0])
    while True:
        seg = int(np.searchsorted(seg_edges, max(pos, 0.0), side="right") - 1)
        if seg >= len(seg_cv):
            break
        end = float(seg_edges[seg + 1])
        expected = max(end - pos, 0.0)
        cv = max(float(seg_cv[seg]), 1.0)
        n = int(min(expected + 6.0 * cv * math.sqrt(expected + 1.0) + 16, 4_000_000))
        cs = pos + np.cumsum(gaps(seg, n))
        k = int(np.searchsorted(cs, end, side="left"))
        if k == n:
            out.append(cs)
            pos = float(cs[-1])
            continue
        out.append(cs[: k + 1])  # the arrival that crosses into a later segment, if any
        pos = float(cs[k])
        if pos >= end_all:
            break
    s = np.concatenate(out) if out else np.empty(0)
    return s[(s >= 0) & (s < end_all)]


def _invert(edges: np.ndarray, big_lambda: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Wall times at operational times ``s`` (``Lambda`` is piecewise linear on ``edges``)."""
    i = np.clip(np.searchsorted(big_lambda, s, side="right"), 1, len(big_lambda) - 1)
    lo, hi = big_lambda[i - 1], big_lambda[i]
    frac = np.where(hi > lo, (s - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return edges[i - 1] + frac * (edges[i] - edges[i - 1])


def arrivals(
    client: ClientSpec, spec: WorkloadSpec, rng: np.random.Generator, factor: float = 1.0
) -> np.ndarray:
    """Session-open times of ``client`` on ``[-spec.warmup_s, spec.duration_s)``."""
    t0, t1 = -spec.warmup_s, spec.duration_s
    edges, big_lambda, cv, fam = _rate_grid(client, spec, factor, t0, t1)
    change = np.flatnonzero((np.diff(cv) != 0) | (np.diff(fam) != 0)) + 1
    starts = np.concatenate([[0], change])
    seg_edges = np.concatenate([big_lambda[starts], [big_lambda[-1]]])
    s = _renewal(rng, seg_edges, cv[starts], fam[starts])
    t = _invert(edges, big_lambda, s)
    return np.clip(t, t0, np.nextafter(t1, -np.inf))


# ---------------------------------------------------------------------------------------
# Session lifecycles


def _toggles(
    rng: np.random.Generator, lifetimes: np.ndarray, active: Dist, idle: Dist
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Active/idle switch times of every session, as offsets from its open.

    Returns ``(session index, offset, k)``: toggle ``k`` (0-based) of a session goes idle
    for even ``k`` and active for odd ``k``; only toggles before the lifetime are kept.
    """
    n = len(lifetimes)
    sess_out, off_out, k_out = [], [], []
    idx = np.arange(n)
    carry = np.zeros(n)
    done_k = np.zeros(n, dtype=np.int64)
    pairs = 4
    while len(idx):
        steps = np.empty((len(idx), 2 * pairs))
        steps[:, 0::2] = active.sample(rng, (len(idx), pairs))
        steps[:, 1::2] = idle.sample(rng, (len(idx), pairs))
        cs = carry[idx, None] + np.cumsum(steps, axis=1)
        keep = cs < lifetimes[idx, None]
        r, c = np.nonzero(keep)
        sess_out.append(idx[r])
        off_out.append(cs[r, c])
        k_out.append(done_k[idx][r] + c)
        carry[idx] = cs[:, -1]
        done_k[idx] += 2 * pairs
        idx = idx[keep[:, -1]]
        pairs = min(pairs * 2, 64)
    return np.concatenate(sess_out), np.concatenate(off_out), np.concatenate(k_out)


@dataclass(slots=True)
class EventArrays:
    """Event columns of one client before the final sort: time, session index, event code
    (0 open, 1 active, 2 idle, 3 close). Each session's events must appear in its own
    order (the final sort by time is stable, so equal times keep that order)."""

    time: np.ndarray
    session: np.ndarray
    code: np.ndarray


def lifecycle(
    client: ClientSpec,
    opens: np.ndarray,
    lifetimes: np.ndarray,
    rng: np.random.Generator,
    duration_s: float,
) -> tuple[EventArrays, np.ndarray]:
    """Events of sessions opening at ``opens`` (sorted) and living ``lifetimes``.

    Active/idle periods come from ``client.active``/``client.idle`` and the model variant
    from ``client.mix``. Sessions opened before 0 enter at 0 in the state they are in
    then; sessions alive at ``duration_s`` close there. Session indices are positions in
    ``opens``; returns the events and each session's variant index.
    """
    n = len(opens)
    weights = np.array([v.weight for v in client.mix], dtype=np.float64)
    variant = rng.choice(len(client.mix), size=n, p=weights / weights.sum())
    if client.active is not None and client.idle is not None and n:
        t_sess, t_off, t_k = _toggles(rng, lifetimes, client.active, client.idle)
    else:
        t_sess = t_k = np.empty(0, dtype=np.int64)
        t_off = np.empty(0)
    closes = opens + lifetimes
    alive = (closes > 0) & (opens < duration_s)  # warm-up sessions that ended before 0 drop
    closes = np.minimum(closes, duration_s)
    t_time = opens[t_sess] + t_off
    before = t_time < 0
    # A session alive at 0 that was idle then (an odd number of toggles before 0) re-enters
    # the trace as open at 0 followed by idle at 0.
    n_before = np.bincount(t_sess[before], minlength=n)
    idle_at_zero = alive & (opens < 0) & (n_before % 2 == 1)
    keep_t = ~before & (t_time < closes[t_sess]) & alive[t_sess]
    open_times = np.maximum(opens, 0.0)
    sessions = np.flatnonzero(alive)
    z = np.flatnonzero(idle_at_zero)
    events = EventArrays(
        time=np.concatenate([open_times[sessions], np.zeros(len(z)), t_time[keep_t], closes[sessions]]),
        session=np.concatenate([sessions, z, t_sess[keep_t], sessions]),
        code=np.concatenate([
            np.full(len(sessions), OPEN), np.full(len(z), IDLE),
            np.where(t_k[keep_t] % 2 == 0, IDLE, ACTIVE), np.full(len(sessions), CLOSE),
        ]),
    )
    return events, variant


def assemble(parts: list[tuple[str, EventArrays, list[Variant]]]) -> pd.DataFrame:
    """Build a trace frame from per-client events.

    Each part is ``(client_id, events, variant of each session)``; session indices in
    ``events`` are local to the part. Sessions that have no event are dropped and the
    rest are renamed ``CLIENT-i`` in order of index (of arrival, for generated parts).
    """
    all_events: list[EventArrays] = []
    sid_parts: list[str] = []
    client_parts: list[str] = []
    variant_rows: list[Variant] = []
    offset = 0
    for client_id, ev, variants in parts:
        local = np.unique(ev.session).astype(np.int64)
        renumber = np.full(len(variants), -1, dtype=np.int64)
        renumber[local] = np.arange(len(local)) + offset
        all_events.append(EventArrays(ev.time, renumber[ev.session.astype(np.int64)], ev.code))
        sid_parts.extend(f"{client_id}-{i}" for i in range(len(local)))
        client_parts.extend([client_id] * len(local))
        variant_rows.extend(variants[int(i)] for i in local)
        offset += len(local)
    if not all_events:
        all_events.append(EventArrays(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)))
    time = np.concatenate([p.time for p in all_events])
    session = np.concatenate([p.session for p in all_events]).astype(np.int64)
    code = np.concatenate([p.code for p in all_events]).astype(np.int64)
    order = np.argsort(time, kind="stable")
    return _frame(time[order], session[order], code[order], sid_parts, client_parts, variant_rows)


def generate(spec: WorkloadSpec) -> pd.DataFrame:
    """Generate a trace (see :mod:`traces.schema`) from a workload spec.

    The frame is sorted by time (equal times keep each session's event order) and valid
    per :func:`traces.io.validate`. The same ``spec`` (seed included) always gives
    the same frame.
    """
    factors = spec.client_factors()
    seeds = np.random.SeedSequence(spec.seed).spawn(len(spec.clients))
    parts = []
    for client, factor, seed in zip(spec.clients, factors, seeds):
        rng = np.random.default_rng(seed)
        opens = arrivals(client, spec, rng, float(factor))
        lifetimes = client.lifetime.sample(rng, len(opens))
        events, variant = lifecycle(client, opens, lifetimes, rng, spec.duration_s)
        parts.append((client.client_id, events, [client.mix[int(v)] for v in variant]))
    return assemble(parts)


def _frame(
    time: np.ndarray,
    session: np.ndarray,
    code: np.ndarray,
    session_ids: list[str],
    client_ids: list[str],
    variants: list[Variant],
) -> pd.DataFrame:
    """The trace frame from event arrays and per-session attributes (vectorised)."""
    import pyarrow as pa

    def strings(values: list[str], index: np.ndarray, mask: np.ndarray | None = None) -> pd.Series:
        # Dictionary-decode in Arrow: much faster than indexing Python string objects.
        dictionary = pa.array(values or [""], type=pa.string())
        arr = pa.DictionaryArray.from_arrays(pa.array(index, type=pa.int64(), mask=mask), dictionary)
        return pd.Series(pd.array(arr.cast(pa.string()), dtype="str"))

    is_open = code == OPEN
    out = pd.DataFrame({"time_s": time.astype(np.float64)})
    out["session_id"] = strings(session_ids, session)
    out["event"] = strings(list(EVENT_NAMES), code)
    out["client_id"] = strings(client_ids, session)
    out["model"] = strings([v.model for v in variants], session, mask=~is_open)
    for col in SHAPE_COLUMNS:
        values = np.array([getattr(v, col) for v in variants] or [0], dtype=np.int64)
        col_values = pd.array(values[np.where(is_open, session, 0)], dtype="Int64")
        col_values[~is_open] = pd.NA
        out[col] = col_values
    return out[list(COLUMNS)]


# ---------------------------------------------------------------------------------------
# Specs as plain data (YAML)


def _variant_from_dict(data: dict[str, Any]) -> Variant:
    return Variant(**{k: (float(v) if k == "weight" else (str(v) if k == "model" else int(v)))
                      for k, v in data.items()})


def client_from_dict(data: dict[str, Any]) -> ClientSpec:
    """Build a :class:`ClientSpec` from plain data (the ``clients`` entries of a YAML spec).

    Keys: ``id`` (or ``client_id``), ``rate`` (a number, or rate windows
    ``{window_s, rates, cvs, families}``), ``interarrival``, ``cv``, ``shape``,
    ``lifetime``/``active``/``idle`` (``{family, mean, cv, max}`` or ``null``), ``mix``
    (list of variants), ``weight``.
    """
    data = dict(data)
    known = {"id", "client_id", "rate", "interarrival", "cv", "shape", "lifetime", "active",
             "idle", "mix", "weight"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown client keys {sorted(unknown)}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {"client_id": str(data.pop("id", data.pop("client_id", "")))}
    for key in ("rate", "cv", "weight"):
        if key in data and not (key == "rate" and isinstance(data[key], dict)):
            kwargs[key] = float(data[key])
    if isinstance(data.get("rate"), dict):
        w = dict(data["rate"])
        if set(w) != {"window_s", "rates", "cvs", "families"}:
            raise ValueError(
                f"rate windows need exactly window_s, rates, cvs, families; got {sorted(w)}"
            )
        kwargs["rate"] = RateWindows(
            tuple(map(float, w["rates"])), tuple(map(float, w["cvs"])),
            tuple(map(str, w["families"])), float(w["window_s"]),
        )
    if "interarrival" in data:
        kwargs["interarrival"] = data["interarrival"]
    if "shape" in data:
        kwargs["shape"] = None if data["shape"] is None else rate_from_dict(data["shape"])
    for key in ("lifetime", "active", "idle"):
        if key in data:
            kwargs[key] = None if data[key] is None else Dist.from_dict(data[key])
    if "mix" in data:
        kwargs["mix"] = tuple(_variant_from_dict(v) for v in data["mix"])
    return ClientSpec(**kwargs)


def spec_from_dict(data: dict[str, Any]) -> WorkloadSpec:
    """Build a :class:`WorkloadSpec` from plain data (a parsed YAML spec).

    Keys: ``clients`` (list; an entry may carry ``replicas: N`` to make N copies named
    ``ID-0 .. ID-N-1``), ``client_defaults`` (keys every client entry starts from),
    ``duration_s``, ``rate`` (see :func:`traces.rates.rate_from_dict`),
    ``total_rate``, ``scale``, ``warmup_s``, ``offset_s``, ``seed``, ``grid_s``.
    """
    data = dict(data)
    known = {"clients", "client_defaults", "duration_s", "rate", "total_rate", "scale",
             "warmup_s", "offset_s", "seed", "grid_s", "description"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown workload keys {sorted(unknown)}; known: {sorted(known)}")
    if "clients" not in data or "duration_s" not in data:
        raise ValueError("a workload spec needs 'clients' and 'duration_s'")
    clients: list[ClientSpec] = []
    defaults = dict(data.get("client_defaults") or {})
    for entry in data["clients"]:
        entry = {**defaults, **dict(entry)}
        replicas = int(entry.pop("replicas", 1))
        base = client_from_dict(entry)
        if replicas == 1:
            clients.append(base)
        else:
            clients.extend(replace(base, client_id=f"{base.client_id}-{i}") for i in range(replicas))
    return WorkloadSpec(
        clients=tuple(clients),
        duration_s=float(data["duration_s"]),
        rate=rate_from_dict(data.get("rate")),
        total_rate=None if data.get("total_rate") is None else float(data["total_rate"]),
        scale=float(data.get("scale", 1.0)),
        warmup_s=float(data.get("warmup_s", 0.0)),
        offset_s=float(data.get("offset_s", 0.0)),
        seed=int(data.get("seed", 0)),
        grid_s=float(data.get("grid_s", 5.0)),
    )


def load_spec(path: str | os.PathLike[str]) -> WorkloadSpec:
    """Read a YAML workload spec (see :func:`spec_from_dict` for the keys)."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"workload spec {os.fspath(path)!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"workload spec {os.fspath(path)!r} must be a YAML mapping")
    return spec_from_dict(data)


def client_to_dict(client: ClientSpec) -> dict[str, Any]:
    """Plain-data form of a client; inverse of :func:`client_from_dict`."""
    rate: Any = client.rate
    if isinstance(rate, RateWindows):
        rate = {"window_s": rate.window_s, "rates": list(rate.rates), "cvs": list(rate.cvs),
                "families": list(rate.families)}
    return {
        "id": client.client_id,
        "rate": rate,
        "interarrival": Family(client.interarrival).value,
        "cv": client.cv,
        "shape": None if client.shape is None else client.shape.to_dict(),
        "lifetime": client.lifetime.to_dict(),
        "active": None if client.active is None else client.active.to_dict(),
        "idle": None if client.idle is None else client.idle.to_dict(),
        "mix": [
            {"model": v.model, "chunk_frames": v.chunk_frames, "height": v.height,
             "width": v.width, "fps": v.fps, "weight": v.weight}
            for v in client.mix
        ],
        "weight": client.weight,
    }


def spec_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """Plain-data form of a workload (YAML-ready); inverse of :func:`spec_from_dict`.

    Experiments can store it with their results to record exactly what was generated.
    """
    return {
        "duration_s": spec.duration_s,
        "seed": spec.seed,
        "scale": spec.scale,
        "total_rate": spec.total_rate,
        "warmup_s": spec.warmup_s,
        "offset_s": spec.offset_s,
        "grid_s": spec.grid_s,
        "rate": spec.rate.to_dict(),
        "clients": [client_to_dict(c) for c in spec.clients],
    }
