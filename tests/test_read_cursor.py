"""A session handle's chunk indices: each read once, in order, however streams and futures mix (pure).

:class:`framework.read_cursor.ReadCursor` is the bookkeeping behind
``Session.stream``/``Session.submit``; the live tiers (test_session_futures,
test_recovery_futures_ack) run it against real workers.
"""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from framework.read_cursor import ReadCursor


def chunk(i: int) -> SimpleNamespace:
    return SimpleNamespace(index=i)


def test_a_stream_reads_what_its_polls_bring_in_order_and_acknowledges_it():
    cursor = ReadCursor(0)
    assert cursor.issue(3) == 0
    assert cursor.receive([chunk(1), chunk(0)]) == 2
    assert cursor.read_prefix() == 2  # what the client holds is acknowledged, taken or not
    assert [cursor.take(0).index, cursor.take(1).index] == [0, 1]
    assert not cursor.has(2)


def test_a_resend_after_a_recovery_is_dropped():
    cursor = ReadCursor(0)
    cursor.issue(2)
    cursor.receive([chunk(0), chunk(1)])
    cursor.take(0), cursor.take(1)
    assert cursor.receive([chunk(0), chunk(1)]) == 0  # an actor recovered from an older checkpoint
    assert not cursor.has(0) and not cursor.has(1)


def test_a_futures_index_is_skipped_by_the_stream_and_held_unacknowledged_until_its_task_took_it():
    cursor = ReadCursor(5)
    assert cursor.issue(1) == 5
    cursor.own(5)
    assert cursor.issue(1) == 6
    assert cursor.read_prefix() == 5  # the future's task has not taken chunk 5 yet
    assert cursor.receive([chunk(5), chunk(6)]) == 1  # chunk 5 is the future's
    assert not cursor.has(5) and cursor.has(6)
    taken = []
    cursor.attach(5, lambda: bool(taken))
    assert cursor.read_prefix() == 5
    taken.append(5)
    assert cursor.read_prefix() == 7


def test_a_reader_that_only_submits_still_moves_the_prefix():
    cursor = ReadCursor(0)
    for i in range(3):
        cursor.own(cursor.issue(1))
        cursor.attach(i, lambda: True)
    assert cursor.read_prefix() == 3  # no poll ever ran


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(st.tuples(st.sampled_from(["stream", "future"]), st.integers(1, 3)), min_size=1, max_size=12),
    resend=st.lists(st.integers(0, 40), max_size=10),
    order_seed=st.randoms(use_true_random=False),
)
def test_every_index_goes_to_exactly_one_reader_in_order(plan, resend, order_seed):
    """Streams and futures mixed, polls in any order with resends: no index read twice or lost."""
    cursor = ReadCursor(0)
    streamed, futures, wanted = [], [], []
    for kind, n in plan:
        first = cursor.issue(n)
        indices = list(range(first, first + n))
        if kind == "future":
            for i in indices:
                cursor.own(i)
                cursor.attach(i, lambda: True)
            futures += indices
        else:
            wanted += indices
    made = list(range(cursor.issued)) + [i for i in resend if i < cursor.issued]
    order_seed.shuffle(made)
    for k in range(0, len(made), 3):  # polls of up to three chunks each
        cursor.receive([chunk(i) for i in made[k:k + 3]])
        while wanted and cursor.has(wanted[0]):
            streamed.append(cursor.take(wanted.pop(0)).index)
    assert not wanted
    assert sorted(streamed + futures) == list(range(cursor.issued))
    assert streamed == sorted(streamed)
    assert cursor.read_prefix() == cursor.issued
