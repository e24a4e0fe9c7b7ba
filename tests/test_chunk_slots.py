"""A chunk future's task and its worker's task slots (:class:`workers.chunk_futures.SlotKeeper`).

A chunk task only waits for its session's actor. It keeps its task slot while nothing
else wants one (leaving it costs a message to the scheduler and two transitions per
chunk on the worker's event loop, beside the model step), and leaves it as soon as any
other task on the worker is ready to run: a chunk that takes long never keeps other
work off its worker. On a real LocalCluster of one worker with one task slot
(``cluster.threads-per-worker: 1``, the default), the tiny model.
"""

from __future__ import annotations

import threading

import pytest

from framework import Server

PROMPT = "a heron standing in a river"


@pytest.fixture(scope="module")
def server():
    with Server.local(n_workers=1, model="tiny", store=None, dashboard_address=None) as server:
        yield server


def _task_states(server, key) -> list[str]:
    """The states chunk task ``key`` went through on the worker (its state machine's log)."""

    def states(dask_worker, key=key):
        return [e[2] for e in dask_worker.state.log if e[0] == key and len(e) > 2 and isinstance(e[2], str)]

    return next(iter(server.client.run(states).values()))


def _stall_engine(dask_worker):
    """Block the worker's engine thread between two steps until released (Engine.call)."""
    host = dask_worker.plugins["turboserve-model-host"]
    release = threading.Event()
    dask_worker._turboserve_release_engine = release
    host.engine(host.model).call(release.wait, 60)  # returns at once; the engine thread blocks


def _release_engine(dask_worker):
    dask_worker._turboserve_release_engine.set()


def test_a_chunk_read_one_at_a_time_keeps_its_task_slot(server):
    s = server.open_session(PROMPT, seed=0)
    futures = []
    for _ in range(4):
        futures.append(s.submit())
        futures[-1].result(timeout=60)
    for f in futures:
        states = _task_states(server, f.key)
        assert "executing" in states and "memory" in states, states
        assert "long-running" not in states, f"chunk {f.key[1]} left its slot with nothing else waiting: {states}"
    s.close()


def test_a_chunk_future_waiting_for_its_chunk_does_not_keep_other_work_off_its_worker(server):
    s = server.open_session(PROMPT, seed=1)
    s.submit().result(timeout=60)
    server.client.run(_stall_engine)
    try:
        pending = s.submit()  # its task waits in the worker's only slot: the engine makes nothing
        other = server.client.submit(sum, [1, 2, 3], workers=[s.worker], pure=False)
        assert other.result(timeout=10) == 6  # the chunk task gave its slot up for it
        assert not pending.done()
        assert "long-running" in _task_states(server, pending.key)
    finally:
        server.client.run(_release_engine)
    chunk = pending.result(timeout=60)
    assert chunk.index == 1
    s.close()
