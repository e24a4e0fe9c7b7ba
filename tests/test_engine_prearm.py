"""Chunks made ahead of their request (``turboserve.engine.prearm-chunks``).

A session whose client reads has its next chunk made before it asks when it can join a
step that runs for another session's due chunk, as far as
:func:`workers.batching.join_ahead` (the simulator's phase-alignment rule) allows; it
never starts a step of its own. The
engine is driven without its thread (``decide``/``schedule`` called directly), with the
real ``tiny`` model's states and step times set by the test, so the machine's speed does
not matter; one test runs the thread.
"""

from __future__ import annotations

import math
import queue
import time

import pytest

from kernels.model import StreamingVideoModel
from workers.batching import join_ahead, step_estimate, step_fit
from workers.engine import Engine, EngineSettings


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)


def _engine(model, n, **settings):
    """An engine (thread not started) with ``n`` sessions that each made chunk 0 on request."""
    engine = Engine(model, "tcp://test", EngineSettings(**settings))
    for i in range(n):
        state = model.new_session(f"prompt {i}", i)
        engine.attach(f"s{i}", state, lambda c: None)
        engine.request(f"s{i}", 1)
    model.step([engine._entries[f"s{i}"].state for i in range(n)])  # chunk 0 made: want reached
    return engine


# ------------------------------------------------------------------ the pure rules


def test_step_estimate_interpolates_between_measured_batches():
    f = step_estimate({1: 0.1, 4: 0.4, 8: 0.6})
    assert f(1) == 0.1 and f(2) == pytest.approx(0.2) and f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.7)  # the slope of the last two beyond the largest
    assert math.isinf(step_estimate({})(1))


def test_made_ahead_chunks_join_while_the_due_chunks_keep_their_deadlines():
    step = lambda n: 1.0 * n  # noqa: E731 - batching does not pay at all ...
    assert join_ahead(0.0, deadlines_s=[30.0], candidates_s=[0.0], slo_s=30.0, n_active=2, max_batch=8,
                      step_s=step) == 0
    step = lambda n: 0.5 + 0.1 * n  # noqa: E731 - ... here it does
    assert join_ahead(0.0, deadlines_s=[30.0], candidates_s=[0.0] * 3, slo_s=30.0, n_active=4, max_batch=8,
                      step_s=step) == 3
    assert join_ahead(0.0, deadlines_s=[30.0], candidates_s=[0.0] * 3, slo_s=30.0, n_active=4, max_batch=2,
                      step_s=step) == 1  # room
    # A due chunk that has waited 0.6 s meets its deadline (0.7 s from now) alone (0.6 s)
    # but not with a join (0.7 s and more): nobody joins it.
    assert join_ahead(0.0, deadlines_s=[0.65], candidates_s=[0.0], slo_s=1.25, n_active=2, max_batch=8,
                      step_s=step) == 0


# ------------------------------------------------------------------ the engine's decisions


def test_a_reading_session_joins_a_step_for_another_sessions_chunk(model):
    engine = _engine(model, 2, prearm_chunks=1, deadline_s=30.0)
    assert not engine.decide().start and engine.schedule().batch_size == 0  # never a step of its own
    engine.request("s1", 2)  # s1 asks for chunk 1; s0 (reading) may have its chunk 1 made ahead
    assert engine.schedule().session_ids == ("s1", "s0")


def test_a_round_starts_at_the_first_request_when_every_other_chunk_would_be_made_ahead_in_it(model):
    # Closed loop: the others' requests are on their way (their chunks still travel to
    # their clients), but their next chunks join the step anyway: nothing to wait for.
    engine = _engine(model, 4, prearm_chunks=1, deadline_s=30.0, batch_window_s=0.5, max_batch=4,
                     start_with_joins=True)
    with engine._cond:
        engine._step_s = {1: 0.1, 4: 0.16}  # batching pays
    engine.request("s2", 2)
    decision = engine.decide()
    assert decision.start and decision.reason == "full"
    assert engine.schedule().session_ids == ("s2", "s0", "s1", "s3")
    engine = _engine(model, 4, prearm_chunks=1, deadline_s=30.0, batch_window_s=0.5, max_batch=4)
    # the default (start-with-joins off), the rule before: their requests are waited for
    with engine._cond:
        engine._step_s = {1: 0.1, 4: 0.16}
    engine.request("s2", 2)
    assert not engine.decide().start


def test_a_session_whose_join_would_be_refused_is_still_waited_for(model):
    engine = _engine(model, 2, prearm_chunks=1, deadline_s=30.0, batch_window_s=0.5, start_with_joins=True)
    with engine._cond:
        engine._step_s = {1: 0.1, 2: 0.2}  # batching does not pay: no join
    engine.request("s1", 2)
    assert engine.schedule().session_ids == ("s1",)
    decision = engine.decide()
    assert not decision.start and decision.reason == "window"  # s0's request may come any moment
    engine = _engine(model, 2, prearm_chunks=0, deadline_s=30.0, batch_window_s=0.5)
    engine.request("s1", 2)
    assert not engine.decide().start  # nothing is made ahead: s0 is waited for as before


def test_no_more_than_prearm_chunks_are_made_ahead(model):
    engine = _engine(model, 2, prearm_chunks=1, deadline_s=30.0)
    model.step([engine._entries["s0"].state])  # s0's chunk 1 made ahead
    engine.request("s1", 2)
    assert engine.schedule().session_ids == ("s1",)
    engine.request("s0", 2)  # s0 asks for chunk 1 (already made): chunk 2 may be made ahead
    model.step([engine._entries["s1"].state])
    engine.request("s1", 3)
    assert engine.schedule().session_ids == ("s1", "s0")


def test_nothing_is_made_ahead_with_prearm_off_or_after_a_pause(model):
    engine = _engine(model, 2, prearm_chunks=0, deadline_s=30.0)
    engine.request("s1", 2)
    assert engine.schedule().session_ids == ("s1",)
    engine = _engine(model, 2, prearm_chunks=1, deadline_s=30.0)
    engine.hold("s0")
    engine.request("s1", 2)
    assert engine.schedule().session_ids == ("s1",)


def test_made_ahead_chunks_join_a_due_step_only_within_the_deadlines(model):
    for slo, joined in ((30.0, ("s0", "s1")), (3.0, ("s0",))):
        engine = _engine(model, 2, prearm_chunks=1, deadline_s=slo)
        with engine._cond:
            engine._step_s = {1: 1.2, 2: 1.7}
        # s0 asked for chunk 1 1.5 s ago: alone it is done in 1.2 s (deadline 3 s: 1.5 s
        # from now), with s1 in 1.7 s, too late; with the generous deadline s1 joins.
        engine.request("s0", 2, now=time.time() - 1.5)
        assert engine.schedule().session_ids == joined


def test_a_late_client_finds_its_chunk_made_in_the_others_step(model):
    # Two readers; each round s0 asks first and s1 only 0.3 s later: s1's chunk was
    # made in the step s0's request started, so every step holds both sessions.
    q: queue.Queue = queue.Queue()
    engine = Engine(model, "tcp://test", EngineSettings(prearm_chunks=1, deadline_s=30.0)).start()
    try:
        for i in range(2):
            engine.attach(f"s{i}", engine.call(model.new_session, f"p{i}", i).result(), q.put)
        for i in range(2):
            engine.request(f"s{i}", 1)
        got = [q.get(timeout=60) for _ in range(2)]
        for k in range(1, 4):
            engine.request("s0", k + 1)
            time.sleep(0.3)
            engine.request("s1", k + 1)
            got += [q.get(timeout=60) for _ in range(2)]
        later = [c for c in got if c.index >= 2]  # after chunk 0 (asked together) and 1 (the first join)
        assert len(later) == 4 and all(c.batch_size == 2 for c in later)
    finally:
        engine.stop()


# ------------------------------------------------------------------ batching gain under load


def test_step_fit_is_a_line_through_all_measured_sizes():
    f = step_fit({1: 0.1, 2: 0.2, 4: 0.4})
    assert math.isclose(f(3) - f(2), 0.1) and math.isclose(f(1), 0.1)
    g = step_fit({1: 0.135, 2: 0.074, 3: 0.181, 4: 0.103})  # load noise around a gentle slope
    assert 0 <= g(4) - g(3) <= 0.5 * g(1)
    assert step_fit({3: 0.3})(8) == 0.3 and step_fit({})(1) == math.inf


def test_made_ahead_chunks_join_when_the_fastest_steps_say_batching_pays(model):
    # Step times averaged on a loaded machine (seen live): a step of 4 at 3.3x a step of
    # 1, a step of 2 faster than one of 1. Their differences refused the third and fourth
    # joins; the fastest step of each size (load only adds time) says batching pays.
    noisy = {1: 0.113, 2: 0.094, 3: 0.239, 4: 0.376}
    engine = _engine(model, 4, prearm_chunks=1, deadline_s=30.0, max_batch=4)
    with engine._cond:
        engine._step_s = dict(noisy)
        engine._step_min = {1: 0.045, 2: 0.062, 3: 0.08, 4: 0.095}
    engine.request("s2", 2)
    assert engine.schedule().session_ids == ("s2", "s0", "s1", "s3")
    # where even the fastest steps grow by a whole batch-1 step, nothing joins
    with engine._cond:
        engine._step_min = {1: 0.05, 2: 0.1, 3: 0.15, 4: 0.2}
    assert engine.schedule().session_ids == ("s2",)
    # the averaged times alone (no fastest step known, as in the tests above) refuse here
    with engine._cond:
        engine._step_min = {}
    assert engine.schedule().session_ids != ("s2", "s0", "s1", "s3")
