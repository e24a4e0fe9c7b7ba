"""The engine's batching, flow control and quality valve on a real one-worker LocalCluster."""

from __future__ import annotations

import time

import dask.config
import numpy as np
import pytest

from framework import Server
from kernels.model import StreamingVideoModel
from workers.actor_rpc import call_actor
from workers.host_lookup import get_host

PROMPT = "a red fox running through snow"
B_STAR = 4  # the quality valve's batch for this module's cluster


@pytest.fixture(scope="module")
def server():
    # A generous deadline: on a loaded 2-core machine a tiny step can take longer than the
    # default target (0.75 s), and then the rule rightly refuses to wait for anyone.
    with dask.config.set({
        "turboserve.slo-s": 10.0,
        "turboserve.engine.batch-window-s": 0.5,  # submits can be 20-80 ms apart on a loaded machine
        "turboserve.engine.max-unread-chunks": 8,
        "turboserve.engine.quality-valve.batch": B_STAR,
        "turboserve.engine.quality-valve.steps": 2,
    }):
        # The control loop off: these are the engine's rules on one worker (an autoscaler
        # adding a worker, or a rebalance, would split the sessions this counts).
        with Server.local(n_workers=1, model="tiny", dashboard_address=":0", adaptive=False) as server:
            yield server


def _metrics(server):
    (per_worker,) = server.client.run(lambda dask_worker: get_host(dask_worker).metrics()).values()
    return per_worker["tiny"]


def test_four_back_to_back_submits_form_one_step(server):
    # The sessions start out of phase, each submitted alone. They come into phase within
    # the first rounds (a round may still be a realignment: three sessions find their
    # chunk made ahead in the step before and the fourth's is made alone), and from then
    # on every round of four back-to-back submits costs one step of all four sessions:
    # the first request starts it and the others' next chunks are made in it ahead of
    # their requests (prearm-chunks: 1), or were made in the step before (a session whose
    # chunk was made ahead gets it at once and its next one joins this step).
    sessions = [server.open_session(PROMPT, seed=i) for i in range(4)]
    rounds = []
    try:
        for s in sessions:  # each alone first: the sessions are out of phase
            s.submit().result(timeout=60)
        for _ in range(6):
            before = _metrics(server)
            futures = [s.submit() for s in sessions]
            chunks = [f.result(timeout=60) for f in futures]
            after = _metrics(server)
            assert not any(c.degraded for c in chunks)  # 4 is not over b* = 4
            rounds.append((after.steps - before.steps, after.chunks - before.chunks,
                           tuple(c.batch_size for c in chunks)))
        # In phase: every chunk of the last three rounds came from a step of all four, and
        # every step in them was one of four. Which round counts a step is not fixed: the
        # step that makes the next chunks ahead may end after a round's last metrics read
        # (that round counts it, the next one counts none), so no round-by-round count.
        last = rounds[-3:]
        assert all(batches == (4, 4, 4, 4) for _, _, batches in last), rounds
        assert all(n_chunks == 4 * n_steps for n_steps, n_chunks, _ in last), rounds
        assert 2 <= sum(n_steps for n_steps, _, _ in last) <= 4, rounds
    finally:
        for s in sessions:
            s.close()


def test_an_abandoned_stream_holds_at_most_the_window_on_the_worker(server):
    s = server.open_session(PROMPT, seed=7)
    try:
        stream = s.stream(3000)
        assert next(stream).index == 0  # then the reader walks away

        def info():
            return server.client.sync(call_actor, s._channel.rpc(), s._channel.key, "info")

        t0 = time.monotonic()
        while info()["chunk_index"] < 8:  # the worker produces ahead of the reader ...
            assert time.monotonic() - t0 < 120, info()
            time.sleep(0.05)
        per_chunk = (time.monotonic() - t0) / 8
        time.sleep(max(1.0, 5 * per_chunk))  # ... for 5 more chunks' time it would go on without the window
        after = info()
        assert after["chunk_index"] == 8  # chunks 0-7, none acknowledged (the next poll would ack chunk 0)
        assert after["unread"] <= 8
    finally:
        s.close()


def test_a_worker_over_its_batch_makes_degraded_deterministic_counted_chunks(server):
    before = _metrics(server).degraded_chunks
    n = B_STAR + 2
    sessions = [server.open_session(PROMPT, seed=100 + i) for i in range(n)]
    try:
        # All first chunks at once, so one step holds all n (> b*) of them.
        futures = [s.submit() for s in sessions]
        chunks = [f.result(timeout=120) for f in futures]
    finally:
        for s in sessions:
            s.close()
    degraded = [c for c in chunks if c.degraded]
    assert degraded, [c.batch_size for c in chunks]
    assert all(c.denoise_steps == 2 and c.batch_size > B_STAR for c in degraded)
    assert _metrics(server).degraded_chunks - before == len(degraded)
    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    for i, c in enumerate(chunks):  # what the model gives at that step count
        ref = model.step([model.new_session(PROMPT, 100 + i)], denoise_steps=c.denoise_steps)[0]
        assert np.array_equal(c.frames, ref)
