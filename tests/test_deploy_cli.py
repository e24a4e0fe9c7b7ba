"""A deployment as users run one: `dask scheduler` and `dask worker` processes from the command line.

The way HPC job scripts and Kubernetes pods start Dask: one ``dask scheduler`` process,
``dask worker`` processes pointed at it (here through a scheduler file), and the user's
program attaching with ``Server(address)``, which installs turboserve's scheduler and
worker plugins on the running cluster. Sessions then stream, suspend, resume, migrate and
survive the death of a worker process (recovered from their zarr checkpoint), and every
chunk's frames equal the model's own uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # three processes start and a worker is killed: ~1-2 minutes

DASK = str(Path(sys.executable).with_name("dask"))
PROMPT = "a red fox running through snow"


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A process group of its own: killing it takes the nanny and its worker process down.
    return subprocess.Popen([DASK, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture()
def cli_cluster(tmp_path):
    """A scheduler and two workers, each its own `dask` command-line process."""
    sched_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                     "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1"], tmp_path / "scheduler.log")]
    workers = {}
    try:
        deadline = time.monotonic() + 120
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), (tmp_path / "scheduler.log").read_text()
        for name in ("w1", "w2"):
            workers[name] = _start(
                ["worker", "--scheduler-file", str(sched_file), "--name", name, "--nthreads", "1",
                 "--memory-limit", "4GiB", "--local-directory", str(tmp_path / name), "--host", "127.0.0.1"],
                tmp_path / f"{name}.log",
            )
            procs.append(workers[name])
        yield json.loads(sched_file.read_text())["address"], workers, tmp_path
    finally:
        for p in reversed(procs):
            _stop(p)


def reference(n: int) -> list[np.ndarray]:
    from kernels.model import StreamingVideoModel

    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    state = model.new_session(PROMPT, 0)
    return [model.step([state])[0] for _ in range(n)]


def test_sessions_stream_suspend_migrate_and_recover_on_a_command_line_cluster(cli_cluster):
    from framework import Server

    address, procs, tmp = cli_cluster
    expected = reference(8)
    with Server(address, model="tiny", store=str(tmp / "state"), checkpoint_every=1, control=False) as server:
        server.client.wait_for_workers(2, timeout=120)
        by_name = {info["name"]: addr for addr, info in server.client.scheduler_info()["workers"].items()}
        assert set(by_name) == {"w1", "w2"}
        s = server.open_session(PROMPT, seed=0)
        chunks = list(s.stream(2))

        s.suspend()
        assert s.status == "suspended"
        s.resume()
        chunks += list(s.stream(2))

        there = by_name["w2"] if s.worker == by_name["w1"] else by_name["w1"]
        s.migrate(there)
        assert s.worker == there
        chunks += list(s.stream(2))
        # (a chunk made ahead of its request may have come from the old worker)
        assert chunks[-1].worker == there, [c.worker for c in chunks]

        # The worker process holding the session dies (SIGKILL: no goodbye to the scheduler).
        victim = next(name for name, addr in by_name.items() if addr == there)
        _stop(procs[victim], signal.SIGKILL)
        chunks += list(s.stream(2))
        survivor = by_name["w1" if victim == "w2" else "w2"]
        assert chunks[-1].worker == survivor

        assert [c.index for c in chunks] == list(range(8))
        for c, e in zip(chunks, expected):
            assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the uninterrupted run"
        s.close()
