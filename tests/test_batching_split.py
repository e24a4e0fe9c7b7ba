"""Deadline-aware splitting of a step's due chunks (workers.batching.split_due), pure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.batching import join_ahead, split_due


def linear(a: float, t1: float = 0.344):
    return lambda n: t1 * (1 + a * (n - 1))


def worst_lateness(now, deadlines, step, take):
    """Worst lateness when the chunks ``take`` (indices) go first and the rest right after."""
    first = now + step(len(take))
    rest = [i for i in range(len(deadlines)) if i not in take]
    late = [first - deadlines[i] for i in take]
    late += [first + step(len(rest)) - deadlines[i] for i in rest]
    return max(late)


def everything(deadlines):
    return tuple(range(len(deadlines)))


def test_a_full_step_that_meets_every_deadline_is_kept():
    assert split_due(0.0, [0.75] * 4, linear(1.0, 0.1)) == (0, 1, 2, 3)
    assert split_due(0.0, [0.5, 0.75], linear(0.1)) == (0, 1)


def test_without_batching_gain_a_chunk_that_waited_goes_alone_before_a_fresh_one():
    # The in-stream stall this removes: a chunk that waited a batch-1 step for the
    # worker, then shared a step of two with a chunk that just became due (0.34 + 0.69 s).
    assert split_due(0.0, [0.41, 0.75], linear(1.0)) == (0,)


def test_with_batching_gain_the_full_step_serves_everyone_sooner():
    assert split_due(0.0, [0.41, 0.75], linear(0.1)) == (0, 1)


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
    take = split_due(now, deadlines, step)
    assert 1 <= len(take) <= len(deadlines) and list(take) == sorted(set(take))
    if now + step(len(deadlines)) <= deadlines[0]:
        assert take == everything(deadlines)  # every deadline met: no split
    if len(take) < len(deadlines):  # a split is taken only when it meets every deadline
        assert worst_lateness(now, deadlines, step, take) <= 1e-9
    assert worst_lateness(now, deadlines, step, take) <= worst_lateness(now, deadlines, step, everything(deadlines)) + 1e-9


def test_an_overloaded_worker_keeps_its_full_batch():
    # Every chunk is late whatever the order: a smaller step would only lower throughput.
    assert split_due(0.0, [0.1, 0.2, 0.3, 0.4], linear(1.0, 0.344)) == (0, 1, 2, 3)


# ---------------------------------------------------------------- first chunks (admission waits)


def test_a_first_chunk_shares_the_step_of_the_chunks_due_with_it_where_batching_pays():
    # A newcomer that waited 0.4 s: alone first, it would be out of phase with the others.
    assert split_due(0.0, [0.35, 0.75, 0.75], linear(0.1)) == (0,)
    assert split_due(0.0, [0.35, 0.75, 0.75], linear(0.1), firsts=[True, False, False]) == (0, 1, 2)


def test_where_batching_does_not_pay_a_first_chunk_keeps_its_own_step():
    assert split_due(0.0, [0.41, 0.75], linear(1.0), firsts=[True, False]) == (0,)


def test_a_first_chunk_never_makes_the_split_miss_an_in_stream_deadline():
    # in-stream chunks that a full step would make late still get their split
    assert len(split_due(0.0, [0.35, 0.4, 0.75], linear(0.1), firsts=[True, False, False])) < 3


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
    take = split_due(now, deadlines, step, firsts)
    assert 1 <= len(take) <= len(deadlines) and list(take) == sorted(set(take))
    inf = float("inf")
    soft = [inf if f else d for d, f in zip(deadlines, firsts)]
    if now + step(len(deadlines)) <= min(soft):
        assert take == everything(deadlines) or step(len(deadlines)) - step(len(deadlines) - 1) > 0.5 * step(1)
    if len(take) < len(deadlines):  # a split meets every in-stream deadline
        assert worst_lateness(now, soft, step, take) <= 1e-9
    # the in-stream chunks are never later than in the full step, unless no part saves them all
    if worst_lateness(now, soft, step, everything(deadlines)) <= 1e-9:
        assert worst_lateness(now, soft, step, take) <= 1e-9


def test_a_first_chunk_already_late_goes_after_the_in_stream_chunk_due_with_it():
    # Seen in a simulated azure-code run at a = 1.0: an in-stream chunk that waited for
    # its worker's previous step, and a newcomer placed late (its first chunk already past
    # its deadline); one step of both made the in-stream chunk 0.27 s late.
    now = 921.976
    newcomer, in_stream = 920.935 + 0.75, 921.647 + 0.75
    assert split_due(now, [newcomer, in_stream], linear(1.0), firsts=[True, False]) == (1,)
    # the same two in-stream chunks: no part saves both, the full batch is kept; so is a
    # newcomer its caller has put off once already (passed as not first: never starved)
    assert split_due(now, [newcomer, in_stream], linear(1.0)) == (0, 1)
    assert split_due(now, [newcomer, in_stream], linear(1.0), firsts=[False, False]) == (0, 1)


def test_where_batching_pays_a_first_chunk_is_never_put_off():
    # the in-stream chunk would be late in a step of two; still the newcomer shares it
    # (it falls into the worker's phase), as before
    step = linear(0.1)
    take = split_due(0.0, [-0.2, 0.36], step, firsts=[True, False])
    assert 0 in take


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
