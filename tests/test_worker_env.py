"""turboserve's workers start without the nanny's allocator setting; the client is untouched."""

from __future__ import annotations

import os

import dask.config

from framework import Server
from framework.worker_env import DROPPED_ENVIRON

VAR = "MALLOC_TRIM_THRESHOLD_"


def test_workers_run_without_malloc_trim_threshold_and_the_client_env_is_unchanged(monkeypatch):
    assert VAR in DROPPED_ENVIRON
    # Dask's default is in force (the setting the issue measured) ...
    assert str(dask.config.get(f"distributed.nanny.pre-spawn-environ.{VAR}")) == "65536"
    monkeypatch.delenv(VAR, raising=False)  # (an earlier plain LocalCluster may have leaked it here)
    before = dict(os.environ)
    with Server.local(n_workers=1, model="tiny", dashboard_address=":0") as server:
        env = next(iter(server.client.run(lambda: dict(os.environ)).values()))
        assert VAR not in env
        assert env.get("OMP_NUM_THREADS") == "1"  # the other pre-spawn settings stay
        assert VAR not in os.environ
    after = dict(os.environ)
    assert {k: v for k, v in after.items() if before.get(k) != v and k == VAR} == {}
    # ... and Dask's own config is not changed for other clusters.
    assert str(dask.config.get(f"distributed.nanny.pre-spawn-environ.{VAR}")) == "65536"


def _exit_marker(path: str) -> None:
    """On a worker: write ``path`` at interpreter teardown (an ``atexit`` handler of the running worker)."""
    import atexit

    atexit.register(lambda: open(path, "w").close())


def test_a_closed_worker_s_process_exits_without_the_interpreter_teardown(tmp_path):
    """Before ServingWorker, each worker tore its interpreter down after it had closed (on a
    loaded 2-core machine past the nanny's 4 s: ``Worker process still alive after 4.0
    seconds, killing``), and every ``Server.close`` waited for that. The teardown's
    ``atexit`` handlers mark it: a handler the running worker registered must not run."""
    with Server.local(n_workers=1, model="tiny", dashboard_address=None) as server:
        s = server.open_session("a kite over the dunes", seed=0)
        assert [c.index for c in s.stream(1)] == [0]
        assert {type(w).__name__ for w in server.cluster.workers.values()} == {"ServingNanny"}
        pids = server.client.run(os.getpid)
        for address in pids:
            server.client.run(_exit_marker, path=str(tmp_path / f"teardown-{pids[address]}"), workers=[address])
    assert not list(tmp_path.glob("teardown-*")), "a worker process ran the interpreter's teardown"
    for pid in pids.values():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker process {pid} is still running after the cluster closed")
