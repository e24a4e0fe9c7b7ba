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
