"""Phase alignment of the simulator's coalesced steps: which sessions join a step early.

A pure rule over the simulator's session records (``next_req``, ``idx``) and a step-time
function, apart from the engine that calls it when a worker starts a step. The live
engine's batching window is :func:`workers.batching.decide_batch`; the two agree on the
constraint (no due chunk misses a deadline it could meet because of a join or a wait)
but not yet on the mechanism: here a session is made up to one period ahead, there a
step waits a short window for sessions about to be due.
"""

from __future__ import annotations

import math
from typing import Callable


def join_early(due: list, early: list, *, max_batch: int, n_active: int, now: float, slo_s: float,
               step_s: Callable[[int, float], float]) -> None:
    """Add to ``due`` (in place) the sessions of ``early`` that join a step starting at ``now``.

    A session whose next chunk is not asked for yet may have it made ahead (the viewer
    still plays the previous one), so sessions of one worker fall into one cadence and
    share steps instead of each waiting for the others' steps. One joins only while
    batching pays (one more session costs at most half a batch-1 step) and the step
    still ends by the deadline of every due chunk that would meet it without them (a
    chunk already late, such as a first chunk that waited for its placement, constrains
    nothing), unless waiting for the next step (of the worker's ``n_active`` sessions,
    as they come due meanwhile) would make the joining session's chunk later than the
    join makes theirs: the rule keeps the worst lateness of the two lower. Soonest first.

    ``step_s(n, context_frames)`` is the step time of ``n`` sessions.
    """
    n = len(due)
    end = now + step_s(n, 0.0)
    limit = min((s.next_req + slo_s for s in due if s.next_req + slo_s >= end), default=math.inf)
    pays = 0.5 * step_s(1, 0.0)
    next_step = step_s(min(n_active, max_batch), 0.0)
    early.sort(key=lambda s: (s.next_req, s.idx))
    for s in early:
        if n >= max_batch:
            break
        t_next = step_s(n + 1, 0.0)
        if t_next - step_s(n, 0.0) > pays:
            break
        imposed = now + t_next - limit  # lateness the join puts on a due chunk
        if imposed > 0 and imposed > end + next_step - (s.next_req + slo_s):
            break
        due.append(s)
        n += 1
        end = now + t_next
