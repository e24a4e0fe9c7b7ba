"""The offline oracle: a lower bound on GPU cost for a trace, and the latency it implies.

The oracle knows the whole trace and pays nothing for mechanisms: at every instant it
runs exactly ``ceil(active / b*)`` GPUs (at most ``gpus``), where ``b*`` is the largest
batch whose predicted step meets the SLO and whose state fits a GPU; idle sessions cost
nothing (offloaded for free), workers start instantly, sessions are spread evenly. No
online policy can provision fewer GPU-seconds while meeting the SLO with this latency
model, so it bounds cost from below; its latency is what that packing gives.

Workers that start instantly make that bound loose where start-up is long. The same
oracle paying for start-ups (:func:`startup_bound`: every worker is paid from its
request, ``startup_s`` before it serves, and with the whole trace known it keeps a
worker through a lull exactly when the lull is shorter than a start-up) is the bound
for a policy that never makes a session wait for capacity; a policy that lets
sessions wait for admission can cost less than it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from experiments.sim.workload import Workload
from policies.types import BatchLatencyModel


@dataclass(frozen=True, slots=True)
class OracleResult:
    """Cost and latency of the oracle on one trace.

    Attributes
    ----------
    gpu_seconds
        Integral of the oracle's GPU count.
    peak_gpus
        Its largest GPU count without the ``gpus`` cap (the static peak a trace needs).
    b_star
        Sessions per GPU it packs.
    gpu_seconds_startup
        The same packing paying ``startup_s`` for each worker start
        (:func:`startup_bound`; equal to ``gpu_seconds`` with instant start-up).
    max_latency_s, p99_latency_s, p50_latency_s, slo_attainment
        Over the chunks it would serve (chunk-weighted).
    """

    gpu_seconds: float
    peak_gpus: int
    b_star: int
    max_latency_s: float
    p99_latency_s: float
    p50_latency_s: float
    slo_attainment: float
    gpu_seconds_startup: float = math.nan


def best_batch(latency: BatchLatencyModel, slo_s: float, max_batch: int, state_bytes: int, memory_bytes: float) -> int:
    """Largest batch ``b <= max_batch`` with ``predict(b) <= slo_s`` and ``b`` states in memory (>= 1)."""
    b_star = 1
    for b in range(2, max_batch + 1):
        if latency.predict(b) > slo_s or b * state_bytes > memory_bytes:
            break
        b_star = b
    return b_star


def active_series(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """``(times, active)``: the number of active sessions from each event time on.

    An event counts when it changes its session's state (open/active vs idle/closed)
    from the session's previous event (none: not active): each session's events in
    trace order, compared with the one before, then the changes summed in trace order.
    """
    session = np.asarray(workload.session_index, dtype=np.int64)
    on = np.asarray(workload.event_code) <= 1
    if session.size == 0:
        return workload.times, np.zeros(0, dtype=np.int64)
    order = np.argsort(session, kind="stable")  # each session's events, in trace order
    s_session, s_on = session[order], on[order]
    before = np.empty_like(s_on)  # the session's state before each of its events
    before[0] = False
    before[1:] = s_on[:-1]
    before[np.flatnonzero(s_session[1:] != s_session[:-1]) + 1] = False  # a session's first event
    change = np.zeros(session.size, dtype=np.int64)
    change[order] = (s_on != before) * np.where(s_on, 1, -1)
    return workload.times, np.cumsum(change)


def startup_bound(need: np.ndarray, durations: np.ndarray, startup_s: float, warm: int | None = None) -> float:
    """GPU-seconds of serving ``need[i]`` GPUs for ``durations[i]`` when a start costs ``startup_s``.

    The clairvoyant schedule, level by level: the ``k``-th GPU is needed on the
    intervals where ``need >= k``; between two of them it is either kept through the
    lull (paying the lull) or released and requested again ``startup_s`` before it is
    needed (paying ``startup_s``), whichever is less (offline ski rental); its first
    interval costs a start unless the cluster starts with it (``warm`` GPUs, default
    ``need[0]``), and it is released after its last. Levels are nested (a GPU needed at
    level ``k`` is needed at every lower one), so the levels' costs add up to the least
    GPU-seconds of any schedule that always has ``need`` GPUs serving.

    30 s of serving, the 5 s lull kept, the 100 s lull replaced by one 20 s start:

    >>> startup_bound(np.array([1, 0, 1, 0, 1]), np.array([10.0, 5.0, 10.0, 100.0, 10.0]), 20.0)
    55.0
    """
    need = np.asarray(need, dtype=np.int64)
    durations = np.asarray(durations, dtype=float)
    if need.size == 0:
        return 0.0
    warm = int(need[0]) if warm is None else int(warm)
    total = 0.0
    for k in range(1, int(need.max()) + 1):
        on = need >= k
        total += float(durations[on].sum())
        idx = np.flatnonzero(on)
        first, last = idx[0], idx[-1]
        if k > warm:
            total += startup_s
        # lulls: runs of "off" strictly between the first and last interval on
        off = ~on[first:last + 1]
        if off.any():
            d = durations[first:last + 1]
            edges = np.diff(np.concatenate(([0], off.astype(np.int8), [0])))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            cum = np.concatenate(([0.0], np.cumsum(d)))
            lulls = cum[ends] - cum[starts]
            total += float(np.minimum(lulls, startup_s).sum())
    return total


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, q * cum[-1])])


def _demand(workload: Workload, b_star: int, end_s: float | None,
            start_s: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(durations, active, need)`` of the trace's intervals of non-zero length within
    ``[start_s, end]``: active sessions and the GPUs they need at ``b_star`` a GPU."""
    times, active = active_series(workload)
    end = workload.end_s if end_s is None else end_s
    durations = np.diff(np.clip(np.append(times, end), start_s, None))
    keep = durations > 0
    durations, active = durations[keep], active[keep]
    return durations, active, np.ceil(active / b_star).astype(np.int64)


def oracle_peak(workload: Workload, latency: BatchLatencyModel, *, slo_s: float, max_batch: int, state_bytes: int,
                memory_bytes: float, end_s: float | None = None) -> int:
    """:attr:`OracleResult.peak_gpus` of :func:`oracle_bound` alone (what fitting a trace's
    scale asks for, several times a trace), without its costs and latencies."""
    b_star = best_batch(latency, slo_s, max_batch, state_bytes, memory_bytes)
    need = _demand(workload, b_star, end_s)[2]
    return int(need.max()) if need.size else 0


def oracle_bound(
    workload: Workload,
    latency: BatchLatencyModel,
    *,
    slo_s: float,
    max_batch: int,
    state_bytes: int,
    memory_bytes: float,
    gpus: int | None = None,
    end_s: float | None = None,
    startup_s: float = 0.0,
    start_s: float = 0.0,
) -> OracleResult:
    """Compute the :class:`OracleResult` of ``workload`` (see the module docstring).

    ``startup_s``: the worker start-up time :attr:`OracleResult.gpu_seconds_startup` pays.
    ``start_s``: the start of the measurement window; costs and latencies cover
    ``[start_s, end]`` (the start-up-paying oracle then starts warm with what ``start_s``
    needs), the peak stays the whole trace's (what a static cluster must hold).
    """
    b_star = best_batch(latency, slo_s, max_batch, state_bytes, memory_bytes)
    peak_need = _demand(workload, b_star, end_s)[2] if start_s > 0 else None
    durations, active, need = _demand(workload, b_star, end_s, start_s)
    if peak_need is None:
        peak_need = need
    peak = int(peak_need.max()) if peak_need.size else 0
    gpus_used = np.minimum(need, gpus) if gpus is not None else need
    period = float(np.median(workload.period_s)) if len(workload.period_s) else 1.0
    busy = active > 0
    instant = float((gpus_used * durations).sum())
    with_startup = startup_bound(gpus_used, durations, startup_s) if startup_s > 0 else instant
    if not busy.any():
        return OracleResult(instant, peak, b_star, *(4 * [math.nan]), with_startup)
    batch = np.ceil(active[busy] / np.maximum(gpus_used[busy], 1)).astype(int)
    sizes, which = np.unique(batch, return_inverse=True)  # a few sizes over ~10^6 intervals
    lat = np.array([latency.predict(int(b)) for b in sizes])[which]
    chunks = active[busy] * durations[busy] / period
    return OracleResult(
        gpu_seconds=instant,
        peak_gpus=peak,
        b_star=b_star,
        max_latency_s=float(lat.max()),
        p99_latency_s=_weighted_quantile(lat, chunks, 0.99),
        p50_latency_s=_weighted_quantile(lat, chunks, 0.5),
        slo_attainment=float(chunks[lat <= slo_s + 1e-9].sum() / chunks.sum()),
        gpu_seconds_startup=with_startup,
    )


def active_spells(workload: Workload) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(start, end, first)`` of every active spell of every session, in trace order.

    A spell starts at an open or active event of a session that is not active and ends
    at its next idle or close event (the end of the trace if none); one that ends where
    it starts asks for no chunk and is left out. ``first`` marks each session's first
    spell (its first chunk's; the others begin with a resume).
    """
    active = np.zeros(len(workload.session_ids), dtype=bool)
    open_at = np.zeros(len(workload.session_ids), dtype=np.int64)
    start: list[float] = []
    end: list[float] = []
    who: list[int] = []
    for t, s, code in zip(workload.times.tolist(), workload.session_index.tolist(), workload.event_code.tolist()):
        if code <= 1 and not active[s]:
            active[s] = True
            open_at[s] = len(start)
            start.append(t)
            end.append(workload.end_s)
            who.append(s)
        elif code > 1 and active[s]:
            active[s] = False
            end[open_at[s]] = t
    starts, ends, sessions = np.asarray(start, dtype=float), np.asarray(end, dtype=float), np.asarray(who)
    keep = ends > starts
    starts, ends, sessions = starts[keep], ends[keep], sessions[keep]
    first = np.zeros(starts.size, dtype=bool)
    first[np.unique(sessions, return_index=True)[1]] = True
    return starts, ends, first


def admission_bound(workload: Workload, *, warm_slots: int, slots: int, startup_s: float, step_s: float,
                    q: float = 0.99, resumes: bool = False,
                    spells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> float:
    """A lower bound on the ``q`` quantile of admission waits for a family of policies.

    The family: every policy that never runs more active sessions on a worker than its
    batch cap ``b*`` (no step over it, no degraded step) and never takes a slot from an
    active session, on a cluster that starts with ``warm_slots`` batch slots (the warm
    workers times ``b*``) and has at most ``slots`` once the workers asked for at time 0
    are up (``startup_s`` later). A burst's first chunk can start only once its session
    holds a slot, and it holds it until the burst ends; the sessions active at the first
    instant hold the warm slots they start in.

    ``resumes`` False: the bound is on TTFC (sessions' first chunks), and a returning
    session is let take no slot (a policy may put it off: its wait is not a TTFC).
    True: on the larger of the TTFC and resume-wait quantiles (every burst asks for a
    slot; if both quantiles were below ``x``, at most ``1 - q`` of all bursts would wait
    longer than ``x``). Relaxations in the policies' favour, so the bound stays one: an
    idle session holds no slot; a burst that ends before it could have waited ``x`` is
    not counted as waiting ``x``. For any ``x`` and instant ``t``, the bursts asked for
    by ``t - x`` and still on at ``t`` that started within ``x`` all hold a slot at
    ``t``, so at least that many minus the free slots waited longer than ``x``; where
    that exceeds ``1 - q`` of the bursts, the quantile is above ``x + step_s``. Returns
    the largest such ``x`` plus ``step_s`` (``step_s`` alone when no wait is forced).
    ``spells``: :func:`active_spells` of ``workload``, when the caller has it already.
    """
    start, end, first = active_spells(workload) if spells is None else spells
    if not start.size:
        return 0.0
    t0 = float(start.min())
    initial = (start <= t0) & first
    ends0 = np.sort(end[initial])  # the first instant's sessions free their warm slots here
    asks = ~initial & (first | resumes)
    a, e = start[asks], end[asks]
    allowed = (1.0 - q) * (first.sum() + (~first).sum() * resumes)

    def forced(x: float) -> float:
        """Bursts that must wait longer than ``x`` (the most over any instant)."""
        keep = a + x < e
        d, ee = np.sort(a[keep] + x), np.sort(e[keep])
        if not d.size:
            return 0.0
        t = d  # the count of waiting bursts only grows at a deadline
        waiting = np.arange(1, d.size + 1) - np.searchsorted(ee, t, side="right")
        held = ends0.size - np.searchsorted(ends0, t, side="right")
        capacity = np.where(t < t0 + startup_s, warm_slots, slots)
        return float(np.max(waiting - np.maximum(capacity - held, 0)))

    if forced(0.0) <= allowed:
        return step_s
    lo, hi = 0.0, float(max(e.max() - t0, startup_s)) if e.size else startup_s
    for _ in range(40):  # forced() never grows with x: bisect for the last x that forces
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if forced(mid) > allowed else (lo, mid)
    return lo + step_s
