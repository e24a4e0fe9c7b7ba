"""Model pools on a real LocalCluster: each session runs only on a worker serving its model.

Two pools of one CPU worker each, ``tiny`` and ``tiny-trained`` (two small presets), no
autoscaling (the pools stay as started). A model no worker serves is refused at open
with ``ModelNotServed``, which says what is served and how to serve the model.
"""

from __future__ import annotations

import pytest

from framework import Server
from framework.errors import CapacityExceeded, ModelNotServed
from framework.model_pools import models_of

A, B = "tiny", "tiny-trained"


@pytest.fixture(scope="module")
def server():
    with Server.local(models={A: 1, B: 1}, adaptive=False, dashboard_address=":0",
                      settings={"placement": "least-loaded", "max_sessions_per_worker": 4}) as server:
        yield server


def pools(server: Server) -> dict[str, frozenset[str] | None]:
    info = server.client.scheduler_info(n_workers=-1)["workers"]
    return {addr: models_of(w.get("resources")) for addr, w in info.items()}


def test_each_worker_advertises_the_models_of_its_pool(server):
    assert sorted(map(sorted, pools(server).values())) == [[A], [B]]


def test_every_session_lands_and_streams_only_on_a_worker_serving_its_model(server):
    by_worker = pools(server)
    sessions = [server.open_session(f"prompt {i}", seed=i, model=m) for i, m in enumerate([A, A, B, B])]
    try:
        for s in sessions:
            chunk = next(iter(s.stream(1)))
            record = next(r for r in server.sessions() if r["id"] == s.id)
            assert record["model"] in by_worker[record["worker"]]
            assert chunk.worker == record["worker"]
        # Without pools, least-loaded would put the two A sessions (opened first) on two
        # different workers; with them, the two of a model share their pool's worker.
        workers = {r["model"]: set() for r in server.sessions()}
        for r in server.sessions():
            workers[r["model"]].add(r["worker"])
        assert all(len(w) == 1 for w in workers.values()) and workers[A] != workers[B]
    finally:
        for s in sessions:
            s.close()


def test_a_model_no_worker_serves_is_refused_at_open_saying_what_is_served(server):
    with pytest.raises(ModelNotServed, match=r"no worker serves model 'wan-1.3b'.*'tiny', 'tiny-trained'.*model-wan-1.3b") as err:
        server.open_session("a fox", model="wan-1.3b")
    assert isinstance(err.value, CapacityExceeded)  # callers handling admission refusals catch it too
    assert not [r for r in server.sessions() if r["model"] == "wan-1.3b"]


def test_naming_a_worker_outside_the_models_pool_is_refused(server):
    wrong = next(a for a, m in pools(server).items() if m == frozenset({B}))
    with pytest.raises(ModelNotServed, match=f"does not serve model '{A}'"):
        server.open_session("a fox", model=A, worker=wrong)


def test_moving_a_session_to_a_worker_outside_its_pool_is_refused_and_it_streams_on(server):
    session = server.open_session("a fox", model=A)
    try:
        next(iter(session.stream(1)))
        other = next(a for a, m in pools(server).items() if m == frozenset({B}))
        with pytest.raises(ModelNotServed, match=f"does not serve model '{A}'"):
            session.migrate(other)
        assert next(iter(session.stream(1))).index == 1
    finally:
        session.close()
