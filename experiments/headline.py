"""Cost-tail frontiers compared: dominance and the headline table, as pure functions.

A run is a point ``(cost, tail)``: GPU-hours and the in-stream worst chunk (or its p99).
A policy family (one policy swept over its main knob) gives several points. Family
``T`` *covers* a point ``(c, m)`` when one of its points has ``cost <= c`` and
``tail <= m``; ``T``'s frontier dominates family ``B``'s when it covers every point of
``B``. At equal cost, ``T``'s tail is the best tail among its points that cost no more
(:func:`tail_at_cost`); at equal tail, its cost is the cheapest of its points whose
tail is no worse (:func:`cost_at_tail`). Both read the frontier as a step function,
without interpolating between points, so neither flatters ``T``.

Examples
--------
>>> t = [(10.0, 1.0), (8.0, 2.0)]
>>> tail_at_cost(t, 9.0), cost_at_tail(t, 1.5)
(2.0, 10.0)
>>> uncovered(t, [(12.0, 1.5), (7.0, 3.0)])
[(7.0, 3.0)]
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

Point = tuple[float, float]

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def _finite(points: Iterable[Point]) -> list[Point]:
    return [(float(c), float(m)) for c, m in points if math.isfinite(c) and math.isfinite(m)]


def pareto(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats on both axes, by increasing cost (decreasing tail)."""
    front: list[Point] = []
    for c, m in sorted(_finite(points)):
        if not front or m < front[-1][1]:
            front.append((c, m))
    return front


def tail_at_cost(points: Iterable[Point], cost: float) -> float:
    """Best tail among ``points`` costing at most ``cost`` (NaN if none is that cheap)."""
    tails = [m for c, m in _finite(points) if c <= cost + 1e-12]
    return min(tails) if tails else float("nan")


def cost_at_tail(points: Iterable[Point], tail: float) -> float:
    """Lowest cost among ``points`` whose tail is at most ``tail`` (NaN if none is that good)."""
    costs = [c for c, m in _finite(points) if m <= tail + 1e-12]
    return min(costs) if costs else float("nan")


def covers(points: Iterable[Point], point: Point) -> bool:
    """True when some point of ``points`` costs no more and has no worse a tail than ``point``."""
    c0, m0 = point
    return any(c <= c0 + 1e-12 and m <= m0 + 1e-12 for c, m in _finite(points))


def uncovered(reference: Sequence[Point], others: Iterable[Point]) -> list[Point]:
    """The points of ``others`` that ``reference``'s frontier does not cover."""
    return [p for p in _finite(others) if not covers(reference, p)]


def mean_ci(values: Iterable[float]) -> tuple[float, float, float, int]:
    """``(mean, ci_low, ci_high, n)``: a 95% Student-t interval over the finite values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = t * float(v.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def headline(
    frontier: pd.DataFrame,
    reference: str,
    defaults: dict[str, float | None],
    *,
    tail: str = "instream_max_s",
    admission: Sequence[str] = (),
) -> pd.DataFrame:
    """The headline table: ``reference`` against every other family, over traces and seeds.

    Parameters
    ----------
    frontier
        Rows with ``trace, seed, policy, knob, gpu_hours`` and the ``tail`` column.
    reference
        The family compared (``"turboserve"``).
    defaults
        Each baseline family's standard knob value: its point at that value is the
        configuration compared (e.g. HPA at target 0.8, static at the fitted peak);
        ``None`` compares every point of the family (e.g. the one iso-cost point).
        Families not named get no reduction figures, only the coverage count.
    tail
        The tail column (``instream_max_s`` or ``instream_p99_s``).
    admission
        Admission-wait columns (e.g. ``ttfc_p99_s``, ``resume_wait_p99_s``). A policy
        can buy GPU-hours with admission waits (sessions wait for a slot rather than
        slow a stream), which the tail does not see; ``cost_reduction_same_admission``
        is the cost reduction at equal tail among ``reference``'s points whose every
        admission column is no worse than the baseline point's.

    Returns
    -------
    One row per baseline family (``oracle`` rows, a bound rather than a policy, are
    left out): ``tail_reduction`` (``1 - T's tail at B's cost / B's
    tail``) and ``cost_reduction`` (``1 - T's cost at B's tail / B's cost``), each as
    mean and 95% CI over the (trace, seed) pairs where it is defined (``n_*``: how
    many; where ``T`` has no point as cheap, or none as good, the pair is left out and
    counted in ``*_undefined``), and ``uncovered_points``: baseline points (any knob)
    that ``T``'s frontier does not cover, out of ``points``.
    """
    rows = []
    admission = [c for c in admission if c in frontier.columns]
    others = frontier[(frontier["policy"] != reference) & (frontier["policy"] != "oracle")]
    for family, group in others.groupby("policy", sort=False):
        tail_red, cost_red, undefined_t, undefined_c, missing, total = [], [], 0, 0, 0, 0
        adm_red, undefined_a = [], 0
        for (trace, seed), g in group.groupby(["trace", "seed"], sort=False):
            ref = frontier[(frontier["policy"] == reference) & (frontier["trace"] == trace) & (frontier["seed"] == seed)]
            t_points = list(zip(ref["gpu_hours"], ref[tail]))
            t_waits = ref[admission].astype(float).to_numpy() if admission else None
            b_points = list(zip(g["gpu_hours"], g[tail]))
            total += len(b_points)
            missing += len(uncovered(t_points, b_points))
            if str(family) not in defaults:
                continue
            default = defaults[str(family)]
            std = g if default is None else g[np.isclose(g["knob"].astype(float), default)]
            b_waits = std[admission].astype(float).to_numpy() if admission else None
            for i, (c_b, m_b) in enumerate(zip(std["gpu_hours"].astype(float), std[tail].astype(float))):
                m_t = tail_at_cost(t_points, c_b)
                c_t = cost_at_tail(t_points, m_b)
                if admission:
                    # NaN waits (nothing resumed) count as no wait on either side
                    ok = np.all(np.nan_to_num(t_waits, nan=0.0) <= np.nan_to_num(b_waits[i], nan=0.0) + 1e-9, axis=1)
                    c_a = cost_at_tail([p for p, keep in zip(t_points, ok) if keep], m_b)
                    if math.isfinite(c_a) and c_b > 0:
                        adm_red.append(1.0 - c_a / c_b)
                    else:
                        undefined_a += 1
                if math.isfinite(m_t) and m_b > 0:
                    tail_red.append(1.0 - m_t / m_b)
                else:
                    undefined_t += 1
                if math.isfinite(c_t) and c_b > 0:
                    cost_red.append(1.0 - c_t / c_b)
                else:
                    undefined_c += 1
        tm, tl, th, tn = mean_ci(tail_red)
        cm, cl, ch, cn = mean_ci(cost_red)
        extra = {}
        if admission:
            am, al, ah, an = mean_ci(adm_red)
            extra = {"cost_reduction_same_admission": am, "cost_reduction_same_admission_ci_low": al,
                     "cost_reduction_same_admission_ci_high": ah, "n_same_admission": an,
                     "same_admission_undefined": undefined_a}
        rows.append({
            "baseline": family, "tail": tail,
            "tail_reduction": tm, "tail_reduction_ci_low": tl, "tail_reduction_ci_high": th, "n_tail": tn,
            "tail_undefined": undefined_t,
            "cost_reduction": cm, "cost_reduction_ci_low": cl, "cost_reduction_ci_high": ch, "n_cost": cn,
            "cost_undefined": undefined_c,
            "uncovered_points": missing, "points": total, **extra,
        })
    return pd.DataFrame(rows)
