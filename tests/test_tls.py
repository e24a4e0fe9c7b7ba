"""Sessions stream through a Server whose cluster uses TLS (issue 13).

A real LocalCluster started with ``security=Security.temporary()`` (every comm is
``tls://``: scheduler, workers, the clients, the scheduler plugin's control client): a
session opens, streams, takes chunk futures, suspends to disk and resumes, migrates over
the host-staged path, and its frames are those of an undisturbed run. A second
``Server(address, security=...)`` attaches under TLS (and gets the session only with its
token). What does not go over Dask's TLS is refused with a typed error that says what to
use instead (``workers.encryption``): ``transport="p2p"`` and parallel groups.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cryptography")  # Security.temporary() makes its certificates with it

from distributed.security import Security

from framework import Server
from framework.errors import InvalidRequest, ParallelismError

PROMPT = "a cyan square moving down"


@pytest.fixture(scope="module")
def security():
    return Security.temporary()


@pytest.fixture(scope="module")
def server(tmp_path_factory, security):
    store = tmp_path_factory.mktemp("state")
    with Server.local(n_workers=2, model="tiny", store=str(store), checkpoint_every=2,
                      dashboard_address=None, security=security) as server:
        yield server


def _same(chunks, expected) -> None:
    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the undisturbed run"


def test_the_cluster_speaks_only_tls(server):
    assert server.client.scheduler.address.startswith("tls://")
    assert len(server.workers()) == 2 and all(w.startswith("tls://") for w in server.workers())


def test_a_session_opens_streams_suspends_resumes_and_migrates_under_tls(server, reference):
    s = server.open_session(PROMPT, seed=11)
    got = list(s.stream(2))
    got.append(s.submit().result(timeout=120))  # a chunk future: worker -> client over TLS
    s.suspend(to="disk")
    assert s.record()["status"] == "suspended" and s.record()["tier"] == "disk"
    s.resume()
    got += list(s.stream(2))
    source = s.worker
    target = next(w for w in server.workers() if w != source)
    s.migrate(target)  # auto: the host-staged path, over Dask's TLS comms
    got += list(s.stream(2))
    assert s.worker == target and got[-2].migrated
    moved = [e for e in s.events() if e["kind"] == "migrated" and e.get("transport")]
    assert moved and moved[-1]["transport"] == "host"
    _same(got, reference(PROMPT, 11, 7))
    s.close()


def test_channels_outside_tls_are_refused_with_what_to_use(server):
    s = server.open_session(PROMPT, seed=12)
    list(s.stream(1))
    target = next(w for w in server.workers() if w != s.worker)
    with pytest.raises(InvalidRequest, match="transport='host'"):
        s.migrate(target, transport="p2p")
    assert s.record()["status"] == "active"  # nothing moved
    with pytest.raises(ParallelismError, match="TLS"):
        server.set_parallelism(2)
    assert [c.index for c in s.stream(1)] == [1]
    s.close()


def test_a_second_server_attaches_with_the_clusters_security(server, security, reference):
    address = server.client.scheduler.address
    with pytest.raises(InvalidRequest, match="security="):
        Server(address)  # a TLS address without certificates: says what to pass
    s = server.open_session(PROMPT, seed=13)
    got = list(s.stream(1))
    other = Server(address, security=security)
    try:
        got += list(other.session(s.id, access_token=s.access_token).stream(2))
        t = other.open_session(PROMPT, seed=13)
        _same(list(t.stream(3)), reference(PROMPT, 13, 3))
        t.close()
    finally:
        other.close()
    _same(got, reference(PROMPT, 13, 3))
    s.close()
