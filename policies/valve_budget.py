"""The quality valve's budget: may one more session be admitted over a worker's ``b*``?

Admission on the valve (``MigrationAware(valve_admission=True)``) lends a newcomer the
batch slot an idle resident keeps, while the capacity started for the newcomer is on its
way. The slot costs nothing until an idle resident comes back before that capacity takes
the surplus away; from then on the worker's whole group runs degraded steps (fewer
denoising steps) until it does. ``control.valve-budget`` bounds the share of degraded
chunks. Checking only the share *so far* lets a crowd's onset lend many slots at once,
each of which keeps degrading for up to a start-up time after the check: at 60 s
start-up the flash-crowd scenario spent 1.4% (up to 2.1%) against a 1% budget. So a lend
is priced ahead:

- a lent slot degrades, in expectation, ``g E[(T - tau)+] / period`` chunks, where ``T``
  is the worker start-up time (the longest the surplus lasts), ``g`` the sessions of the
  group and ``tau`` the time until the first of the worker's ``k`` idle residents comes
  back; taking idle spells as exponential with mean ``m``, ``tau`` is exponential with
  mean ``m / k`` and ``E[(T - tau)+] = T - (m / k) (1 - exp(-T k / m))``;
- ``m`` is the mean age of the idle sessions now (for exponential spells the age of those
  idle at a moment has the spells' own mean): long idle spells make a lend cheap;
- a group already degrading is counted for half a start-up more;
- the lend fits when the chunks degraded so far, plus what the lent slots and this one
  are expected to degrade, stay within the budget's share of the chunks made by the time
  that exposure ends (those made so far, plus one start-up of the active sessions' chunk
  rate).

At the cluster's maximum with nothing starting (``MigrationAware(valve_lend_at_max=True)``)
no capacity takes a surplus away: a degraded group stays degraded until one of its
active sessions' burst ends. A lend is priced the same way with that span instead of a
start-up: with bursts exponential of mean ``B`` (:attr:`~policies.types.Snapshot.mean_burst_s`,
learnt from the run's bursts), the first of a degraded group's ``b* + 1`` (or more)
active sessions ends its burst after an exponential time ``S`` of mean ``B / (b* + 1)``,
and a lent slot degrades ``E[(S - tau)+] = P(tau < S) E[S] = (mu / (lam + mu)) / lam``
seconds (``lam = 1 / E[S]``, ``mu = k / m``); a group already degrading, ``E[S]`` more
(memoryless). No burst ended yet: no lend at the maximum.

Pure functions of the snapshot (no Dask, no torch), shared by the live loop and the
simulator through the placement policy.

Examples
--------
>>> degraded_seconds(10.0, mean_idle_s=1.0, idle=1) > 8.9   # back within a second or so
True
>>> degraded_seconds(10.0, mean_idle_s=100.0, idle=1) < 0.5  # rarely back within the start-up
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from policies.types import SessionStatus, Snapshot

#: Share of a start-up a group already running degraded is still expected to.
DEGRADING_SHARE = 0.5


def degraded_seconds(horizon_s: float, mean_idle_s: float, idle: int) -> float:
    """``E[(T - tau)+]``: the expected time a lent slot's group runs degraded within ``horizon_s``.

    ``tau`` is the first return of ``idle`` residents whose idle spells are exponential
    with mean ``mean_idle_s``; no idle resident: nothing comes back, nothing degrades.
    """
    if idle <= 0 or horizon_s <= 0:
        return 0.0
    m = max(mean_idle_s, 1e-9) / idle
    return horizon_s - m * (1.0 - math.exp(-horizon_s / m))


def degraded_seconds_until_end(mean_span_s: float, mean_idle_s: float, idle: int) -> float:
    """``E[(S - tau)+]`` for an exponential span ``S`` of mean ``mean_span_s`` (the surplus at the maximum).

    ``tau`` as for :func:`degraded_seconds`; ``S`` and ``tau`` independent, so the group
    degrades only if a resident comes back first, and then for a whole (memoryless) span.

    >>> round(degraded_seconds_until_end(10.0, mean_idle_s=10.0, idle=1), 6)  # back first half the time
    5.0
    """
    if idle <= 0 or mean_span_s <= 0:
        return 0.0
    lam, mu = 1.0 / mean_span_s, idle / max(mean_idle_s, 1e-9)
    return mu / (lam + mu) / lam


@dataclass(frozen=True)
class ValveOutlook:
    """What the budget reads of a snapshot, once per decision.

    Attributes
    ----------
    mean_idle_s : float
        Mean age of the idle (device-resident) sessions' spells so far; the start-up
        time when none is idle.
    chunk_rate : float
        Chunks per second the active sessions make together.
    period_s : float
        Chunk period of a pending session (the newcomer's), else 1 s.
    """

    mean_idle_s: float
    chunk_rate: float
    period_s: float

    @classmethod
    def of(cls, snap: Snapshot) -> "ValveOutlook":
        ages, rate, period = [], 0.0, None
        for s in snap.sessions:
            if s.status is SessionStatus.IDLE:
                ages.append(snap.now_s - s.since_s)
            elif s.status is SessionStatus.ACTIVE:
                rate += 1.0 / s.chunk_period_s
            elif period is None and s.status is SessionStatus.PENDING:
                period = s.chunk_period_s
        mean_idle = sum(ages) / len(ages) if ages else snap.worker_startup_s
        return cls(mean_idle, rate, 1.0 if period is None else period)


@dataclass(frozen=True)
class LentWorker:
    """A running worker holding more resident sessions than its ``b*`` (a slot was lent)."""

    residents: int  # active and idle sessions on it
    idle: int  # of which idle (each may come back)
    degrading: bool  # more active sessions than b*: its group runs degraded now
    period_s: float  # its sessions' chunk period
    batch: int = 1  # its b* (its group degrades with b* + 1 or more active sessions)


def lend_fits(snap: Snapshot, outlook: ValveOutlook, lent: Iterable[LentWorker], group: int, budget: float,
              *, degrading: bool = False, at_max_batch: int | None = None) -> bool:
    """Whether lending one more slot (its worker then runs ``group`` sessions) keeps within ``budget``.

    ``budget``: the share of chunks that may be degraded (``control.valve-budget``).
    ``degrading``: the slot is a full worker's (no idle resident's), so its group runs
    degraded from the lend on: priced for a whole start-up (at the maximum, a whole span).
    ``at_max_batch``: the cluster is at its maximum with nothing starting and the
    lending worker's ``b*`` is this: the surplus lasts until a burst of the group ends
    (priced with the snapshot's mean burst; none known: it does not fit).
    """
    if snap.degraded_chunks > budget * snap.chunks_made:
        return False  # spent already
    if at_max_batch is None:
        horizon = snap.worker_startup_s
        exposure = horizon if degrading else degraded_seconds(horizon, outlook.mean_idle_s, 1)
    else:
        burst = snap.mean_burst_s
        if burst is None:
            return False
        horizon = burst / (at_max_batch + 1)
        exposure = horizon if degrading else degraded_seconds_until_end(horizon, outlook.mean_idle_s, 1)
    expected = group * exposure / outlook.period_s
    for w in lent:
        if at_max_batch is None:
            if w.degrading:
                spent = DEGRADING_SHARE * horizon
            else:
                spent = degraded_seconds(horizon, outlook.mean_idle_s, w.idle)
        else:
            span = burst / (w.batch + 1)
            spent = span if w.degrading else degraded_seconds_until_end(span, outlook.mean_idle_s, w.idle)
        expected += w.residents * spent / w.period_s
    allowed = budget * (snap.chunks_made + outlook.chunk_rate * horizon) - snap.degraded_chunks
    return expected <= allowed
