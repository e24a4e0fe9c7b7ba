"""The engine's host copies land in reused host buffers: checkpoint copies and suspended states."""

from __future__ import annotations

import gc
import queue
import time

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


def test_a_fenced_periodic_checkpoint_is_a_note_not_a_warning(model, caplog):
    """A session served elsewhere now (a newer owner): the old engine's queued save is
    refused by design, logged at INFO without a traceback; any other failure warns."""
    from storage.errors import CheckpointFenced

    failures = [CheckpointFenced("served elsewhere now"), OSError("disk full")]

    def checkpoint(sid, state):
        raise failures.pop(0)

    q: queue.Queue = queue.Queue()
    engine = Engine(model, "tcp://test", EngineSettings(checkpoint_every=1, prearm_chunks=0),
                    checkpoint=checkpoint).start()
    try:
        engine.attach("s", engine.call(model.new_session, "p", 0).result(), q.put)
        with caplog.at_level("INFO", logger="workers.engine"):
            for k in range(2):
                engine.request("s", k + 1)
                assert q.get(timeout=60).index == k
                engine.ack("s", k + 1)
                engine.call(lambda: None).result(timeout=60)
                deadline = time.monotonic() + 30
                while len(failures) > 1 - k and time.monotonic() < deadline:
                    time.sleep(0.01)
            engine.call(lambda: None).result(timeout=60)
    finally:
        engine.stop()
    records = [r for r in caplog.records if r.name == "workers.engine" and "checkpoint of session s" in r.getMessage()]
    assert [(r.levelname, r.exc_info is not None) for r in records] == [("INFO", False), ("WARNING", True)]
    assert "served elsewhere now" in records[0].getMessage()


def test_suspending_a_host_state_copies_nothing(model):
    engine = Engine(model, "tcp://test", EngineSettings())
    state = model.new_session("p", 0)
    assert engine.offload(state) is state  # a CPU worker's state already is on the host
    assert engine.parked_copies.allocated == 0


@pytest.mark.gpu
def test_suspended_states_are_parked_in_reused_pinned_buffers():
    gpu_model = StreamingVideoModel.from_preset("tiny", device="cuda", weights_seed=0)
    engine = Engine(gpu_model, "tcp://test", EngineSettings(), device=gpu_model.device)
    big = {"kv.0.k": torch.randn(1 << 20, device="cuda")}  # over LEND_MIN_BYTES: a lent buffer
    ptrs = []
    for _ in range(3):  # suspend, resume, suspend again ...
        state = gpu_model.new_session("p", 0)
        state.tensors.update({k: v.clone() for k, v in big.items()})
        reference = {k: v.cpu() for k, v in state.tensors.items()}
        parked = engine.offload(state)
        assert state.tensors == {}  # the device memory went back
        assert all(t.is_pinned() for t in parked.tensors.values() if t.numel())
        assert all(torch.equal(parked.tensors[k], reference[k]) for k in reference)
        ptrs.append(parked.tensors["kv.0.k"].data_ptr())
        del parked  # resumed onto the device: the buffer comes back
        gc.collect()
    pool = engine.parked_copies
    assert len(set(ptrs)) == 1 and (pool.allocated, pool.reused) == (1, 2)


@pytest.mark.gpu
def test_a_host_copy_for_a_move_keeps_the_device_state_until_the_move_commits():
    # SessionActor.export stages the frozen device state on the host without releasing
    # it: a move that fails afterwards serves on from the same device tensors.
    gpu_model = StreamingVideoModel.from_preset("tiny", device="cuda", weights_seed=0)
    engine = Engine(gpu_model, "tcp://test", EngineSettings(), device=gpu_model.device)
    state = gpu_model.new_session("p", 0)
    before = {k: v.clone() for k, v in state.tensors.items()}
    host = engine.offload(state, False)
    assert state.tensors and all(torch.equal(state.tensors[k], before[k]) for k in before)
    assert all(torch.equal(host.tensors[k], before[k].cpu()) for k in before)
