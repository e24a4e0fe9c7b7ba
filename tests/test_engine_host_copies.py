"""The engine's periodic checkpoint copies land in reused host buffers (workers.host_buffers)."""

from __future__ import annotations

import queue

import pytest
import torch

from kernels.model import StreamingVideoModel
from workers.engine import Engine, EngineSettings


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)


def test_checkpoint_copies_reuse_pooled_buffers_and_hold_the_state_of_their_chunk(model):
    saved = []  # (chunk index, tensors cloned while the copy is lent to the checkpoint)

    def checkpoint(sid, state):
        saved.append((state.chunk_index, {k: v.clone() for k, v in state.tensors.items()}))

    q: queue.Queue = queue.Queue()
    engine = Engine(model, "tcp://test", EngineSettings(checkpoint_every=1, prearm_chunks=0),
                    checkpoint=checkpoint).start()
    try:
        engine.attach("s", engine.call(model.new_session, "p", 0).result(), q.put)
        for k in range(6):  # one chunk at a time, each acknowledged: one checkpoint each
            engine.request("s", k + 1)
            assert q.get(timeout=60).index == k
            engine.ack("s", k + 1)
        engine.call(lambda: None).result(timeout=60)  # the last step's update is over
        engine.save("s", model.new_session("p", 0)).result(timeout=60)  # after every periodic one
    finally:
        engine.stop()
    assert [i for i, _ in saved[:-1]] == [1, 2, 3, 4, 5, 6]
    pool = engine.host_copies
    assert pool.allocated <= 2 and pool.reused >= 4, (pool.allocated, pool.reused)
    assert pool.idle_bytes > 0  # every buffer went back
    reference = model.new_session("p", 0)
    for index, tensors in saved[:-1]:
        model.step([reference])
        assert reference.chunk_index == index
        assert tensors.keys() == reference.tensors.keys()
        assert all(torch.equal(tensors[k], reference.tensors[k].cpu()) for k in tensors)
