"""Phase alignment of the simulator's coalesced steps: which sessions join a step early.

An adapter from the simulator's session records (``next_req``, ``idx``) to the live
engine's own rule, :func:`workers.batching.join_ahead` (pure, no torch): the engine
applies it to sessions whose next chunk it may make ahead of the request
(``turboserve.engine.prearm-chunks``), the simulator to sessions due within one period.
So both agree on the mechanism (a chunk made ahead joins a step that runs for due
chunks, while batching pays and no due chunk misses a deadline it could meet because of
it) and on the constraint.
"""

from __future__ import annotations

from typing import Callable

from workers.batching import join_ahead


def join_early(due: list, early: list, *, max_batch: int, n_active: int, now: float, slo_s: float,
               step_s: Callable[[int], float]) -> None:
    """Add to ``due`` (in place) the sessions of ``early`` that join a step starting at ``now``.

    A session whose next chunk is not asked for yet may have it made ahead (the viewer
    still plays the previous one), so sessions of one worker fall into one cadence and
    share steps instead of each waiting for the others' steps. Which ones join, soonest
    request first, is :func:`workers.batching.join_ahead` (room, batching pays, no due
    chunk pushed past a deadline it would meet unless waiting costs the joiner more; a
    due first chunk of a burst, ``s.admission_wait``, yields to joiners that would be late waiting).

    ``step_s(n)`` is the step time of ``n`` sessions.
    """
    early.sort(key=lambda s: (s.next_req, s.idx))
    k = join_ahead(now, deadlines_s=[s.next_req + slo_s for s in due], candidates_s=[s.next_req for s in early],
                   slo_s=slo_s, n_active=n_active, max_batch=max_batch, step_s=step_s,
                   firsts=[s.admission_wait for s in due])
    due.extend(early[:k])
