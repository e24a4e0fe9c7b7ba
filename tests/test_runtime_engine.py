"""The per-worker engine, without Dask: batching, request semantics, boundaries, checkpoints."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from kernels.model import StreamingVideoModel
from workers.engine import Engine, EngineSettings
from workers.errors import SessionNotFound
from workers.step_scheduler import StepPlan


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0)


def _engine(model, **settings):
    saved = []
    engine = Engine(model, "tcp://test", EngineSettings(**settings), checkpoint=lambda sid, st: saved.append((sid, st.chunk_index)))
    engine.saved = saved
    return engine.start()


def _collect(n):
    """A delivery callback that puts chunks (or errors) on a queue, and a reader of n items."""
    q: queue.Queue = queue.Queue()

    def take():
        return [q.get(timeout=60) for _ in range(n)]

    return q.put, take


def test_plan_is_plain_data():
    assert StepPlan.make_empty().batch_size == 0
    assert StepPlan(("a", "b")).batch_size == 2


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_batch"):
        EngineSettings(max_batch=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        EngineSettings(checkpoint_every=-1)


def test_due_sessions_are_coalesced_into_one_step(model):
    engine = _engine(model, max_batch=8)
    try:
        deliver, take = _collect(4)
        states = [engine.call(model.new_session, f"prompt {i}", i).result() for i in range(4)]
        for i, st in enumerate(states):
            engine.attach(f"s{i}", st, deliver)  # attached idle: nothing is due yet
        with engine._cond:  # raise all four wants at once, as four clients arriving together would
            for i in range(4):
                engine._entries[f"s{i}"].want = 1
            engine._cond.notify()
        chunks = take()
        assert {c.session_id for c in chunks} == {"s0", "s1", "s2", "s3"}
        assert all(c.batch_size == 4 and c.index == 0 for c in chunks)
        assert all(c.frames.dtype == np.uint8 and c.frames.shape == (12, 64, 64, 3) for c in chunks)
        assert engine.steps == 1
    finally:
        engine.stop()


def test_batching_off_runs_one_session_per_step(model):
    engine = _engine(model, max_batch=8, batching=False)
    try:
        deliver, take = _collect(2)
        for i in range(2):
            engine.attach(f"s{i}", engine.call(model.new_session, "p", i).result(), deliver, want=1)
        chunks = take()
        assert [c.batch_size for c in chunks] == [1, 1]
        assert engine.steps == 2
    finally:
        engine.stop()


def test_requests_are_a_high_water_mark_and_chunks_match_the_model(model):
    engine = _engine(model)
    try:
        deliver, take = _collect(2)
        engine.attach("s", engine.call(model.new_session, "a fox", 3).result(), deliver)
        assert engine.request("s", 2) == 0
        assert engine.request("s", 1) <= 2  # a lower mark changes nothing
        chunks = take()
        assert [c.index for c in chunks] == [0, 1]
        assert all(c.t_request_s <= c.t_start_s <= c.t_done_s for c in chunks)
        assert all(c.latency_s == pytest.approx(c.t_done_s - c.t_request_s) for c in chunks)
        reference = model.new_session("a fox", 3)
        expected = [model.step([reference])[0] for _ in range(2)]
        assert all(np.array_equal(c.frames, e) for c, e in zip(chunks, expected))
    finally:
        engine.stop()


def test_detach_happens_at_a_chunk_boundary(model):
    engine = _engine(model)
    try:
        deliver, take = _collect(1)
        engine.attach("s", engine.call(model.new_session, "p", 0).result(), deliver, want=1)
        detached = engine.detach("s").result(timeout=60)
        # Either the chunk was made before the detach or not at all: never half a step.
        assert detached.state.chunk_index in (0, 1)
        assert detached.want == 1
        assert engine.sessions() == []
        with pytest.raises(SessionNotFound, match="'s'"):
            engine.request("s", 5)
        with pytest.raises(ValueError, match="already attached"):
            engine.attach("t", detached.state, deliver)
            engine.attach("t", detached.state, deliver)
    finally:
        engine.stop()


def test_hold_stops_after_the_chunk_in_flight(model):
    engine = _engine(model)
    try:
        deliver, take = _collect(1)
        engine.attach("s", engine.call(model.new_session, "p", 0).result(), deliver, want=50)
        take()  # at least one chunk came
        next_index = engine.hold("s")
        state = engine.detach("s").result(timeout=60).state
        assert state.chunk_index == next_index or state.chunk_index == next_index + 1
        assert state.chunk_index < 50
    finally:
        engine.stop()


def test_checkpoints_every_n_chunks_once_the_client_has_the_chunks_before_them(model):
    engine = _engine(model, checkpoint_every=2)
    try:
        deliver, take = _collect(5)
        engine.attach("s", engine.call(model.new_session, "p", 0).result(), deliver, want=5)
        take()
        engine.call(lambda: None).result(timeout=60)  # the last step's update is over
        flush = lambda: engine.save("s", model.new_session("p", 0)).result(timeout=60)  # noqa: E731
        flush()  # a direct save is queued after any periodic one
        assert engine.saved == [("s", 0)]  # nothing acknowledged: nothing periodic written
        engine.ack("s", 3)
        flush()
        assert engine.saved[1:] == [("s", 2), ("s", 0)]
        engine.ack("s", 5)
        flush()
        assert engine.saved[3:] == [("s", 4), ("s", 0)]
    finally:
        engine.stop()


def test_one_step_runs_one_resolution(model):
    engine = Engine(model, "tcp://test", EngineSettings(max_batch=8))  # not started: schedule() only
    noop = lambda item: None  # noqa: E731
    engine.attach("small", model.new_session("p", 0), noop, want=1)
    engine.attach("large", model.new_session("p", 1, height=32, width=32), noop, want=1)
    engine.attach("small2", model.new_session("p", 2), noop, want=1)
    plan = engine.schedule()
    assert len({(engine._entries[s].state.height) for s in plan.session_ids}) == 1
    assert plan.batch_size in (1, 2)


def test_a_failed_step_is_delivered_to_its_sessions(model):
    engine = _engine(model)
    try:
        got: list = []
        done = threading.Event()
        foreign = model.new_session("p", 0)
        foreign.model = "wan-1.3b"  # the model refuses a state of another model
        engine.attach("s", foreign, lambda item: (got.append(item), done.set()), want=1)
        assert done.wait(30)
        assert isinstance(got[0], ValueError) and "wan-1.3b" in str(got[0])
        assert engine.sessions() == []  # dropped, not retried forever
        assert engine.call(lambda: 42).result(timeout=30) == 42  # and the engine still runs
    finally:
        engine.stop()


@pytest.mark.parametrize("invariant", [True, False])
def test_the_worker_builds_its_model_as_the_engine_settings_say(invariant):
    """``turboserve.engine.batch-invariant``, resolved once by the client, reaches the model."""
    import types

    import framework.config  # noqa: F401  (turboserve defaults)
    from workers.engine import EngineSettings
    from workers.plugin import ModelHost

    settings = EngineSettings.from_config(batch_invariant=invariant)
    assert settings.batch_invariant is invariant
    host = ModelHost("tiny", settings, store=None)
    host.worker = types.SimpleNamespace(address="tcp://test:1")
    engine = host._build("tiny")
    assert engine.model.batch_invariant is invariant
