"""When a worker's next coalesced step starts: the batching window, bounded by deadlines.

A pure rule (no threads, no clock, no torch): the engine calls :func:`decide_batch` with
the time and what it knows, and either starts a step at once or waits, at the latest
until the returned ``wake_s``, for requests that are about to arrive. The simulator can
apply the same rule in virtual time.

The rule, for the chunks that are due now (``ready``) and the other sessions of the
worker (``expected``: when each is predicted to ask for its next chunk, ``inf`` when
there is no prediction):

1. nothing due: stay idle;
2. a full batch (``max_batch``) is due: start;
3. wait only for sessions predicted to become due inside the window, which ends
   ``window_s`` after the newest due chunk became ready or the device became free
   (``free_s``, the end of the last step), whichever is later (a prediction up to
   ``window_s`` overdue still counts); none: start. Each arrival moves the end on, so
   requests that come one after the other a little apart (``submit()`` calls made back
   to back) all join; the wait stays bounded, since only expected sessions are waited
   for and each one's arrival removes it from them;
4. never past the latest start of the earliest deadline that can still be met:
   ``min(deadline) - step_s(n)``, with ``n`` the largest batch the step can grow to
   (every session of the worker, capped at ``max_batch``), so a chunk is never delayed
   past its deadline by the wait, whatever joins; that time already passed: start. A
   chunk that misses its deadline even if the step starts now (``now + step_s(ready)``
   is later) does not bound the wait: waiting cannot cost it its deadline, and a fuller
   step serves everyone sooner under overload.

Waiting for the session that was just served is also what aligns phases: sessions whose
requests follow their deliveries (a closed loop) come out of one step together and so
ask again together.

**Made ahead.** A session whose next chunk is not asked for yet but may be made ahead
(the viewer still plays the previous one; the engine's ``prearm-chunks``) is *ahead*:
nobody waits for it, and it never starts a step. ``decide_batch`` counts such sessions
(``ahead``) towards a full batch, and :func:`join_ahead` says how many of them join a
step of due chunks. The simulator's phase alignment (``experiments.sim.step_formation``) is the same
:func:`join_ahead`, over its sessions' predicted requests.

Examples
--------
>>> step = lambda b: 0.1 * b
>>> decide_batch(1.0, ready_s=[1.0], deadlines_s=[1.75], expected_s=[1.002],
...              step_s=step, window_s=0.01, max_batch=8)
BatchDecision(start=False, wake_s=1.01, reason='window')
>>> decide_batch(1.0, ready_s=[1.0], deadlines_s=[1.15], expected_s=[1.002],
...              step_s=step, window_s=0.01, max_batch=8).reason
'deadline'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

#: Times closer than this (seconds) are the same time to the rule (float rounding).
_EPS_S = 1e-9

#: Reasons a decision gives (plain strings, for logs and tests).
REASONS = ("idle", "full", "alone", "window", "deadline", "window-over")


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """Start the next step now, or wait until ``wake_s`` at the latest.

    Attributes
    ----------
    start : bool
        True: run the step now.
    wake_s : float or None
        When waiting: decide again no later than this time (new requests decide
        earlier). None when starting or idle.
    reason : str
        One of :data:`REASONS`.
    """

    start: bool
    wake_s: float | None
    reason: str


def step_bound(measured: dict[int, float]) -> Callable[[int], float]:
    """An upper bound of the step time of batch ``b`` from measured ``{batch: seconds}``.

    The nearest measured batch at or above ``b`` (a step never costs more with fewer
    sessions), else the largest measured one scaled linearly (batching is sublinear).
    Nothing measured: ``inf``, so nothing waits before the first measurement.

    >>> f = step_bound({1: 0.1, 4: 0.2})
    >>> f(1), f(3), f(8)
    (0.1, 0.2, 0.4)
    >>> step_bound({})(2)
    inf
    """
    sizes = sorted(measured)

    def bound(b: int) -> float:
        for size in sizes:
            if size >= b:
                return measured[size]
        if not sizes:
            return math.inf
        top = sizes[-1]
        return measured[top] * b / top

    return bound


def decide_batch(
    now: float,
    *,
    ready_s: Sequence[float],
    deadlines_s: Sequence[float],
    expected_s: Sequence[float],
    step_s: Callable[[int], float],
    window_s: float,
    max_batch: int,
    free_s: float = -math.inf,
    ahead: int = 0,
) -> BatchDecision:
    """Start the next step now or wait (see the module docstring for the rule).

    Parameters
    ----------
    now : float
        The current time (any clock, the same as the other times).
    ready_s, deadlines_s : sequence of float
        Per due chunk: when it became due (its request, or the acknowledgement that let
        it through), and its deadline (the time its chunk must be done by).
    expected_s : sequence of float
        Per other session of the worker: when it is predicted to become due (``inf``:
        no prediction; it still counts towards the largest batch).
    step_s : callable
        ``step_s(b)``: predicted (upper bound of the) duration of a step of ``b``.
    window_s : float
        The batching window (0: never wait).
    max_batch : int
        Most sessions in one step.
    free_s : float
        When the device became free (the end of the last step); the window ends no
        earlier than ``window_s`` after it.
    ahead : int
        Sessions whose next chunk may be made ahead of its request, not waited for:
        they count towards a full batch and the largest one (how many join:
        :func:`join_ahead`).
    """
    if not ready_s:
        return BatchDecision(False, None, "idle")
    n_ready = len(ready_s)
    if n_ready + ahead >= max_batch:
        return BatchDecision(True, None, "full")
    window_end = max(max(ready_s), free_s) + window_s
    joinable = [t for t in expected_s if now - window_s <= t <= window_end]
    if window_s <= 0 or not joinable:
        return BatchDecision(True, None, "alone")
    largest = min(max_batch, n_ready + ahead + len(expected_s))
    alone = step_s(n_ready)  # (d - step >= now, not now + step <= d: the same rounding as `latest`)
    # A deadline met exactly (to rounding, _EPS_S) counts as meetable, and a latest start
    # that rounding puts a hair after now is now: a wait can never land past it.
    meetable = [d for d in deadlines_s if d - alone >= now - _EPS_S]
    latest = min(meetable) - step_s(largest) if meetable else math.inf
    if latest <= now + _EPS_S:
        return BatchDecision(True, None, "deadline")
    if window_end <= now:
        return BatchDecision(True, None, "window-over")
    if latest < window_end:
        return BatchDecision(False, latest, "deadline")
    return BatchDecision(False, window_end, "window")


def join_ahead(
    now: float,
    *,
    deadlines_s: Sequence[float],
    candidates_s: Sequence[float],
    slo_s: float,
    n_active: int,
    max_batch: int,
    step_s: Callable[[int], float],
    firsts: Sequence[bool] = (),
    gain_s: Callable[[int], float] | None = None,
) -> int:
    """How many sessions whose chunk may be made ahead join a step that starts at ``now``.

    ``deadlines_s``: the due chunks' deadlines; ``candidates_s``: the sessions that may
    join, as their predicted next request, soonest first (they join in that order, so
    the answer ``k`` means the first ``k``). A candidate joins only while

    - the step has room (``max_batch``);
    - batching pays: one more session costs at most half a batch-1 step;
    - the step still ends by the deadline of every due chunk that would meet it without
      the joins (a chunk late anyway constrains nothing), unless waiting for the next
      step (of the worker's ``n_active`` sessions) would make the candidate's chunk
      (due at its request plus ``slo_s``) later than the join makes theirs: the worst
      lateness of the two stays the lower;
    - a due chunk that is the first of a burst (``firsts``: a session's first chunk, or
      the first after a resume; an admission wait, no in-stream deadline) yields to the
      in-stream chunks: a candidate joins over its deadline when waiting for the next
      step would make the candidate's chunk late at all, and not otherwise. A newcomer
      whose first step would run alone while the others become due during it is so
      started together with them (its first chunk comes one batch increment later)
      instead of making them wait for its solo step and then miss theirs; the worker's
      sessions stay in one phase.

    ``step_s(n)`` is the predicted step time of ``n`` sessions. The live engine and the
    simulator's phase alignment both call this. ``gain_s`` (default ``step_s``): the
    step times the batching-pays test compares (only their shape matters). The live
    engine passes its fastest measured step per batch size: on a loaded machine the
    recent (averaged) step times of different batch sizes are inflated by different
    amounts, so their differences are noise (a step of 4 measured at 3.3x a step of 1,
    a step of 2 faster than a step of 1), and a test of differences of half a step
    refused joins at random, splitting steps that the model batches well.

    >>> step = lambda n: 0.1 + 0.02 * n
    >>> join_ahead(0.0, deadlines_s=[1.0], candidates_s=[0.3, 0.4], slo_s=0.75,
    ...            n_active=3, max_batch=8, step_s=step)
    2
    >>> join_ahead(0.0, deadlines_s=[0.13], candidates_s=[0.3], slo_s=0.75,
    ...            n_active=2, max_batch=8, step_s=step)
    0
    >>> late = lambda n: 0.3 * (1 + 0.3 * (n - 1))   # a newcomer's first chunk, four due during its step
    >>> join_ahead(0.57, deadlines_s=[0.875], candidates_s=[0.75] * 4, slo_s=0.75,
    ...            n_active=5, max_batch=8, step_s=late, firsts=[True])
    4
    >>> join_ahead(0.57, deadlines_s=[0.875], candidates_s=[0.75] * 4, slo_s=0.75,
    ...            n_active=5, max_batch=8, step_s=late)   # as an in-stream chunk: it keeps its step
    0
    """
    n = len(deadlines_s)
    end = now + step_s(n) if n else now
    # The earliest deadline the step still meets, of the in-stream chunks and of the first
    # chunks apart (one pass: this runs for every step of every simulated worker).
    limit = limit_first = math.inf
    if any(firsts):
        first = list(firsts) + [False] * (n - len(firsts))
        for d, f in zip(deadlines_s, first):
            if d >= end:
                if f:
                    if d < limit_first:
                        limit_first = d
                elif d < limit:
                    limit = d
    else:
        for d in deadlines_s:
            if end <= d < limit:
                limit = d
    gain = step_s if gain_s is None else gain_s
    pays = 0.5 * gain(1)
    next_step = step_s(min(n_active, max_batch))
    joined = 0
    for t_req in candidates_s:
        if n >= max_batch:
            break
        t_next = step_s(n + 1)
        if gain(n + 1) - gain(n) > pays:
            break
        waited = end + next_step - (t_req + slo_s)  # the candidate's lateness if it waits
        imposed = now + t_next - limit  # lateness the join puts on a due in-stream chunk
        if imposed > 0 and imposed > waited:
            break
        if now + t_next > limit_first and waited <= 0:  # a first chunk waits only for a late one
            break
        joined += 1
        n += 1
        end = now + t_next
    return joined


def _better(key: tuple[float, float, int], than: tuple[float, float, int]) -> bool:
    """``key < than``, the lateness terms compared up to a rounding error."""
    for a, b in zip(key[:2], than[:2]):
        if a < b - 1e-12:
            return True
        if a > b + 1e-12:
            return False
    return key[2] < than[2]


def split_due(now: float, deadlines_s: Sequence[float], step_s: Callable[[int], float],
              firsts: Sequence[bool] = ()) -> tuple[int, ...]:
    """Which of the due chunks the step starting at ``now`` takes (indices, ascending).

    All of them when the full step meets every deadline. When it would miss one, the
    step takes a part that meets *every* in-stream deadline, the rest running in the
    step right after (the part ends at ``now + step_s(n)``, the rest at ``now +
    step_s(n) + step_s(m - n)``); among the parts that do, the one with the lowest worst
    ``end - deadline``, the larger on a tie. The parts tried are the earliest-deadline
    prefixes of the in-stream chunks together with those of the first chunks (below).
    Where batching pays little (a step of two costs about two steps of one) a chunk
    that already waited is then served alone first instead of sharing a longer step with
    a chunk that just became due, and both are on time; where it pays, or when no part
    saves every in-stream deadline (an overloaded worker, where a smaller step only
    lowers throughput), the full batch is kept. The live engine and the simulator both
    call this.

    ``firsts``: per due chunk, True when it is the first of a burst (an admission wait,
    no in-stream deadline). Its deadline never forces a part to miss an in-stream one:
    among the parts that keep every in-stream deadline, the one whose first chunks are
    least late wins (a newcomer that can still be on time goes alone first; one already
    late goes after the in-stream chunks due with it instead of making them late too).
    A caller marks a first chunk it has put off once as not first, so none is put off
    again and again.
    Where batching pays (one more session costs at most half a batch-1 step, as in
    :func:`join_ahead`) its deadline does not count and it is never put off: the
    newcomer shares the step of the chunks due with it and so falls into their phase, instead of a solo
    step that puts it out of phase with them; its first chunk comes one batch
    increment later.

    >>> linear = lambda n: 0.344 * n                   # batching gains nothing
    >>> split_due(0.0, [0.41, 0.75], linear)           # the first chunk waited 0.34 s already
    (0,)
    >>> split_due(0.0, [0.75, 0.75], linear)           # both just due: one step of two
    (0, 1)
    >>> split_due(0.0, [0.41, 0.75], lambda n: 0.344 * (1 + 0.1 * (n - 1)))  # batching pays
    (0, 1)
    >>> split_due(0.0, [0.35, 0.75, 0.75], lambda n: 0.344 * (1 + 0.1 * (n - 1)))
    (0,)
    >>> split_due(0.0, [0.30, 0.75, 0.75], lambda n: 0.344 * (1 + 0.1 * (n - 1)))  # no split saves all
    (0, 1, 2)
    >>> split_due(0.0, [0.35, 0.75, 0.75], lambda n: 0.344 * (1 + 0.1 * (n - 1)),
    ...           firsts=[True, False, False])   # a newcomer's first chunk: it shares the step
    (0, 1, 2)
    >>> split_due(0.0, [0.41, 0.75], linear, firsts=[True, False])  # batching gains nothing
    (0,)
    >>> split_due(0.0, [-0.3, 0.4], linear, firsts=[True, False])  # a late newcomer goes after
    (1,)
    """
    m = len(deadlines_s)
    if m <= 1:
        return tuple(range(m))
    t1, t_full = step_s(1), step_s(m)
    first = [bool(f) for f in list(firsts)[:m]] + [False] * (m - len(firsts))
    by_deadline = sorted(range(m), key=lambda i: deadlines_s[i])
    hard = [i for i in by_deadline if not first[i]]
    soft = [i for i in by_deadline if first[i]]
    if soft and t_full - step_s(m - 1) <= 0.5 * t1:
        hard_only = True  # batching pays: a first chunk's deadline does not count
    else:
        hard_only = False

    def lateness(part: list[int]) -> tuple[float, float]:
        """Worst lateness of the in-stream and of the first chunks when ``part`` goes first."""
        end_part = now + step_s(len(part))
        end_rest = end_part + step_s(m - len(part)) if len(part) < m else end_part
        taken = set(part)
        worst_hard = worst_soft = -math.inf
        for i in range(m):
            late = (end_part if i in taken else end_rest) - deadlines_s[i]
            if first[i]:
                worst_soft = max(worst_soft, late)
            else:
                worst_hard = max(worst_hard, late)
        return worst_hard, (-math.inf if hard_only else worst_soft)

    full_hard, full_soft = lateness(list(range(m)))
    if full_hard <= 0 and full_soft <= 0:
        return tuple(range(m))
    best, best_key = None, None
    for p in range(len(hard), -1, -1):
        # where batching pays the first chunks always share the step (never put off)
        for q in range(len(soft), -1 if not hard_only else len(soft) - 1, -1):
            part = hard[:p] + soft[:q]
            if not part:
                continue
            h, f = (full_hard, full_soft) if len(part) == m else lateness(part)
            if h > 1e-12:
                continue  # a part must keep every in-stream deadline
            key = (max(f, 0.0), max(h, f), -len(part))
            if best_key is None or _better(key, best_key):
                best, best_key = part, key
    if best is None:
        return tuple(range(m))
    return tuple(sorted(best))


def step_estimate(measured: dict[int, float]) -> Callable[[int], float]:
    """A central estimate of the step time of batch ``b`` from measured ``{batch: seconds}``.

    Linear between measured batches, the smallest one's below it, and beyond the largest
    along the slope of the last two (flat with one measurement: until a larger batch is
    measured, joining looks free, and the next step measures it). Nothing measured:
    ``inf``. For :func:`join_ahead`'s marginal costs, where :func:`step_bound`'s steps
    between measured sizes would make every join look dear or free.

    >>> f = step_estimate({1: 0.1, 4: 0.4})
    >>> round(f(2), 3), round(f(8), 3), f(1)
    (0.2, 0.8, 0.1)
    >>> step_estimate({2: 0.3})(8)
    0.3
    """
    sizes = sorted(measured)

    def estimate(b: int) -> float:
        if not sizes:
            return math.inf
        if b <= sizes[0]:
            return measured[sizes[0]]
        for lo, hi in zip(sizes, sizes[1:]):
            if b <= hi:
                return measured[lo] + (measured[hi] - measured[lo]) * (b - lo) / (hi - lo)
        if len(sizes) == 1:
            return measured[sizes[0]]
        lo, hi = sizes[-2], sizes[-1]
        return measured[hi] + max(0.0, measured[hi] - measured[lo]) * (b - hi) / (hi - lo)

    return estimate


def step_fit(measured: dict[int, float]) -> Callable[[int], float]:
    """A straight line through measured ``{batch: seconds}`` (least squares), for a step's shape.

    ``t(b) = c0 + c1 * b`` with ``c1 >= 0``; one measured size: flat; nothing measured:
    ``inf``. The live engine fits it to its fastest step per batch size and judges with
    it whether batching pays (:func:`join_ahead`'s ``gain_s``): sizes measured now and
    then (a step of 3 when one session was late) are too few for their differences to
    mean anything, while a line through all of them is the model's batching cost.

    >>> f = step_fit({1: 0.135, 2: 0.074, 3: 0.181, 4: 0.103})   # noise around a gentle slope
    >>> round(f(4) - f(3), 3) <= 0.5 * f(1)
    True
    >>> f = step_fit({1: 0.1, 2: 0.2, 4: 0.4})                   # no gain: a = 1
    >>> round(f(3) - f(2), 6), round(f(1), 6)
    (0.1, 0.1)
    >>> step_fit({3: 0.3})(8), step_fit({})(1)
    (0.3, inf)
    """
    if not measured:
        return lambda b: math.inf
    sizes = sorted(measured)
    if len(sizes) == 1:
        only = measured[sizes[0]]
        return lambda b: only
    mean_b = sum(sizes) / len(sizes)
    mean_t = sum(measured[b] for b in sizes) / len(sizes)
    var = sum((b - mean_b) ** 2 for b in sizes)
    slope = max(0.0, sum((b - mean_b) * (measured[b] - mean_t) for b in sizes) / var)
    c0 = mean_t - slope * mean_b
    return lambda b: c0 + slope * b


def valve_step(step_s: Callable[[int], float], limit_s: float, ratio: float) -> Callable[[int], float]:
    """The step time of ``n`` sessions under the quality valve: a step predicted over
    ``limit_s`` (the SLO) runs degraded and takes ``ratio`` of its full time.

    What the batching rules compare on an engine with the valve on: the step it will run,
    not the full one it will not.

    >>> full = lambda n: 0.344 * n
    >>> [round(valve_step(full, 0.75, 0.7)(n), 4) for n in (1, 2, 3)]
    [0.344, 0.688, 0.7224]
    """
    def step(n: int) -> float:
        t = step_s(n)
        return t * ratio if t > limit_s else t

    return step


@dataclass(frozen=True, slots=True)
class GroupStep:
    """What a worker over ``b*`` under the quality valve runs next (:func:`valve_group_step`).

    ``kind``:

    - ``"group"``: one step of the due chunks ``due`` and the first ``early`` sessions
      that may be made ahead (its predicted time is the degraded one);
    - ``"hold"``: nothing now; decide again at ``wake_s`` (a first chunk waits for the
      in-stream chunks that become due during its step, to run with them);
    - ``"rules"``: not one group; the usual rules (:func:`split_due`, :func:`join_ahead`)
      apply to the due chunks ``due`` (the in-stream ones, when the group would make one late).
    """

    kind: str
    due: tuple[int, ...] = ()
    early: int = 0
    wake_s: float | None = None


def valve_group_step(
    now: float,
    *,
    deadlines_s: Sequence[float],
    firsts: Sequence[bool],
    early_deadlines_s: Sequence[float],
    upcoming_s: Sequence[float],
    max_batch: int,
    step_s: Callable[[int], float],
) -> GroupStep:
    """The next step of a worker that holds more active sessions than ``b*`` under the valve.

    Such a worker (placed over ``b*`` while capacity starts, or a session come back to a
    worker that lent its idle slot) runs its sessions as one group: a step of all of them
    takes the valve's degraded time, within the SLO, while steps of some of them take a
    full step each and the others wait through it. So:

    1. **hold**: when every due chunk is a first chunk (an admission wait) and an
       in-stream session becomes due (``upcoming_s``, its request) before a step of them
       would end, nothing starts: at that request the first chunks join the in-stream
       ones' step instead of making them wait through a step of their own;
    2. **group**: the due chunks (earliest deadline first, as given) and the sessions
       that may be made ahead (``early_deadlines_s``, their deadlines, soonest first), up
       to ``max_batch``, run as one step, when it ends by the deadline of every in-stream
       chunk in it;
    3. **rules**: otherwise the due in-stream chunks go first under the usual rules, the
       first chunks into the next group step (none due in-stream: all the due ones).

    ``step_s(n)``: the step time of ``n`` sessions as the engine runs it (with the valve:
    :func:`valve_step`). The live engine and the simulator both call this.

    >>> eff = valve_step(lambda n: 0.344 * n, 0.75, 0.7)
    >>> valve_group_step(0.0, deadlines_s=[0.75], firsts=[False], early_deadlines_s=[0.9, 1.0],
    ...                  upcoming_s=[], max_batch=3, step_s=eff)
    GroupStep(kind='group', due=(0,), early=2, wake_s=None)
    >>> valve_group_step(0.0, deadlines_s=[10.0], firsts=[True], early_deadlines_s=[],
    ...                  upcoming_s=[0.1], max_batch=3, step_s=eff)        # a newcomer waits for its peers
    GroupStep(kind='hold', due=(), early=0, wake_s=0.1)
    >>> valve_group_step(0.0, deadlines_s=[0.4, 10.0], firsts=[False, True], early_deadlines_s=[],
    ...                  upcoming_s=[], max_batch=3, step_s=eff)           # together it would be late
    GroupStep(kind='rules', due=(0,), early=0, wake_s=None)
    """
    n_due = len(deadlines_s)
    first = [bool(f) for f in list(firsts)[:n_due]] + [False] * (n_due - len(firsts))
    if n_due and all(first) and upcoming_s:
        soonest = min(upcoming_s)
        if soonest < now + step_s(n_due):
            return GroupStep("hold", wake_s=soonest)
    take = min(n_due, max_batch)
    k = max(0, min(len(early_deadlines_s), max_batch - take))
    end = now + step_s(take + k)
    hard = [d for d, f in zip(deadlines_s[:take], first) if not f] + list(early_deadlines_s[:k])
    if all(end <= d + _EPS_S for d in hard):
        return GroupStep("group", tuple(range(take)), k)
    in_stream = tuple(i for i in range(n_due) if not first[i])
    return GroupStep("rules", in_stream or tuple(range(n_due)))
