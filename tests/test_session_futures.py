"""Chunks as Dask futures (issue 12): ``Session.submit()`` on a real LocalCluster.

A chunk future is a :class:`distributed.Future` like any other: ``wait``,
``as_completed``, ``client.gather`` and ``client.submit`` take it, its data lives on the
session's worker until gathered, and its frames are the frames of the model's own
uninterrupted run (the same as :meth:`Session.stream` gives). Chunk indices are handed
out once and in order whichever way they are read, across a migration, and across the
death of the worker that holds the session and the futures' data.

One module-scoped cluster of three workers (``server`` in ``conftest.py``); the test that
kills a worker runs last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import dask.config
import numpy as np
import pytest
from distributed import Future, as_completed, futures_of, wait
from distributed.core import Status

from framework import Chunk, Server, SessionClosed
from framework.chunk_future import ChunkFuture
from storage import CheckpointStore
from workers.access import TokenRPC
from workers.chunk_futures import CHUNK_KEY_PREFIX, RESULT_OP

PROMPT = "a red fox running through snow"


def _assert_same(chunks: list[Chunk], expected: list[np.ndarray]) -> None:
    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the uninterrupted run"


def test_submit_returns_a_dask_future_whose_data_stays_on_the_session_s_worker(server, reference):
    s = server.open_session(PROMPT, seed=0)
    fut = s.submit()
    assert isinstance(fut, Future) and futures_of([fut]) == [fut]
    assert fut.key[0].startswith(CHUNK_KEY_PREFIX) and fut.key[1] == 0
    wait([fut], timeout=60)
    assert server.client.who_has([fut])[fut.key] == (s.worker,)  # not the scheduler, not the client
    _assert_same([fut.result(timeout=60)], reference(PROMPT, 0, 1))
    s.close()


def test_work_stealing_leaves_chunk_tasks_on_the_session_s_worker(server):
    # Queued chunk tasks on a busy worker are never moved to idle ones: a stolen task
    # would fetch its chunk worker-to-worker and keep it away from the session's worker
    # (and out of what dies with it). Dask then scores the task as not stealable.
    s = server.open_session(PROMPT, seed=8)
    futures = [s.submit() for _ in range(3)]

    def scores(dask_scheduler, keys):
        steal = dask_scheduler.extensions["stealing"]
        return [steal.steal_time_ratio(dask_scheduler.tasks[k]) for k in keys if k in dask_scheduler.tasks]

    ratios = server.client.run_on_scheduler(scores, keys=[f.key for f in futures])
    assert ratios and all(r == (None, None) for r in ratios)
    wait(futures, timeout=120)
    assert set(server.client.who_has(futures).values()) == {(s.worker,)}
    s.close()


def test_a_finished_chunk_future_s_result_comes_from_its_worker_without_asking_the_scheduler(server, reference):
    s = server.open_session(PROMPT, seed=9)
    fut = s.submit()
    wait([fut], timeout=60)

    def count_lookups(dask_scheduler):  # the scheduler's handlers Dask's own result() path calls
        calls = dask_scheduler._ts_lookups = []
        dask_scheduler._ts_handlers = {op: dask_scheduler.handlers[op] for op in ("gather", "who_has")}
        for op, handler in dask_scheduler._ts_handlers.items():

            def counted(*args, _op=op, _handler=handler, **kwargs):
                calls.append(_op)
                return _handler(*args, **kwargs)

            dask_scheduler.handlers[op] = counted

    def lookups(dask_scheduler):
        return list(dask_scheduler._ts_lookups)

    def restore(dask_scheduler):
        dask_scheduler.handlers.update(dask_scheduler._ts_handlers)

    server.client.run_on_scheduler(count_lookups)
    _assert_same([fut.result(timeout=60)], reference(PROMPT, 9, 1))
    assert server.client.run_on_scheduler(lookups) == []
    server.client.gather([fut])  # Dask's own path, counted: the check can fail
    assert server.client.run_on_scheduler(lookups)
    server.client.run_on_scheduler(restore)
    s.close()


def test_wait_as_completed_and_gather_take_chunk_futures(server, reference):
    s = server.open_session(PROMPT, seed=1)
    futures = [s.submit() for _ in range(4)]
    done, not_done = wait(futures, timeout=120)
    assert len(done) == 4 and not not_done
    completed = sorted((f.result() for f in as_completed(futures)), key=lambda c: c.index)
    gathered = server.client.gather(futures)
    _assert_same(gathered, reference(PROMPT, 1, 4))
    _assert_same(completed, reference(PROMPT, 1, 4))
    s.close()


def test_a_chunk_future_is_the_input_of_further_dask_work(server, reference):
    s = server.open_session(PROMPT, seed=2)
    fut = s.submit()
    brightness = server.client.submit(lambda chunk: float(chunk.frames.mean()), fut)
    assert brightness.result(timeout=60) == pytest.approx(float(reference(PROMPT, 2, 1)[0].mean()))
    s.close()


def test_futures_and_stream_share_one_gapless_sequence(server, reference):
    s = server.open_session(PROMPT, seed=3)
    first = s.submit()
    streamed = list(s.stream(2))  # chunks 1 and 2, while chunk 0 waits in its future
    later = [s.submit(), s.submit()]
    streamed += list(s.stream(1))
    chunks = sorted([first.result(60), *streamed, *server.client.gather(later)], key=lambda c: c.index)
    _assert_same(chunks, reference(PROMPT, 3, 6))
    assert [c.index for c in streamed] == [1, 2, 5]
    s.close()


def test_futures_resolve_across_a_migration(server, reference):
    s = server.open_session(PROMPT, seed=4)
    before = [s.submit() for _ in range(2)]
    wait(before, timeout=120)
    source = s.worker
    target = next(w for w in server.workers() if w != source)
    s.migrate(target)
    after = [s.submit() for _ in range(2)]
    chunks = server.client.gather(before + after)
    _assert_same(chunks, reference(PROMPT, 4, 4))
    assert chunks[2].migrated and chunks[2].worker == target
    assert server.client.who_has(after)[after[0].key] == (target,)
    s.close()


def test_a_future_of_a_session_closed_meanwhile_raises_session_closed(server):
    s = server.open_session(PROMPT, seed=5)
    s.submit().result(timeout=60)
    server.session(s.id).close()
    with pytest.raises(SessionClosed):
        s.submit().result(timeout=60)


def test_async_twins_give_the_chunk_and_the_future(server, reference):
    async def main():
        async with await Server(server.client.scheduler.address, asynchronous=True) as aserver:
            s = await aserver.aopen_session(PROMPT, seed=6)
            chunks = [await s.asubmit()]
            fut = await s.asubmit_future()
            assert isinstance(fut, Future)
            chunks.append(await fut)
            chunks += [c async for c in s.astream(1)]
            await s.aclose()
            return chunks

    _assert_same(asyncio.run(main()), reference(PROMPT, 6, 3))


def test_futures_after_a_streamed_chunk_go_past_the_unread_bound(server, reference):
    # The chunk a stream read last is acknowledged by the next request: futures, which
    # never poll, do not hold the session at engine.max-unread-chunks (they hung there).
    s = server.open_session(PROMPT, seed=8)
    chunks = list(s.stream(1))
    n = dask.config.get("turboserve.engine.max-unread-chunks") + 2
    chunks += [s.submit().result(timeout=60) for _ in range(n)]
    _assert_same(chunks, reference(PROMPT, 8, n + 1))
    s.close()


def test_the_session_s_worker_hands_a_future_s_chunk_to_the_client_that_asks(server, reference):
    # What ChunkFuture.result() asks first: the worker answers as the task returns (or
    # from its data), and "pending" for a key no task brings there.
    # ChunkFuture overrides Future._result, which result() and await go through.
    assert "_result" in vars(Future) and "_result" in vars(ChunkFuture)
    s = server.open_session(PROMPT, seed=9)
    fut = s.submit()
    assert isinstance(fut, ChunkFuture)

    def ask(key, timeout):
        rpc = TokenRPC(server.client.rpc(s.worker), s.access_token)  # the session's holder only (workers.access)
        return server.client.sync(getattr(rpc, RESULT_OP), key=key, timeout=timeout)

    early = ask(fut.key, 60)  # sent before the task reaches the worker, most likely
    wait([fut], timeout=60)
    late = ask(fut.key, 60)  # from the worker's data
    assert early["status"] == late["status"] == "OK"
    for chunk in (early["result"], late["result"], fut.result(60)):
        _assert_same([chunk], reference(PROMPT, 9, 1))
    assert ask((fut.key[0], 99), 0.2) == {"status": "pending"}
    s.close()


# ------------------------------------------------------------------ losing a worker (last)


def _kill(server, worker: str) -> None:
    name = server.client.scheduler_info(n_workers=-1)["workers"][worker]["name"]
    # The nanny would restart the worker; this one stays dead (a crash, not a restart).
    server.cluster.workers[name].status = Status.closing_gracefully
    os.kill(server.client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)


@pytest.mark.slow
def test_no_chunk_lost_or_repeated_when_the_worker_with_the_futures_dies(server, reference):
    s = server.open_session(PROMPT, seed=7)
    victim = s.worker
    futures = [s.submit() for _ in range(6)]
    wait(futures, timeout=120)  # every chunk taken: its data on the victim...
    assert set(server.client.who_has(futures).values()) == {(victim,)}
    store = CheckpointStore(server.settings.store)
    deadline = time.monotonic() + 60
    while not (store.exists(s.id) and store.latest_chunk(s.id) == 6):  # ...and the checkpoint past it
        assert time.monotonic() < deadline, "no checkpoint at chunk 6"
        time.sleep(0.05)
    chunks = server.client.gather(futures[:2])
    _kill(server, victim)
    killed_at = time.monotonic()
    # Dask recomputes the lost futures; the session is recovered elsewhere and the
    # chunks the checkpoint had passed are made again from the session's identity.
    chunks.append(futures[2].result(timeout=120))  # its worker is gone: Dask's path
    # The recomputed task's call to the dead worker gives up within the actor connect
    # bound (5 s), not after Dask's 30 s of connect retries (it took 31 s before).
    assert time.monotonic() - killed_at < 25
    chunks += server.client.gather(futures[3:])
    asked = time.monotonic()  # recomputed on another worker: result() goes there at once
    assert futures[3].result(timeout=60).index == 3 and time.monotonic() - asked < 5
    more = [s.submit() for _ in range(2)]
    chunks += server.client.gather(more)
    _assert_same(chunks, reference(PROMPT, 7, 8))
    assert victim not in server.workers()
    assert all(c.worker != victim for c in chunks[2:])
    # Every future still held whose data died with the victim (0 and 1 too: gathering
    # copies, the future keeps its data on the worker) was recomputed; the checkpoint was
    # at 6, so each of them was made again from the session's identity.
    assert sorted(e["chunk"] for e in s.events() if e["kind"] == "replayed") == [0, 1, 2, 3, 4, 5]
    s.close()
