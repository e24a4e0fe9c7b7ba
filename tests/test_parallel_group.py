"""The leader's GroupModel and a follower's rank, in one process (two threads, gloo).

What the live group does between two workers, without Dask: the follower's messages go
to a :class:`FollowerRank` on a thread. A session stepped by the group gives the frames
of the plain model (within one uint8 level), a checkpoint copy is the whole state, a
split merges it back in place; a first group step that fails falls back to degree 1
with the full states, and a later one tells the session to look for its checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import numpy as np
import pytest
import torch

from kernels.model import StreamingVideoModel
from kernels.parallel import connect_group, layout
from workers.errors import SessionMoved
from workers.p2p_group import free_port
from workers.parallel_group import SHARD_KEY, FollowerRank, GroupModel

PROMPT = "a red fox running through snow"


def _model() -> StreamingVideoModel:
    return StreamingVideoModel.from_preset("tiny", weights_seed=0, num_threads=1)


def _pair(timeout_s: float = 60.0):
    port = free_port()
    with cf.ThreadPoolExecutor(2) as pool:
        ranks = [pool.submit(connect_group, "127.0.0.1", port, r, 2, group_id="t", timeout_s=timeout_s)
                 for r in range(2)]
        return [f.result(timeout=120) for f in ranks]


class Follower:
    """rank 1 on a thread of its own, answering the leader's messages as the worker handler does."""

    def __init__(self, group, timeout_s: float = 60.0) -> None:
        self.rank = FollowerRank("t", _model(), group, timeout_s)
        self.pool = cf.ThreadPoolExecutor(1)

    def send(self, address: str, msg: dict) -> cf.Future:
        if msg["action"] == "step":
            return self.pool.submit(self.rank.step, msg["keys"], msg["denoise_steps"], msg["new"])
        return self.pool.submit(self.rank.take, msg["key"], msg["release"])


def _close_to(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


@pytest.fixture
def reference():
    model = _model()
    state = model.new_session(PROMPT, 4)
    return [model.step([state])[0] for _ in range(5)], state


def test_a_session_stepped_by_the_group_gets_the_plain_frames_and_comes_back_whole(reference):
    frames, final = reference
    g0, g1 = _pair()
    follower = Follower(g1)
    leader = _model()
    gm = GroupModel(leader, g0, "t", ["follower"], follower.send)
    s = leader.new_session(PROMPT, 4)
    got = [leader.step([s])[0]]  # chunk 0 at degree 1
    got += [gm.step([s])[0] for _ in range(2)]  # re-sharded at the first group step
    assert layout(s) == (0, 2) and s.tensors["kv.0.k"].shape[0] == 1
    assert follower.rank.steps == 2 and list(follower.rank.shards) == [s.scalars[SHARD_KEY]]
    copy = gm.host_copy(s)  # a checkpoint: the whole state, the shards stay
    assert layout(copy) == (0, 1) and copy.tensors["kv.0.k"].shape[0] == 2 and follower.rank.shards
    assert gm.dissolve() == 1  # the split: merged back in place, the follower keeps nothing
    assert layout(s) == (0, 1) and SHARD_KEY not in s.scalars and not follower.rank.shards
    got += [leader.step([s])[0] for _ in range(2)]
    assert all(_close_to(g, w) for g, w in zip(got, frames)), "frames within one uint8 level"
    for name, want in final.tensors.items():
        torch.testing.assert_close(s.tensors[name], want, atol=1e-4, rtol=1e-4, msg=name)
    g0.close(), g1.close()


def test_a_first_group_step_that_fails_serves_the_session_at_degree_1(reference):
    frames, _ = reference
    g0, g1 = _pair(timeout_s=5.0)
    g1.close(abort=True)  # the follower is gone before the first step

    def dead(address, msg):
        fut = cf.Future()
        fut.set_exception(ConnectionError(f"{address} is gone"))
        return fut

    leader = _model()
    reports = []
    gm = GroupModel(leader, g0, "t", ["follower"], dead, timeout_s=5.0, on_failure=lambda *a: reports.append(a))
    s = leader.new_session(PROMPT, 4)
    got = [gm.step([s])[0] for _ in range(2)]
    assert gm.broken is not None and "first step failed" in gm.broken
    assert reports == [(gm.broken, False)], "the scheduler hears of it once: the sessions are fine"
    assert layout(s) == (0, 1) and s.tensors["kv.0.k"].shape[0] == 2
    assert all(np.array_equal(g, w) for g, w in zip(got, frames)), "degree 1 again: the plain frames exactly"
    g0.close()


def test_a_group_step_that_fails_later_sends_the_session_to_its_checkpoint():
    g0, g1 = _pair(timeout_s=5.0)
    follower = Follower(g1, timeout_s=5.0)
    leader = _model()
    reports = []
    gm = GroupModel(leader, g0, "t", ["follower"], follower.send, timeout_s=5.0,
                    on_failure=lambda *a: reports.append(a))
    s = leader.new_session(PROMPT, 4)
    gm.step([s])
    g1.close(abort=True)  # the follower dies after the session depends on the group
    with pytest.raises(SessionMoved, match="restart from their checkpoints"):
        gm.step([s])
    assert gm.lost is not None and reports == [(gm.lost, True)], "the scheduler recovers the sessions"
    assert gm.export_state(s) is s  # nothing to merge with any more: recovery uses the checkpoint
    g0.close()


def test_a_checkpoint_copy_that_cannot_merge_reports_the_group_lost():
    g0, g1 = _pair(timeout_s=5.0)
    follower = Follower(g1, timeout_s=5.0)

    def send(address, msg):  # steps go through; the follower is gone when the shards are asked for
        if msg["action"] == "take":
            fut = cf.Future()
            fut.set_exception(ConnectionError(f"{address} is gone"))
            return fut
        return follower.send(address, msg)

    leader = _model()
    reports = []
    gm = GroupModel(leader, g0, "t", ["follower"], send, timeout_s=5.0, on_failure=lambda *a: reports.append(a))
    s = leader.new_session(PROMPT, 4)
    gm.step([s])
    with pytest.raises(ConnectionError):
        gm.host_copy(s)
    assert gm.lost is not None and reports == [(gm.lost, True)]
    g0.close(), g1.close()


def test_an_engine_whose_checkpoint_copy_fails_skips_the_checkpoint_and_serves_on():
    from workers.engine import Engine
    from workers.engine_settings import EngineSettings

    class Failing:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def host_copy(self, state):
            raise ConnectionError("a follower is gone")

    saved, got = [], []
    model = _model()
    engine = Engine(Failing(model), "w", EngineSettings(checkpoint_every=1, batch_window_s=0.0),
                    checkpoint=lambda sid, st: saved.append(sid)).start()
    try:
        state = engine.call(model.new_session, PROMPT, 4).result(timeout=60)
        engine.attach("s", state, got.append, want=2)
        deadline = time.monotonic() + 120
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c.index for c in got] == [0, 1], got
        assert not saved, "no checkpoint without a copy"
        assert engine.call(lambda: "alive").result(timeout=30) == "alive"
    finally:
        engine.stop()
