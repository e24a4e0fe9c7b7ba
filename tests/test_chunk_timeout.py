"""Every wait for a chunk has a bound (issue 13: "no silent waits").

On a real LocalCluster (one CPU worker, tiny model), the worker's engine is stalled
through its own API: ``Engine.call`` runs a function on the engine thread between two
steps, and that function blocks (a hung step or device looks the same from outside: the
engine neither makes chunks nor fails). A stream reader and a chunk future of a session
on it must end with :class:`~framework.errors.ChunkTimeout` within
``turboserve.client.chunk-timeout`` (plus one poll's slack), not poll forever; the
session stays open and streams again once the engine runs.
"""

from __future__ import annotations

import threading
import time

import dask
import pytest

from framework import Server
from framework.errors import ChunkTimeout

PROMPT = "a heron standing in a river"
BOUND_S = 3.0
SLACK_S = 6.0  # one poll round, the engine's current step, the RPCs of a loaded 2-core machine


@pytest.fixture(scope="module")
def server():
    with dask.config.set({"turboserve.client.chunk-timeout": f"{BOUND_S}s",
                          "turboserve.control.transfer-timeout": f"{BOUND_S}s"}):
        with Server.local(n_workers=1, model="tiny", store=None, dashboard_address=None) as server:
            yield server


def _stall_engine(dask_worker, hold_s):
    """Block the worker's engine thread (Engine.call) until released or ``hold_s`` passes."""
    host = dask_worker.plugins["turboserve-model-host"]
    release = threading.Event()
    dask_worker._turboserve_release_engine = release
    host.engine(host.model).call(release.wait, hold_s)  # returns at once; the engine thread blocks


def _release_engine(dask_worker):
    dask_worker._turboserve_release_engine.set()


def _in_thread(fn):
    box = {}

    def run():
        t0 = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - what the client saw
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(BOUND_S + SLACK_S + 30)  # without a bound, the reader would still be waiting here
    assert not t.is_alive(), f"the reader still waits {BOUND_S + SLACK_S + 30:g} s later"
    return box


def test_a_stream_on_a_stalled_engine_raises_chunk_timeout_within_the_bound(server):
    s = server.open_session(PROMPT, seed=1)
    assert [c.index for c in s.stream(1)] == [0]
    (w,) = server.workers()
    server.client.run(_stall_engine, hold_s=120, workers=[w])
    try:
        box = _in_thread(lambda: [c.index for c in s.stream(1)])
    finally:
        server.client.run(_release_engine, workers=[w])
    assert isinstance(box.get("error"), ChunkTimeout), box
    assert BOUND_S <= box["elapsed"] < BOUND_S + SLACK_S, box["elapsed"]
    msg = str(box["error"])
    assert s.id in msg and "turboserve.client.chunk-timeout" in msg and "still open" in msg
    assert any(e["kind"] == "stalled" for e in s.events())
    # The session is still open: once its engine runs, it streams again.
    assert len(list(s.stream(1))) == 1
    s.close()


def test_a_chunk_future_on_a_stalled_engine_raises_chunk_timeout_within_the_bound(server):
    s = server.open_session(PROMPT, seed=2)
    assert [c.index for c in s.stream(1)] == [0]
    (w,) = server.workers()
    server.client.run(_stall_engine, hold_s=120, workers=[w])
    try:
        box = _in_thread(lambda: s.submit().result())
    finally:
        server.client.run(_release_engine, workers=[w])
    assert isinstance(box.get("error"), ChunkTimeout), box
    assert BOUND_S <= box["elapsed"] < BOUND_S + SLACK_S, box["elapsed"]
    assert "turboserve.client.chunk-timeout" in str(box["error"])
    assert s.submit().result(timeout=60).index >= 1
    s.close()


def test_a_stream_whose_worker_stops_answering_raises_chunk_timeout_within_the_bound_and_a_grace(server):
    """A frozen worker process (SIGSTOP) keeps its connections open and never answers the
    poll that is waiting there: the reader gives up after the bound plus ``RPC_GRACE_S``."""
    import os
    import signal

    from framework.chunk_channel import RPC_GRACE_S

    s = server.open_session(PROMPT, seed=3)
    assert [c.index for c in s.stream(1)] == [0]
    (w,) = server.workers()
    pid = server.client.run(os.getpid, workers=[w])[w]
    server.client.run(_stall_engine, hold_s=120, workers=[w])  # the poll below waits on the worker

    def read():
        timer = threading.Timer(1.0, os.kill, (pid, signal.SIGSTOP))  # while the poll is out
        timer.start()
        try:
            return [c.index for c in s.stream(1)]
        finally:
            timer.cancel()

    try:
        box = _in_thread(read)
    finally:
        os.kill(pid, signal.SIGCONT)
        server.client.run(_release_engine, workers=[w])
    assert isinstance(box.get("error"), ChunkTimeout), box
    assert BOUND_S + RPC_GRACE_S <= box["elapsed"] < BOUND_S + RPC_GRACE_S + SLACK_S, box["elapsed"]
    assert "did not answer a poll" in str(box["error"])
    assert len(list(s.stream(1))) == 1  # the worker runs again: the session is still served
    s.close()


def test_closing_a_session_whose_worker_stopped_answering_completes_on_the_scheduler(server):
    """The scheduler's call to a frozen worker's actor is bounded: close does not hold the
    session's lock until the client's own CLOSE_TIMEOUT_S (30 s) gives up on it."""
    import os
    import signal

    s = server.open_session(PROMPT, seed=4)
    assert [c.index for c in s.stream(1)] == [0]
    (w,) = server.workers()
    pid = server.client.run(os.getpid, workers=[w])[w]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        s.close()
        elapsed = time.monotonic() - t0
        status = next(r["status"] for r in server.sessions(include_closed=True) if r["id"] == s.id)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed  # transfer-timeout, not the client's 30 s
    assert status == "closed"
    assert not any(e["kind"] == "close-unconfirmed" for e in s.events())
