"""Sessions come back from the store with the same frames after their scheduler died (issue 13).

A real cluster in separate processes (``dask scheduler`` and ``dask worker`` on a fixed
local port, tiny model, zarr checkpoints every chunk): sessions are opened and streamed,
then the scheduler is SIGKILLed, with its worker. A new scheduler starts on the same
address with a new worker, a new ``Server(address, store=...)`` attaches to it, and its
scheduler plugin adopts the sessions recorded in the store: listed as suspended, still
owned by their tokens; the owner gets each back with ``server.session(id,
access_token=...)`` and streams on from its last checkpoint with the frames of an
undisturbed run, and a handle of the old client (reconnected to the same address)
streams on by itself. A session closed before the restart does not come back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from framework import Server
from framework.errors import SessionAccessDenied
from storage import CheckpointStore

PROMPT = "a yellow square moving left"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its children (a nanny's worker)
    except ProcessLookupError:
        pass
    proc.wait(30)


def _start_cluster(port: int) -> list[subprocess.Popen]:
    """A scheduler on ``port`` and one worker (nanny) with one thread; returns both processes."""
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--no-dashboard")
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and scheduler.poll() is None, "the scheduler did not start"
            time.sleep(0.2)
    worker = _spawn("distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
                    "--memory-limit", "4GiB", "--no-dashboard")
    return [scheduler, worker]


def _attach(port: int, store: Path) -> Server:
    from distributed import Client

    # A reconnect window longer than the restart takes on a loaded machine (the default is 30 s).
    client = Client(f"tcp://127.0.0.1:{port}", direct_to_workers=True, timeout=120)
    client.wait_for_workers(1, timeout=120)
    return Server(client, model="tiny", store=str(store), checkpoint_every=1)


def _same(chunks, expected) -> None:
    assert len(chunks) == len(expected)
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the undisturbed run"


def test_adopt_registers_recorded_sessions_suspended_at_their_checkpoint(tmp_path):
    from framework.adoption import adopt, document
    from framework.registry import SessionRecord
    from kernels.model import StreamingVideoModel
    from storage.session_index import SessionIndex
    from workers.access import digest

    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    index, store = SessionIndex(tmp_path), CheckpointStore(tmp_path)
    records = [SessionRecord(session_id=f"s{i}", model="tiny", prompt=PROMPT, seed=i, height=64, width=64,
                             created_s=100.0 + i, access_digest=digest(f"token-{i}")) for i in range(3)]
    for rec in records:
        doc = document(rec)
        assert "token-" not in str(doc) and doc["access_digest"] == rec.access_digest
        index.put(doc)
    state = model.new_session(PROMPT, 0)
    for _ in range(3):
        model.step([state])
    store.save("s0", state)
    store.claim("s0", 5)
    adopted = {r.session_id: r for r in adopt(index, store, fps=16, known={"s2"})}
    assert set(adopted) == {"s0", "s1"}  # s2 is registered already
    s0, s1 = adopted["s0"], adopted["s1"]
    assert (s0.status.value, s0.tier, s0.worker, s0.chunks, s0.generation) == ("suspended", "disk", None, 3, 5)
    assert (s1.chunks, s1.generation) == (0, 0)  # no checkpoint: from chunk 0
    assert s0.allows("token-0") and not s0.allows("token-1") and s0.created_s == 100.0
    assert [e["kind"] for e in s0.events] == ["adopted"]
    assert index.remove("s0") and [d["session_id"] for d in index.documents()] == ["s1", "s2"]
    assert store.list() == ["s0"]  # the index is not a checkpoint


def test_a_session_recorded_while_another_creates_the_index_is_recorded_too(tmp_path):
    """zarr's ``require_group`` looks, then creates: two sessions opened at the same instant
    both find no ``__sessions__`` group, and the second creation raises ``ContainsGroupError``
    (seen in the demo's scheduler). The loser opens the group the winner made."""
    from zarr.errors import ContainsGroupError

    from storage.session_index import GROUP, SessionIndex

    index = SessionIndex(tmp_path)
    root = index._root

    class LosesTheRace:  # the index's root, where another writer creates the group first
        def require_group(self, name):
            root.create_group(name).create_group("s0")
            raise ContainsGroupError(f"A group exists at path {name!r}")

        def __getitem__(self, name):
            return root[name]

    index._root = LosesTheRace()
    index.put({"session_id": "s1", "model": "tiny", "prompt": PROMPT, "seed": 1})
    index._root = root
    assert sorted(root[GROUP].group_keys()) == ["s0", "s1"]
    assert [d["session_id"] for d in index.documents()] == ["s1"]  # s0 is the stand-in's bare group


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sessions_come_back_from_the_store_with_the_same_frames_after_a_scheduler_restart(tmp_path, reference):
    port, store = _free_port(), tmp_path / "state"
    procs = _start_cluster(port)
    servers: list[Server] = []  # their clients are closed before the cluster is killed: a client left
    # reconnecting to a dead scheduler closes itself 120 s later and leaves dask's global scheduler
    # set to 'dask.distributed' for the tests that run after this one
    try:
        server = _attach(port, store)
        servers.append(server)
        a = server.open_session(PROMPT, seed=21)  # its handle streams on through the restart
        d = server.open_session(PROMPT, seed=24)  # handed to a new Server with its token
        # A checkpoint is written once the client acknowledged the chunks before it: a stream's
        # polls do, and its end acknowledges the last (however many its last poll brought: a
        # worker runs ahead of a slow reader), so the checkpoint at chunk 5 is written.
        first = {s.id: list(s.stream(5)) for s in (a, d)}
        b = server.open_session(PROMPT, seed=22)  # opened, never streamed: no checkpoint
        c = server.open_session(PROMPT, seed=23)
        c.close()  # closed before the restart: must not come back
        checkpoints = CheckpointStore(store)
        deadline = time.monotonic() + 60
        while not all(checkpoints.exists(s.id) and checkpoints.latest_chunk(s.id) >= 5 for s in (a, d)):
            assert time.monotonic() < deadline, "no checkpoint of the streamed sessions"
            time.sleep(0.2)

        for proc in procs:  # the scheduler dies, and its worker with it
            _kill(proc)
        procs = _start_cluster(port)  # the same address: the old client reconnects (within its timeout)
        again = _attach(port, store)
        servers.append(again)

        listed = {r["id"]: r for r in again.sessions(include_closed=True)}
        assert set(listed) == {a.id, b.id, d.id}, listed  # c was closed
        assert all(r["status"] == "suspended" and r["tier"] == "disk" for r in listed.values())
        assert not any(r["owned"] for r in listed.values())  # this server holds no token yet
        with pytest.raises(SessionAccessDenied):
            again.session(d.id)

        d2 = again.session(d.id, access_token=d.access_token)
        k = listed[d.id]["chunks"]
        assert k == 5  # the checkpoint after the five chunks read, not chunk 0
        more = list(d2.stream(3))
        assert [ch.index for ch in more] == [k, k + 1, k + 2]
        expected = reference(PROMPT, 24, k + 3)
        _same(first[d.id], expected[:5])
        _same(more, expected[k:])
        kinds = [e["kind"] for e in d2.events()]
        assert "adopted" in kinds and "restored" in kinds, kinds

        on = list(a.stream(3))  # the old handle: relocated to the adopted session, no gap, no repeat
        assert [ch.index for ch in on] == [5, 6, 7]
        _same(first[a.id] + on, reference(PROMPT, 21, 8))
        assert "relocated" in [e["kind"] for e in a.events()]

        b2 = again.session(b.id, access_token=b.access_token)
        fresh = list(b2.stream(2))
        assert [ch.index for ch in fresh] == [0, 1]
        _same(fresh, reference(PROMPT, 22, 2))
        for s in (a, b2, d2):
            s.close()
        assert again.sessions() == []
    finally:
        for srv in reversed(servers):  # the newest first: each client restores the dask config it found
            try:
                srv.close()
            finally:
                srv.client.close(timeout=10)
        for proc in procs:
            _kill(proc)
