"""The serving runtime on a real LocalCluster (2 CPU workers, tiny model).

The determinism matrix: whatever happens to a session between its chunks (a pause, a
suspension to host or zarr and a resume elsewhere, two hot migrations, the death of its
worker), the frames of chunks 0..N are bit-identical to the model's own uninterrupted
run. One session streams at a time, so every step has batch size 1 like the reference
(a batched step is not bit-identical to a single one).

One module-scoped cluster of three workers (``server`` in ``conftest.py``) serves every
test; the two tests that take a worker away (kill, then drain) run last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from distributed import Client
from distributed.core import Status

from framework import Chunk, Server, SessionStatus

PROMPT = "a red fox running through snow"


def _other(server, worker):
    return next(w for w in server.workers() if w != worker)


def _assert_same(chunks: list[Chunk], expected: list[np.ndarray]) -> None:
    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the uninterrupted run"


# ------------------------------------------------------------------ the public API


def test_stream_yields_every_chunk_in_order_and_matches_the_model(server, reference):
    s = server.open_session(PROMPT, seed=0, session_id="plain")
    chunks = list(s.stream(3))
    chunks.append(s.submit().result(timeout=60))
    _assert_same(chunks, reference(PROMPT, 0, 4))
    c = chunks[0]
    assert c.frames.dtype == np.uint8 and c.frames.shape == (12, 64, 64, 3)
    assert c.worker == s.worker and c.session_id == "plain"
    assert c.latency_s > 0 and c.t_request_s <= c.t_start_s <= c.t_done_s
    assert not any(c.migrated for c in chunks)
    s.close()


def test_sessions_and_stats_describe_the_registry(server):
    s = server.open_session(PROMPT, seed=1, session_id="listed")
    list(s.stream(1))
    rec = next(r for r in server.sessions() if r["id"] == "listed")
    assert rec["worker"] == s.worker and rec["status"] in ("active", "idle")
    assert rec["state_bytes"] > 0
    assert s.status == SessionStatus.ACTIVE.value
    stats = server.stats()
    assert stats["sessions"]["active"] >= 1 and set(stats["workers"]) == set(server.workers())
    assert server.dashboard_link.startswith("http")
    s.close()
    assert s.status == "closed"
    assert "listed" not in [r["id"] for r in server.sessions()]


def test_workers_holding_sessions_are_not_offered_for_downscaling(server):
    s = server.open_session(PROMPT, seed=13)

    def closable(dask_scheduler):
        from framework.registry import PLUGIN_NAME

        plugin = dask_scheduler.plugins[PLUGIN_NAME]
        valid = plugin.valid_workers_downscaling(dask_scheduler, list(dask_scheduler.workers.values()))
        return [ws.address for ws in valid], list(dask_scheduler.workers_to_close(n=len(dask_scheduler.workers)))

    valid, to_close = server.client.run_on_scheduler(closable)
    assert s.worker not in valid and s.worker not in to_close
    assert set(valid) == set(server.workers()) - {s.worker}
    s.close()


# ------------------------------------------------------------------ determinism matrix


def test_pause_then_resume_continues_identically(server, reference):
    s = server.open_session(PROMPT, seed=2)
    chunks = list(s.stream(2))
    s.pause()
    assert s.status == "idle"
    s.resume()
    chunks += list(s.stream(2))
    _assert_same(chunks, reference(PROMPT, 2, 4))
    s.close()


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_suspend_and_resume_on_another_worker_continues_identically(server, reference, tier):
    s = server.open_session(PROMPT, seed=3)
    first = s.worker
    chunks = list(s.stream(2))
    s.suspend(to=tier)
    rec = next(r for r in server.sessions() if r["id"] == s.id)
    assert rec["status"] == "suspended" and rec["tier"] == tier
    s.resume(worker=_other(server, first))
    assert s.worker != first
    chunks += list(s.stream(2))
    _assert_same(chunks, reference(PROMPT, 3, 4))
    assert chunks[2].migrated and chunks[2].worker == s.worker
    s.close()


def test_chunks_unread_at_a_suspension_to_disk_are_not_lost(server, reference):
    s = server.open_session(PROMPT, seed=14)
    stream = s.stream(4)
    chunks = [next(stream)]
    deadline = time.monotonic() + 60
    while next(r for r in server.sessions() if r["id"] == s.id)["chunks"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker has made all four; the reader has taken one
    s.suspend(to="disk")
    chunks += list(stream)  # the three unread ones, handed out by the resumed session
    chunks += list(s.stream(1))
    _assert_same(chunks, reference(PROMPT, 14, 5))
    s.close()


def test_streaming_a_suspended_session_resumes_it(server, reference):
    s = server.open_session(PROMPT, seed=4)
    chunks = list(s.stream(1))
    s.suspend(to="host")
    chunks += list(s.stream(1))
    _assert_same(chunks, reference(PROMPT, 4, 2))
    assert s.status in ("idle", "active")
    s.close()


def test_two_hot_migrations_mid_stream_keep_the_stream_continuous(server, reference):
    s = server.open_session(PROMPT, seed=5)
    home = s.worker
    chunks = []
    for chunk in s.stream(6):  # all six are requested at once: the engine works ahead
        chunks.append(chunk)
        if chunk.index == 1:
            s.migrate(_other(server, home))
        elif chunk.index == 3:
            s.migrate(home)
    _assert_same(chunks, reference(PROMPT, 5, 6))
    assert len({c.worker for c in chunks}) == 2
    assert sum(c.migrated for c in chunks) == 2
    assert next(r for r in server.sessions() if r["id"] == s.id)["migrations"] == 2
    s.close()


def test_migration_over_a_point_to_point_group_continues_identically(server, reference):
    s = server.open_session(PROMPT, seed=11)
    home = s.worker
    chunks = list(s.stream(2))
    s.migrate(_other(server, home), transport="p2p")  # gloo between two CPU workers
    assert s.worker != home
    chunks += list(s.stream(2))
    _assert_same(chunks, reference(PROMPT, 11, 4))
    assert chunks[2].migrated
    s.close()


# ------------------------------------------------------------------ batching and attach


def test_sessions_on_one_worker_share_batched_steps(server):
    worker = server.workers()[0]
    sessions = [server.open_session(PROMPT, seed=10 + i, worker=worker) for i in range(4)]
    sizes = []
    for _ in range(2):
        futures = [s.submit() for s in sessions]
        sizes += [f.result(timeout=120).batch_size for f in futures]
    assert max(sizes) > 1, f"no coalesced step: batch sizes {sizes}"
    for s in sessions:
        s.close()


def test_a_second_server_attaches_and_sees_the_same_sessions(server, reference):
    s = server.open_session(PROMPT, seed=6, session_id="shared")
    first = list(s.stream(1))
    other = Server(server.client.scheduler.address)  # its own direct-to-workers client
    try:
        assert "shared" in [r["id"] for r in other.sessions()]
        more = list(other.session("shared", access_token=s.access_token).stream(1))  # handed over
    finally:
        other.close()
    # A plain client (not direct to workers): actor calls go through the scheduler's proxy.
    with Client(server.client.scheduler.address) as plain:
        assert not plain.direct_to_workers
        more += list(Server(plain).session("shared", access_token=s.access_token).stream(1))
    _assert_same(first + more, reference(PROMPT, 6, 3))
    s.close()


def test_async_twins_on_an_asynchronous_client(server, reference):
    async def main():
        async with await Server(server.client.scheduler.address, asynchronous=True) as aserver:
            s = await aserver.aopen_session(PROMPT, seed=12)
            chunks = [c async for c in s.astream(2)]
            chunks.append(await s.asubmit())
            assert s.id in [r["id"] for r in await aserver.asessions()]
            await s.aclose()
            return chunks

    _assert_same(asyncio.run(main()), reference(PROMPT, 12, 3))


# ------------------------------------------------------------------ bad input


def test_each_bad_input_raises_its_error_and_the_server_keeps_serving(server):
    from framework import (
        CapacityExceeded, InvalidRequest, SessionClosed, SessionNotFound, TurboserveError, UnknownModel, UnknownWorker,
    )

    s = server.open_session(PROMPT, seed=7)
    with pytest.raises(SessionNotFound, match="no-such-session"):
        server.session("no-such-session")
    with pytest.raises(InvalidRequest, match="-1"):
        list(s.stream(-1))
    with pytest.raises(InvalidRequest, match="10000000"):
        list(s.stream(10_000_000))
    with pytest.raises(UnknownModel, match="wan-99b"):
        server.open_session(PROMPT, model="wan-99b")
    with pytest.raises(InvalidRequest, match="height=50"):
        server.open_session(PROMPT, height=50)
    with pytest.raises(InvalidRequest, match="prompt"):
        server.open_session("")
    with pytest.raises(UnknownWorker, match="tcp://10.0.0.1:1"):
        s.migrate("tcp://10.0.0.1:1")
    with pytest.raises(UnknownWorker, match="tcp://10.0.0.1:1"):
        server.drain("tcp://10.0.0.1:1")
    with pytest.raises(InvalidRequest, match="tape"):
        s.suspend(to="tape")
    opened = []
    with pytest.raises(CapacityExceeded, match="6 sessions each"):
        for i in range(19):  # 3 workers x 6 at most
            opened.append(server.open_session(PROMPT, seed=100 + i))
    for o in opened:
        o.close()
    s.close()
    with pytest.raises(SessionClosed):
        list(s.stream(1))
    assert issubclass(SessionClosed, TurboserveError)
    # ...and it still serves.
    t = server.open_session(PROMPT, seed=8)
    assert [c.index for c in t.stream(2)] == [0, 1]
    t.close()


def test_a_stream_s_end_acknowledges_its_last_chunks_so_the_checkpoint_passes_them(server):
    # A poll acknowledges the chunks before the one it asks for. A reader slower than the
    # worker gets chunks 1-4 from one poll; without an acknowledgement at the stream's end
    # the session's checkpoints (every 2 chunks here) would stay before them until its
    # next burst (the flake of the scheduler-restart test on a loaded machine).
    from storage import CheckpointStore

    s = server.open_session(PROMPT, seed=31)
    stream = s.stream(5)
    assert next(stream).index == 0
    time.sleep(2.0)  # the worker makes chunks 1-4 meanwhile
    assert [c.index for c in stream] == [1, 2, 3, 4]
    store, deadline = CheckpointStore(server.settings.store), time.monotonic() + 30
    while not (store.exists(s.id) and store.latest_chunk(s.id) == 4):
        assert time.monotonic() < deadline, "the checkpoint stayed before the chunks the stream read"
        time.sleep(0.05)
    s.close()


# ------------------------------------------------------------------ losing a worker (last)


def test_a_killed_worker_s_sessions_resume_from_their_checkpoint(server, reference):
    s = server.open_session(PROMPT, seed=9)
    victim = s.worker
    chunks = []
    for chunk in s.stream(6):
        chunks.append(chunk)
        if chunk.index == 2:
            name = server.client.scheduler_info(n_workers=-1)["workers"][victim]["name"]
            # The nanny would restart the worker; this one stays dead (a crash, not a restart).
            server.cluster.workers[name].status = Status.closing_gracefully
            os.kill(server.client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    _assert_same(chunks, reference(PROMPT, 9, 6))
    assert chunks[-1].worker != victim and victim not in server.workers()
    rec = next(r for r in server.sessions() if r["id"] == s.id)
    assert rec["recoveries"] == 1
    s.close()


def test_drain_moves_every_session_away_and_retires_the_worker(server, reference):
    assert len(server.workers()) == 2
    victim = server.workers()[0]
    active = server.open_session(PROMPT, seed=20, worker=victim)
    parked = server.open_session(PROMPT, seed=21, worker=victim)
    got = {active.id: list(active.stream(1)), parked.id: list(parked.stream(1))}
    parked.suspend(to="host")
    result = server.drain(victim)
    assert result["retired"] and result["moved"] == [active.id] and result["suspended"] == [parked.id]
    assert victim not in server.workers()
    assert not [r for r in server.sessions() if r["worker"] == victim]
    for s, seed in ((active, 20), (parked, 21)):
        got[s.id] += list(s.stream(1))
        _assert_same(got[s.id], reference(PROMPT, seed, 2))
        s.close()


# ------------------------------------------------------------------ the closed loop on by default


@pytest.mark.slow
def test_the_closed_loop_runs_by_default_and_one_setting_turns_it_off():
    import dask.config

    from framework import config

    assert config.DEFAULTS["turboserve"]["control"]["auto-start"] is True  # tests/conftest.py turns it off
    with Server.local(n_workers=1, model="tiny", dashboard_address=":0") as fixed:
        time.sleep(2.5)  # over two control intervals
        assert fixed.client.sync(fixed.client.scheduler.turboserve_control_stats)["ticks"] == 0  # off
        with dask.config.set({"turboserve.control.auto-start": True}):
            attached = Server(fixed.client.scheduler.address)  # attaching starts the loop
            try:
                stats = _control_ticked(attached)
                assert not stats["autoscaler_attached"]  # no cluster manager here to scale with
                Server(fixed.client.scheduler.address).close()  # a second one keeps the running loop
            finally:
                attached.close()
    with dask.config.set({"turboserve.control.auto-start": True}):
        with Server.local(n_workers=1, model="tiny", dashboard_address=":0") as local:
            assert _control_ticked(local, attached=True)["settings"]["minimum"] == 1


def _control_ticked(server, attached: bool = False) -> dict:
    deadline = time.monotonic() + 60
    while True:
        stats = server.client.sync(server.client.scheduler.turboserve_control_stats)
        if stats["ticks"] > 0 and (stats["autoscaler_attached"] or not attached):
            return stats
        assert time.monotonic() < deadline, f"the control loop did not tick: {stats}"
        time.sleep(0.2)
