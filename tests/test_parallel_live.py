"""Parallel groups on a real LocalCluster (two CPU workers, tiny model, gloo).

The acceptance run of issue 10: a session streams 3 chunks at degree 1, the two
workers become one degree-2 group while it streams, 3 more chunks, back to degree 1,
3 more; every chunk is within one uint8 level of the model's uninterrupted degree-1
run, the indices are contiguous, none lost or repeated. Then the refusals of
``set_parallelism``, the pure grouping rule, and (on a cluster of its own) a follower
that dies while its group serves: the session goes on from its checkpoint.
"""

from __future__ import annotations

import os
import signal

import dask
import numpy as np
import pytest
from distributed.core import Status

from framework import Server
from framework.errors import BadDegree, InvalidRequest, UnknownWorker, WorkerBusy, WorkerInGroup
from framework.parallelism import plan_groups
from kernels.model import StreamingVideoModel

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("state")
    with Server.local(
        n_workers=2, model="tiny", store=str(store), checkpoint_every=4, dashboard_address=":0",
        settings={"max_sessions_per_worker": 4},
    ) as server:
        yield server


def reference(seed: int, n: int) -> list[np.ndarray]:
    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    state = model.new_session(PROMPT, seed)
    return [model.step([state])[0] for _ in range(n)]


def assert_within_one_level(chunks, expected) -> None:
    assert [c.index for c in chunks] == list(range(len(expected))), "indices contiguous, none lost or repeated"
    for c, e in zip(chunks, expected):
        diff = np.abs(c.frames.astype(np.int16) - e.astype(np.int16)).max()
        assert diff <= 1, f"chunk {c.index} differs by {diff} uint8 levels from the uninterrupted run"


@pytest.mark.slow
def test_a_streaming_session_goes_to_degree_2_and_back_with_the_same_frames(server):
    workers = server.workers()
    s = server.open_session(PROMPT, seed=5)
    home = s.worker
    chunks = list(s.stream(3))

    pending = s.submit()  # the session is streaming while the workers merge
    merged = server.set_parallelism(2, workers)
    (group,) = [row for row in server.parallelism() if row["degree"] == 2]
    assert group["leader"] == home and sorted(group["workers"]) == workers
    assert group["sessions"] == [s.id]
    assert [f["workers"][0] for f in merged["formed"]] == [home]
    chunks.append(pending.result(timeout=120))
    chunks += list(s.stream(2))

    pending = s.submit()
    split = server.set_parallelism(1, workers)
    assert [row["degree"] for row in server.parallelism()] == [1, 1]
    (done,) = split["split"]
    assert done["broken"] is None, done["broken"]
    assert done["steps"] >= 2, f"only {done['steps']} steps ran at degree 2"
    chunks.append(pending.result(timeout=120))
    chunks += list(s.stream(2))

    assert_within_one_level(chunks, reference(5, 9))
    assert all(c.worker == home for c in chunks), "the session stays on the leader"
    s.close()


def test_bad_requests_are_refused_with_typed_errors_and_change_nothing(server):
    workers = server.workers()
    with pytest.raises(BadDegree, match="does not divide the 2 workers"):
        server.set_parallelism(3, workers)
    with pytest.raises(UnknownWorker, match="tcp://10.0.0.1:1"):
        server.set_parallelism(2, [workers[0], "tcp://10.0.0.1:1"])
    with pytest.raises(InvalidRequest, match="positive integer"):
        server.set_parallelism(0)
    assert [row["degree"] for row in server.parallelism()] == [1, 1]
    server.set_parallelism(2, workers)
    try:
        with pytest.raises(WorkerInGroup, match="split a group whole"):
            server.set_parallelism(1, [workers[1]])
        with pytest.raises(WorkerInGroup, match="split it first"):
            server.drain(workers[1])  # retiring a member would end the group under its sessions
        with pytest.raises(WorkerInGroup, match="takes no session of its own"):
            server.open_session(PROMPT, seed=1, worker=workers[1])  # a follower
        assert not server.set_parallelism(2, workers)["formed"]  # already so: nothing to do
    finally:
        server.set_parallelism(1, workers)
    assert [row["degree"] for row in server.parallelism()] == [1, 1]


def test_plan_groups_lets_busy_workers_lead_and_refuses_what_cannot_be():
    held = {"a": ["s1"], "c": ["s2"]}
    on = lambda w: held.get(w, [])  # noqa: E731
    assert plan_groups(2, ["a", "b", "c", "d"], on, 12) == [("a", "b"), ("c", "d")]
    assert plan_groups(4, ["b", "a", "d", "e"], lambda w: [], 12) == [("b", "a", "d", "e")]
    with pytest.raises(WorkerBusy, match="drain the others first"):
        plan_groups(4, ["a", "b", "c", "d"], on, 12)
    with pytest.raises(BadDegree, match="does not divide the 3 workers"):
        plan_groups(2, ["a", "b", "c"], on, 12)
    with pytest.raises(BadDegree, match="12 attention heads"):
        plan_groups(5, ["a", "b", "c", "d", "e"], lambda w: [], 12)


@pytest.mark.slow
def test_a_follower_dying_loses_no_session_it_restarts_from_its_checkpoint(tmp_path):
    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), checkpoint_every=2,
                      dashboard_address=":0") as server:
        workers = server.workers()
        s = server.open_session(PROMPT, seed=8)
        chunks = list(s.stream(2))
        server.set_parallelism(2, workers)
        (follower,) = [w for w in workers if w != s.worker]
        for chunk in s.stream(6):
            chunks.append(chunk)
            if chunk.index == 4:  # two chunks at degree 2 done; a checkpoint at chunk 4 written
                name = server.client.scheduler_info(n_workers=-1)["workers"][follower]["name"]
                server.cluster.workers[name].status = Status.closing_gracefully  # a crash, no restart
                os.kill(server.client.run(os.getpid, workers=[follower])[follower], signal.SIGKILL)
        assert_within_one_level(chunks, reference(8, 8))
        assert [row["degree"] for row in server.parallelism()] == [1]
        rec = next(r for r in server.sessions() if r["id"] == s.id)
        assert rec["recoveries"] == 1
        kinds = [e["kind"] for e in s.events()]
        assert "restored" in kinds or "regenerated" in kinds, kinds
        s.close()


def test_a_group_uses_nccl_only_between_distinct_cuda_devices():
    from framework.parallelism import choose_backend

    gpu = lambda key: {"device": "cuda:0", "key": f"host/cuda/{key}", "nccl": True}  # noqa: E731
    assert choose_backend([gpu("A"), gpu("B"), gpu("C"), gpu("D")]) == "nccl"
    assert choose_backend([gpu("A"), gpu("A")]) == "gloo"  # two ranks on one GPU: NCCL refuses
    assert choose_backend([gpu("A"), {"device": "cpu", "key": "host/cpu", "nccl": True}]) == "gloo"
    assert choose_backend([{**gpu("A"), "nccl": False}, gpu("B")]) == "gloo"


@pytest.mark.slow
def test_a_follower_that_stops_answering_loses_no_session(tmp_path):
    with dask.config.set({"turboserve.control.group-timeout": "5s"}), Server.local(
        n_workers=2, model="tiny", store=str(tmp_path), checkpoint_every=2, dashboard_address=":0",
    ) as server:
        workers = server.workers()
        s = server.open_session(PROMPT, seed=6)
        chunks = list(s.stream(2))
        server.set_parallelism(2, workers)
        (follower,) = [w for w in workers if w != s.worker]
        pid = server.client.run(os.getpid, workers=[follower])[follower]
        try:
            for chunk in s.stream(6):
                chunks.append(chunk)
                if chunk.index == 4:
                    os.kill(pid, signal.SIGSTOP)  # hangs: alive to the scheduler, silent to its group
            assert_within_one_level(chunks, reference(6, 8))
            assert [row["degree"] for row in server.parallelism()] == [1, 1]
            assert follower in server.stats()["draining"], "the silent follower is taken out of service"
            rec = next(r for r in server.sessions() if r["id"] == s.id)
            assert rec["recoveries"] == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        s.close()
