"""A session is reachable only with the capability its opener got (issue 13, isolation).

On a real LocalCluster (two CPU workers, tiny model) with two ``distributed.Client``s:
the owner's :class:`~framework.Server` opens a session; a second server on its own
client sees the session listed without its prompt and cannot get a handle on it, poll
or acknowledge its chunks on the worker, take them through a chunk future, steer,
move or close it: each is a :class:`~framework.errors.SessionAccessDenied` that says
how to hand the session over. The owner's stream goes on with the frames of an
undisturbed run. Handing the token over on purpose gives the second client the session.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from distributed import Client

from framework import Server
from framework.errors import SessionAccessDenied, TurboserveError
from workers.access import TokenRPC
from workers.actor_rpc import call_actor
from workers.chunk_futures import fetch_chunk

PROMPT = "a red square moving right"


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    store = tmp_path_factory.mktemp("state")
    with Server.local(n_workers=2, model="tiny", store=str(store), checkpoint_every=2,
                      dashboard_address=None) as server:
        yield server


@pytest.fixture(scope="module")
def other(owner):
    """A second client of the same cluster, with its own Server (direct to workers)."""
    second = Server(owner.client.scheduler.address)
    assert second.client is not owner.client and second.client.id != owner.client.id
    yield second
    second.close()


def _same(chunks, expected) -> None:
    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the undisturbed run"


def _actor_key(client: Client, session_id: str) -> tuple[str, str]:
    """What any client can learn of a session's actor without its token: (worker, key) from has_what."""
    for worker, keys in client.has_what().items():
        for key in keys:
            if str(key).startswith("turboserve-session-") and f"-{session_id}-" in str(key):  # session_mechanisms.actor_key
                return worker, str(key)
    raise AssertionError(f"no actor of {session_id} in has_what")


def test_a_second_client_sees_no_prompt_and_gets_no_handle(owner, other):
    s = owner.open_session(PROMPT, seed=1)
    assert s.access_token and len(s.access_token) >= 32
    mine = {r["id"]: r for r in owner.sessions()}
    theirs = {r["id"]: r for r in other.sessions()}
    assert mine[s.id]["prompt"] == PROMPT and mine[s.id]["owned"] is True
    assert "prompt" not in theirs[s.id] and theirs[s.id]["owned"] is False
    assert "access_token" not in theirs[s.id] and "access_token" not in mine[s.id]
    with pytest.raises(SessionAccessDenied) as err:
        other.session(s.id)
    assert s.id in str(err.value) and "access_token" in str(err.value)  # says how to hand it over
    with pytest.raises(SessionAccessDenied):
        other.session(s.id, access_token="a guess")
    for op in ("turboserve_info", "turboserve_events", "turboserve_locate"):
        with pytest.raises(SessionAccessDenied):
            other.client.sync(getattr(other.client.scheduler, op), session_id=s.id)
    s.close()


def test_a_second_client_cannot_poll_acknowledge_take_or_close(owner, other, reference):
    s = owner.open_session(PROMPT, seed=2)
    got = list(s.stream(2))
    more = s.stream(4)  # the owner asks for chunks 2..5: made, they wait on the worker until read
    got.append(next(more))
    worker, key = _actor_key(other.client, s.id)
    bare = other.client.rpc(worker)
    for method, args in (("poll", (6, 1.0)), ("take", (2, 1.0)), ("request", (50,)), ("close", ()),
                         ("info", ()), ("events", ()), ("export", ()), ("release", ()), ("set_prompt", ("mine",))):
        with pytest.raises(SessionAccessDenied):  # no token
            other.client.sync(call_actor, bare, key, method, *args)
    with pytest.raises(SessionAccessDenied):  # a wrong one
        other.client.sync(call_actor, TokenRPC(bare, "not-the-token"), key, "poll", 6, 1.0)
    # A chunk future of its own, with the actor's key but no token, is refused on the worker too.
    fut = other.client.submit(fetch_chunk, s.id, 2, worker, key, "thief", key=("thief", 2), workers=[worker],
                              pure=False)
    with pytest.raises(SessionAccessDenied):
        fut.result(timeout=60)
    # The owner's chunk future: its result is handed to the owner only, not through the worker's
    # short result path to a client that read the future's key from has_what.
    mine = s.submit()
    assert mine.result(timeout=120).index == 6
    deadline = time.monotonic() + 30
    while str(mine.key) not in {str(k) for k in other.client.has_what()[s.worker]}:  # the key is public
        assert time.monotonic() < deadline, "the chunk future's key never showed in has_what"
        time.sleep(0.1)
    answer = other.client.sync(other.client.rpc(s.worker).turboserve_chunk_result, key=list(mine.key), timeout=1.0)
    assert answer["status"] == "denied" and "result" not in answer
    answer = other.client.sync(TokenRPC(other.client.rpc(s.worker), "a guess").turboserve_chunk_result,
                               key=list(mine.key), timeout=1.0)
    assert answer["status"] == "denied"
    # Control calls on the scheduler: refused, nothing changes.
    for op, kw in (("turboserve_close", {}), ("turboserve_pause", {}), ("turboserve_suspend", {"tier": "host"}),
                   ("turboserve_migrate", {"target": next(w for w in other.workers() if w != worker)})):
        with pytest.raises(SessionAccessDenied):
            other.client.sync(getattr(other.client.scheduler, op), session_id=s.id, **kw)
    assert s.record()["status"] == "active" and s.record()["worker"] == worker
    # The owner's stream goes on: nothing was acknowledged, dropped or closed under it.
    got += list(more)
    _same(got, reference(PROMPT, 2, 6))
    s.close()


def test_the_token_hands_the_session_over_on_purpose(owner, other, reference):
    s = owner.open_session(PROMPT, seed=3)
    got = list(s.stream(2))
    handed = other.session(s.id, access_token=s.access_token)
    got += list(handed.stream(2))  # goes on from the next chunk, gapless
    assert next(r for r in other.sessions() if r["id"] == s.id)["prompt"] == PROMPT
    got += [handed.submit().result(timeout=120)]
    _same(got, reference(PROMPT, 3, 5))
    handed.close()
    assert [r["status"] for r in owner.sessions(include_closed=True) if r["id"] == s.id] == ["closed"]


def test_access_denied_is_a_typed_turboserve_error_and_the_server_keeps_serving(owner, other):
    s = owner.open_session(PROMPT, seed=4)
    with pytest.raises(TurboserveError):
        other.session(s.id)
    t = other.open_session(PROMPT, seed=4)  # the second client serves its own sessions as before
    assert [c.index for c in t.stream(1)] == [0]
    with pytest.raises(SessionAccessDenied):
        owner.session(t.id)  # and the first cannot reach the second's
    assert [c.index for c in s.stream(1)] == [0]
    s.close()
    t.close()


def test_a_refused_call_is_one_info_line_on_the_scheduler_not_an_error_traceback(owner, other, caplog):
    s = owner.open_session(PROMPT, seed=5)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            with pytest.raises(SessionAccessDenied):
                other.client.sync(other.client.scheduler.turboserve_info, session_id=s.id)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    refused = [r for r in caplog.records if "turboserve_info refused: SessionAccessDenied" in r.getMessage()]
    assert len(refused) == 3 and all(r.levelno == logging.INFO for r in refused)
    s.close()
