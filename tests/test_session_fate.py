"""What an error means for a session handle (framework.session_fate), pure: no cluster."""

from __future__ import annotations

import pytest

from framework.errors import SessionLost
from framework.session_fate import SessionFate
from workers.errors import InvalidRequest, SessionClosed, SessionMoved, SessionNotFound


@pytest.mark.parametrize("exc", [SessionMoved("moved"), KeyError("actor"), OSError("closed"),
                                 RuntimeError("ConnectionPool is closed")])
def test_an_actor_that_moved_or_whose_worker_went_away_means_relocate(exc):
    fate = SessionFate("s")
    assert fate.actor_failure(exc) is None and fate.lost is None


def test_a_refusal_of_one_request_leaves_the_session_usable():
    fate = SessionFate("s")
    refusal = InvalidRequest("bad count")
    assert fate.actor_failure(refusal) is refusal
    fate.check_usable()


def test_an_engine_failure_loses_the_session_once_and_for_all():
    fate = SessionFate("s")
    lost = fate.actor_failure(RuntimeError("CUDA error"))
    assert isinstance(lost, SessionLost) and "could not run it" in str(lost) and lost.cause.startswith("RuntimeError")
    assert fate.actor_failure(ValueError("later")) is lost  # the first cause stays
    with pytest.raises(SessionLost) as raised:
        fate.check_usable()
    assert raised.value is lost
    assert [e["kind"] for e in fate.events] == ["lost"]


def test_closed_is_expected_only_while_this_handle_closes_the_session():
    closing, other = SessionFate("s"), SessionFate("s")
    closing.closing = True
    exc = SessionClosed("closed")
    assert closing.actor_failure(exc) is exc and closing.scheduler_failure(exc) is exc
    assert isinstance(other.scheduler_failure(exc), SessionLost)
    assert "closed by the server or another client" in str(other.lost)


def test_a_session_the_scheduler_does_not_know_is_lost_even_while_closing():
    fate = SessionFate("s")
    fate.closing = True
    assert isinstance(fate.scheduler_failure(SessionNotFound("s")), SessionLost)


def test_a_closed_handle_refuses_further_calls_and_events_merge_once():
    fate = SessionFate("s")
    fate.merge([{"id": "a", "kind": "started"}])
    fate.merge([{"id": "a", "kind": "started"}, {"id": "b", "kind": "migrated"}])
    assert [e["kind"] for e in fate.events] == ["started", "migrated"]
    fate.closed = True
    with pytest.raises(SessionClosed, match="is closed; open a new one"):
        fate.check_usable()
