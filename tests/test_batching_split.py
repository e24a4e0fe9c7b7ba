"""Deadline-aware splitting of a step's due chunks (workers.batching.split_due), pure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.batching import join_ahead, split_due


def linear(a: float, t1: float = 0.344):
    return lambda n: t1 * (1 + a * (n - 1))


def worst_lateness(now, deadlines, step, n):
    first = now + step(n)
    late = [first - d for d in deadlines[:n]]
    if n < len(deadlines):
        late += [first + step(len(deadlines) - n) - d for d in deadlines[n:]]
    return max(late)


def test_a_full_step_that_meets_every_deadline_is_kept():
    assert split_due(0.0, [0.75] * 4, linear(1.0, 0.1)) == 4
    assert split_due(0.0, [0.5, 0.75], linear(0.1)) == 2


def test_without_batching_gain_a_chunk_that_waited_goes_alone_before_a_fresh_one():
    # The in-stream stall this removes: a chunk that waited a batch-1 step for the
    # worker, then shared a step of two with a chunk that just became due (0.34 + 0.69 s).
    assert split_due(0.0, [0.41, 0.75], linear(1.0)) == 1


def test_with_batching_gain_the_full_step_serves_everyone_sooner():
    assert split_due(0.0, [0.41, 0.75], linear(0.1)) == 2


@settings(max_examples=300, deadline=None)
@given(
    now=st.floats(0, 10),
    slack=st.lists(st.floats(-1.0, 2.0), min_size=1, max_size=8),
    a=st.floats(0.0, 1.5),
    t1=st.floats(0.01, 1.0),
)
def test_the_split_never_makes_the_worst_lateness_of_the_due_chunks_worse(now, slack, a, t1):
    deadlines = sorted(now + x for x in slack)
    step = linear(a, t1)
    n = split_due(now, deadlines, step)
    assert 1 <= n <= len(deadlines)
    if now + step(len(deadlines)) <= deadlines[0]:
        assert n == len(deadlines)  # every deadline met: no split
    if n < len(deadlines):  # a split is taken only when it meets every deadline
        assert worst_lateness(now, deadlines, step, n) <= 1e-9
    assert worst_lateness(now, deadlines, step, n) <= worst_lateness(now, deadlines, step, len(deadlines)) + 1e-9


def test_an_overloaded_worker_keeps_its_full_batch():
    # Every chunk is late whatever the order: a smaller step would only lower throughput.
    assert split_due(0.0, [0.1, 0.2, 0.3, 0.4], linear(1.0, 0.344)) == 4


# ---------------------------------------------------------------- first chunks (admission waits)


def test_a_first_chunk_shares_the_step_of_the_chunks_due_with_it_where_batching_pays():
    # A newcomer that waited 0.4 s: alone first, it would be out of phase with the others.
    assert split_due(0.0, [0.35, 0.75, 0.75], linear(0.1)) == 1
    assert split_due(0.0, [0.35, 0.75, 0.75], linear(0.1), firsts=[True, False, False]) == 3


def test_where_batching_does_not_pay_a_first_chunk_keeps_its_own_step():
    assert split_due(0.0, [0.41, 0.75], linear(1.0), firsts=[True, False]) == 1


def test_a_first_chunk_never_makes_the_split_miss_an_in_stream_deadline():
    # in-stream chunks that a full step would make late still get their split
    assert split_due(0.0, [0.35, 0.4, 0.75], linear(0.1), firsts=[True, False, False]) < 3


@settings(max_examples=300, deadline=None)
@given(
    now=st.floats(0, 10),
    slack=st.lists(st.tuples(st.floats(-1.0, 2.0), st.booleans()), min_size=1, max_size=8),
    a=st.floats(0.0, 1.5),
    t1=st.floats(0.01, 1.0),
)
def test_with_first_chunks_the_in_stream_deadlines_are_kept_as_before(now, slack, a, t1):
    slack.sort()
    deadlines = [now + x for x, _ in slack]
    firsts = [f for _, f in slack]
    step = linear(a, t1)
    n = split_due(now, deadlines, step, firsts)
    assert 1 <= n <= len(deadlines)
    inf = float("inf")
    soft = [inf if f else d for d, f in zip(deadlines, firsts)]
    if now + step(len(deadlines)) <= min(soft):
        assert n == len(deadlines) or step(len(deadlines)) - step(len(deadlines) - 1) > 0.5 * step(1)
    if n < len(deadlines):  # a split meets every in-stream deadline
        assert worst_lateness(now, soft, step, n) <= 1e-9


def test_a_made_ahead_chunk_joins_a_first_chunk_only_when_it_would_be_late_waiting():
    # four sessions due at 0.75 s, during a newcomer's solo step (0.57-0.87 s): waiting
    # for it and then a step of five ends at 1.53 s, 0.03 s past their 1.5 s deadline
    step = linear(0.3, 0.3)
    kw = dict(deadlines_s=[0.875], candidates_s=[0.75] * 4, slo_s=0.75, max_batch=8, step_s=step)
    assert join_ahead(0.57, n_active=5, firsts=[True], **kw) == 4
    assert join_ahead(0.57, n_active=5, **kw) == 0  # an in-stream chunk keeps its step
    # not late waiting (a later request): the newcomer keeps its solo step
    kw["candidates_s"] = [0.85] * 4  # waiting: 0.87 + 0.66 = 1.53 s <= 1.6 s
    assert join_ahead(0.57, n_active=5, firsts=[True], **kw) == 0
