"""Which of a worker's sessions the chunk engine steps next, and when: the engine's decisions.

The scheduler half of the vLLM v1 shape of :class:`workers.engine.Engine`: plain
functions of an :class:`EngineView` (a copy of the engine's sessions and measured step
times, taken under its lock) that return plain data, never touching a thread, a lock,
the model or the device. :func:`decide` says whether the next step starts now or waits
(a :class:`~workers.batching.BatchDecision`); :func:`schedule` forms it (a
:class:`StepPlan`, which the engine executes). Both apply the pure rules of
:mod:`workers.batching`, the simulator's too (its adapter is
``experiments.sim.step_formation``).

When a step starts is :func:`workers.batching.decide_batch`'s call: a small batching
window, bounded by the deadlines of the chunks already due, lets requests that are about
to arrive (the sessions served by the last step, whose clients ask again at once) join
the step, which also keeps the sessions of a worker in phase. **Made ahead**: a session
that asked for its chunks may have the next ``prearm_chunks`` made before it asks (a
viewer plays one chunk while the next is made; a closed-loop client finds its next chunk
in the step another session's request started, instead of the device waiting for its
round trip); such chunks only join a step of due chunks, by
:func:`workers.batching.join_ahead` (the simulator's phase alignment, same rule), and
never start a step of their own. The quality valve: a step of more sessions than
``valve_batch`` runs with ``valve_steps`` denoising steps and its chunks are marked
degraded; a worker holding more sessions than ``valve_batch`` runs them as one group
(:func:`workers.batching.valve_group_step`, the simulator's rule).

Examples
--------
>>> s = SessionView("a", (16, 16), due=True, ahead_by=None, oldest_request_s=1.0, next_request_s=1.0,
...                 ready_s=0.0, first=False, expect=True, reading=True)
>>> view = EngineView((s,), step_s={}, step_min={}, valve_step_s={}, free_s=0.0, memory_cap=8)
>>> schedule(1.0, view, EngineSettings(max_batch=8))
(StepPlan(session_ids=('a',), denoise_steps=None), ())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection

from workers.batching import (
    BatchDecision, decide_batch, join_ahead, split_due, step_bound, step_estimate, step_fit, valve_group_step,
)
from workers.engine_settings import EngineSettings


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the next step does: the sessions in it, oldest request first.

    ``denoise_steps`` is None for the model's own count, or the reduced count of a step
    under the quality valve (its chunks are marked degraded).
    """

    session_ids: tuple[str, ...]
    denoise_steps: int | None = None

    @classmethod
    def make_empty(cls) -> "StepPlan":
        """A plan that runs nothing."""
        return cls(())

    @property
    def batch_size(self) -> int:
        """Sessions in the step."""
        return len(self.session_ids)

    @property
    def degraded(self) -> bool:
        """True when the quality valve cut the step's denoising steps."""
        return self.denoise_steps is not None


@dataclass(frozen=True, slots=True)
class SessionView:
    """One attached session as the decisions read it (a copy: the engine's entry moves on).

    Attributes
    ----------
    session_id : str
    shape : (int, int)
        Its resolution (height, width): one step runs one resolution.
    due : bool
        Its next chunk is asked for and its reader is fewer than ``max_unread`` behind.
    ahead_by : int or None
        Not due, but its next chunk may be made ahead: how many chunks beyond its request
        it is (least ahead joins first); None: it may not.
    oldest_request_s : float
        Its oldest outstanding request (0.0: none recorded).
    next_request_s : float or None
        The request of its next chunk (None: not recorded; the decision's ``now`` stands in).
    ready_s : float
        When its reader's acknowledgement last let it through after flow control held it.
    first : bool
        Its next chunk is its first (an admission wait) and was never put off.
    expect : bool
        Its next request may come any moment: a step waits for it in the window.
    reading : bool
        Its client asked and did not pause.
    """

    session_id: str
    shape: tuple[int, int]
    due: bool
    ahead_by: int | None
    oldest_request_s: float
    next_request_s: float | None
    ready_s: float
    first: bool
    expect: bool
    reading: bool


@dataclass(frozen=True, slots=True)
class EngineView:
    """What the decisions know of one engine: its sessions (attach order) and step times.

    Attributes
    ----------
    sessions : tuple of SessionView
    step_s : dict
        Batch size -> recent seconds of a full step (a moving average).
    step_min : dict
        Batch size -> fastest full step seconds (the shape, for made-ahead joins).
    valve_step_s : dict
        Batch size -> recent seconds of a degraded step (the quality valve).
    free_s : float
        When the last step ended (``-inf`` before the first).
    memory_cap : int
        Sessions that fit in free device memory (``max_batch`` where that is not measured).
    """

    sessions: tuple[SessionView, ...]
    step_s: dict[int, float]
    step_min: dict[int, float]
    valve_step_s: dict[int, float]
    free_s: float
    memory_cap: int


def decide(now: float, view: EngineView, settings: EngineSettings, joining: Collection[str] = ()) -> BatchDecision:
    """Start the next step now, or wait (:func:`workers.batching.decide_batch`).

    Due chunks are ready from their request (or from the acknowledgement that let a
    session ahead of its reader go on) and due at that request plus ``deadline_s``.
    Another session is expected any moment from its attachment, its last request or its
    last chunk (a closed-loop client asks again as soon as it has the chunk; sessions
    submitted back to back come within milliseconds) until a step starts without it: so
    a session that went quiet costs at most one window, and a paused one none. A session
    that may be made ahead is waited for like any other (its request makes it due; a
    refused join or a session left out stays in phase that way). ``joining``: the
    sessions :func:`schedule` would put into a step starting now (the engine passes them
    with ``settings.start_with_joins``): when they hold every reading or expected
    session, nobody is waited for, so a closed-loop round starts at the first request
    instead of the last, while the others' chunks are still on their way to their clients.
    """
    cfg = settings
    if not cfg.batching:
        due = any(s.due for s in view.sessions)
        return BatchDecision(due, None, "alone" if due else "idle")
    # Joins are not waited for only when the step holds every reading or expected
    # session: one left out (its chunk made ahead already, its request on the way)
    # is waited for, and the joiners with it, so the sessions stay in one phase.
    everyone = all(s.session_id in joining or s.due or not (s.expect or s.reading) for s in view.sessions)
    ready, deadlines, expected, ahead = [], [], [], 0
    for s in view.sessions:
        if s.due:
            t_req = now if s.next_request_s is None else s.next_request_s
            ready.append(max(t_req, s.ready_s))
            deadlines.append(t_req + cfg.deadline_s)
        elif everyone and s.session_id in joining:  # made ahead in the step: nothing to wait for
            ahead += 1
        elif s.expect:
            expected.append(now)
        else:
            expected.append(math.inf)
    measured = view.step_s
    step_s = step_bound(measured)
    max_batch = min(cfg.max_batch, view.memory_cap)
    window = cfg.batch_window_s
    if cfg.batch_window_share and measured and window:
        window = max(window, cfg.batch_window_share * step_s(min(max_batch, len(ready) + ahead + len(expected))))
    return decide_batch(
        now,
        ready_s=ready,
        deadlines_s=deadlines,
        expected_s=expected,
        step_s=step_s,
        window_s=window,
        max_batch=max_batch,
        free_s=view.free_s,
        ahead=ahead,
    )


def schedule(now: float, view: EngineView, settings: EngineSettings) -> tuple[StepPlan, tuple[str, ...]]:
    """The due sessions of the next step, oldest outstanding request first; and those put off.

    At most ``max_batch`` (1 without batching, fewer if device memory is short), all of
    the oldest request's resolution (a step runs one resolution), and fewer when the full
    step would miss a deadline that a smaller step followed by the rest meets better
    (:func:`workers.batching.split_due`; no made-ahead chunk joins such a step; a
    session's first chunk, an admission wait, yields to in-stream ones where batching
    pays, as in the simulator). Sessions whose next chunk may be made ahead fill the step
    up as far as :func:`workers.batching.join_ahead` allows (least ahead first; with
    batching only). A step of more sessions than ``valve_batch`` (when set) runs
    ``valve_steps`` denoising steps; a worker holding more sessions than that runs them
    as one group (:func:`workers.batching.valve_group_step`).

    The second item names the sessions whose first chunk the split put after in-stream
    chunks: the engine marks them, so that theirs is put off at most once.
    """
    cfg = settings
    cap = min(cfg.max_batch if cfg.batching else 1, view.memory_cap)
    due, ahead, deadline, first = [], [], {}, {}
    for s in view.sessions:
        if s.due:
            due.append((s.oldest_request_s, s.session_id, s.shape))
            deadline[s.session_id] = (now if s.next_request_s is None else s.next_request_s) + cfg.deadline_s
            first[s.session_id] = s.first
        elif cfg.batching and cfg.prearm_chunks and s.ahead_by is not None:
            ahead.append((s.ahead_by, s.session_id, s.shape))
    if not due:
        return StepPlan.make_empty(), ()
    measured = view.step_s
    # the shape for the batching-pays test: each measured size's fastest step
    fastest = {b: min(t, view.step_min.get(b, math.inf)) for b, t in measured.items()}
    n_active = len(view.sessions)
    due.sort()
    ahead.sort()
    # One step runs one resolution: the oldest request's, filled up with its peers.
    shape = due[0][2]
    ids = tuple(sid for _, sid, hw in due if hw == shape)[:cap]
    candidates = [sid for _, sid, hw in ahead if hw == shape]
    if cfg.batching and 0 < cfg.valve_batch < n_active:
        # Over b* on the quality valve: the worker's sessions run as one group (the
        # simulator's rule). Its hold is decide()'s batching window here: the engine
        # has no predicted requests, it waits for the sessions it expects.
        full = step_estimate(measured)
        ratio = valve_ratio(full, view.valve_step_s)
        plan = valve_group_step(now, deadlines_s=[deadline[sid] for sid in ids], firsts=[first[sid] for sid in ids],
                                early_deadlines_s=[now + cfg.deadline_s] * len(candidates), upcoming_s=(),
                                max_batch=cap,
                                step_s=lambda n: full(n) * ratio if n > cfg.valve_batch else full(n))
        if plan.kind == "group":
            ids = tuple(ids[i] for i in plan.due) + tuple(candidates[:plan.early])
            return StepPlan(ids, cfg.valve_steps if len(ids) > cfg.valve_batch else None), ()
        ids = tuple(ids[i] for i in plan.due)  # the in-stream chunks first, under the rules below
    split, put_off = False, ()
    if len(ids) > 1:  # fewer when the full step would miss a deadline a split meets better
        take = split_due(now, [deadline[sid] for sid in ids], step_estimate(measured), [first[sid] for sid in ids])
        split = len(take) < len(ids)
        if split:
            kept = {ids[i] for i in take}
            put_off = tuple(sid for sid in ids if sid not in kept and first[sid])
            ids = tuple(ids[i] for i in take)
    if candidates and len(ids) < cap and not split:
        k = join_ahead(now, deadlines_s=[deadline[sid] for sid in ids], candidates_s=[now] * len(candidates),
                       slo_s=cfg.deadline_s, n_active=n_active, max_batch=cap, step_s=step_estimate(measured),
                       firsts=[first[sid] for sid in ids], gain_s=step_fit(fastest))
        ids += tuple(candidates[:k])
    valve = cfg.valve_batch and len(ids) > cfg.valve_batch  # a step of more than b* sessions
    return StepPlan(ids, cfg.valve_steps if valve else None), put_off


def valve_ratio(full: Callable[[int], float], degraded: dict[int, float]) -> float:
    """A degraded step's time as a share of the full one (``full(b)``, the estimate from
    full steps), from the degraded steps measured (``degraded``: batch size -> seconds;
    1.0, no gain assumed, until one is): what the valve group's rule predicts with."""
    pairs = [(t, full(b)) for b, t in degraded.items() if 0 < full(b) < math.inf]
    return min(1.0, sum(t for t, _ in pairs) / sum(f for _, f in pairs)) if pairs else 1.0
