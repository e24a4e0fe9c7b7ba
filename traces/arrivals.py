"""Session arrivals of one client: a non-homogeneous renewal process by time rescaling.

Inter-arrival gaps are i.i.d. in *operational time* ``Lambda(t) = integral of rate(t)``
with mean 1 and the client's CV and family (which may change per rate window); the
arrival times are mapped back to wall time by inverting ``Lambda``.
"""

from __future__ import annotations

import math

import numpy as np

from traces.distributions import Dist, Family
from traces.spec import ARRIVAL_FAMILIES, ClientSpec, RateWindows, WorkloadSpec


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
