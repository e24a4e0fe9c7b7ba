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
    """
    if not ready_s:
        return BatchDecision(False, None, "idle")
    n_ready = len(ready_s)
    if n_ready >= max_batch:
        return BatchDecision(True, None, "full")
    window_end = max(max(ready_s), free_s) + window_s
    joinable = [t for t in expected_s if now - window_s <= t <= window_end]
    if window_s <= 0 or not joinable:
        return BatchDecision(True, None, "alone")
    largest = min(max_batch, n_ready + len(expected_s))
    alone = step_s(n_ready)  # (d - step >= now, not now + step <= d: the same rounding as `latest`)
    meetable = [d for d in deadlines_s if d - alone >= now]
    latest = min(meetable) - step_s(largest) if meetable else math.inf
    if latest <= now:
        return BatchDecision(True, None, "deadline")
    if window_end <= now:
        return BatchDecision(True, None, "window-over")
    if latest < window_end:
        return BatchDecision(False, latest, "deadline")
    return BatchDecision(False, window_end, "window")
