"""A session that cannot be served says so: SessionLost with its cause, never a bare comm error.

On a real LocalCluster (one CPU worker, tiny model): a session closed behind its
client's back raises :class:`~framework.errors.SessionLost` from its stream, its
futures and its control calls (a :class:`SessionClosed` too, for old ``except``
clauses), its events say why, and ``close()`` still returns.
"""

from __future__ import annotations

import pytest

from framework import Server
from framework.errors import SessionClosed, SessionLost

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def server():
    import os

    from storage.location import auto_store_path

    with Server.local(n_workers=1, model="tiny", store=None, dashboard_address=None) as server:
        # The default store (state.store: auto) is this cluster's own folder...
        store = server.settings.store
        assert store == auto_store_path(server.client.scheduler_info(n_workers=0)["id"])
        yield server
    assert not os.path.exists(store)  # ...removed when the cluster closes


def test_a_session_closed_elsewhere_is_lost_for_its_stream_futures_and_controls(server) -> None:
    s = server.open_session(PROMPT, seed=0)
    assert [c.index for c in s.stream(1)] == [0]
    server.session(s.id).close()  # another handle (another client, or the server) closes it
    with pytest.raises(SessionLost) as err:
        list(s.stream(2))
    assert err.value.session_id == s.id and err.value.cause
    assert "closed by the server or another client" in str(err.value)
    assert isinstance(err.value, SessionClosed)
    with pytest.raises(SessionLost):  # the same error again, at once
        s.submit().result(timeout=30)
    with pytest.raises(SessionLost):
        s.pause()
    lost = [e for e in s.events() if e["kind"] == "lost"]
    assert len(lost) == 1 and lost[0]["source"] == "client" and s.id in lost[0]["why"]
    s.close()  # returns
    s.close()


def test_a_future_of_a_session_closed_meanwhile_raises_session_lost(server) -> None:
    s = server.open_session(PROMPT, seed=1)
    list(s.stream(1))
    fut = s.submit()
    fut.result(timeout=60)
    server.session(s.id).close()
    with pytest.raises(SessionLost):
        s.submit().result(timeout=60)


def test_own_close_is_session_closed_not_lost(server) -> None:
    s = server.open_session(PROMPT, seed=2)
    list(s.stream(1))
    s.close()
    with pytest.raises(SessionClosed) as err:
        list(s.stream(1))
    assert not isinstance(err.value, SessionLost)
    assert not [e for e in s.events() if e["kind"] == "lost"]


def test_events_say_where_the_state_came_from(server) -> None:
    s = server.open_session(PROMPT, seed=3)
    list(s.stream(2))
    s.suspend(to="host")
    list(s.stream(1))
    kinds = [e["kind"] for e in s.events()]
    assert kinds[:1] == ["started"] and "suspended" in kinds and "resumed" in kinds, kinds
    assert all({"kind", "t", "worker"} <= set(e) for e in s.events())
    s.close()
