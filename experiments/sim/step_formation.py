"""Which of a simulated worker's sessions form its next coalesced step.

An adapter from the simulator's session records (``next_req``, ``idx``, ``fresh``,
``admission_wait``, ``put_off``) to the live engine's own pure rules in
:mod:`workers.batching`, so both engines batch alike:

- :func:`~workers.batching.split_due`: the due chunks, earliest deadline first, and
  fewer when the full step would miss an in-stream deadline that a smaller step followed
  by the rest meets better;
- phase alignment, :func:`~workers.batching.join_ahead`: a session whose next chunk is
  not asked for yet (due within one period: the viewer still plays the previous one) may
  have it made ahead in a step of due chunks, while batching pays and no due chunk misses
  a deadline it could meet because of it (the live engine applies it to the chunks it may
  make ahead, ``turboserve.engine.prearm-chunks``);
- on the quality valve, a worker holding more sessions than ``b*`` runs them as one
  group (:func:`~workers.batching.valve_group_step`), or holds its first chunks for the
  in-stream sessions about to be due.

The engine (:mod:`experiments.sim.engine`) calls :func:`form_step` when a worker is free
and something is due, and schedules the step or the wake-up it returns.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable

from workers.batching import join_ahead, split_due, valve_group_step


#: The rules' order: earliest request (so deadline) first, then the session's index
#: (a sort key of ``(next_req, idx)``, C-level: it is called for every session of every step).
by_request = attrgetter("next_req", "idx")


def form_step(now: float, due: list, early: list, *, upcoming: list[float] | None, max_batch: int, n_active: int,
              slo_s: float, step_s: Callable[[int], float]) -> list | float:
    """The sessions of the step that starts at ``now``, or the time to decide again (a hold).

    ``due``: sessions whose chunk is asked for; ``early``: sessions that may have theirs
    made ahead (both may be reordered); ``upcoming``: on a worker over ``b*`` on the
    valve, the requests of its in-stream sessions not due yet (None: not such a worker);
    ``step_s(n)``: the step time of ``n`` sessions as the engine runs it. A first chunk
    that the split puts after in-stream chunks is marked ``put_off`` (once: never again).
    """
    if upcoming is not None:
        due.sort(key=by_request)
        early.sort(key=by_request)
        plan = valve_group_step(now, deadlines_s=[s.next_req + slo_s for s in due], firsts=[s.fresh for s in due],
                                early_deadlines_s=[s.next_req + slo_s for s in early], upcoming_s=upcoming,
                                max_batch=max_batch, step_s=step_s)
        if plan.kind == "hold":
            return plan.wake_s
        if plan.kind == "group":  # one step: no split, no further joins
            return due[: len(plan.due)] + early[: plan.early]
        due = [due[i] for i in plan.due]  # the in-stream chunks first, under the rules below
    split = False
    deadlines = waits = None  # of ``due``, as the rules take them (computed once for both)
    if len(due) > 1:
        due.sort(key=by_request)
        if len(due) > max_batch:
            due = due[:max_batch]
        deadlines = [s.next_req + slo_s for s in due]
        waits = [s.fresh and not s.put_off for s in due]  # _Session.admission_wait, inlined
        take = split_due(now, deadlines, step_s, waits)
        split = len(take) < len(due)
        if split:
            for i in set(range(len(due))) - set(take):
                due[i].put_off = due[i].fresh
            due = [due[i] for i in take]
    if early and not split and len(due) < max_batch:
        early.sort(key=by_request)
        if deadlines is None:
            deadlines = [s.next_req + slo_s for s in due]
            waits = [s.fresh and not s.put_off for s in due]
        k = join_ahead(now, deadlines_s=deadlines, candidates_s=[s.next_req for s in early], slo_s=slo_s,
                       n_active=n_active, max_batch=max_batch, step_s=step_s, firsts=waits)
        due.extend(early[:k])
    return due
