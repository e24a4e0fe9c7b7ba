"""``open_session(worker=w)`` goes through admission like any open (issue 13, item 5).

Naming a worker used to bypass ``max-sessions-per-worker`` (40 sessions were opened on a
worker capped at 32). Now a named worker takes a session only while it is below the cap,
counting the sessions being opened there at the same time; when it is full,
``admission.on-full`` decides as it does for placed sessions: ``refuse`` raises
``CapacityExceeded`` at once, ``queue`` waits for room until ``queue-timeout-s``. A
draining worker takes no new session. All on real LocalClusters.
"""

from __future__ import annotations

import threading
import time

import pytest

from framework import Server
from framework.errors import CapacityExceeded, UnknownWorker

pytestmark = pytest.mark.slow

PROMPT = "a heron on a misty river"
CAP = 2


def ids_on(server, worker) -> set[str]:
    return {r["id"] for r in server.sessions() if r["worker"] == worker}


@pytest.fixture(scope="module")
def refusing():
    with Server.local(n_workers=2, model="tiny", dashboard_address=":0",
                      settings={"max_sessions_per_worker": CAP, "on_full": "refuse"}) as server:
        yield server


@pytest.fixture(scope="module")
def queueing():
    with Server.local(n_workers=2, model="tiny", dashboard_address=":0",
                      settings={"max_sessions_per_worker": CAP, "on_full": "queue", "queue_timeout_s": 60}) as server:
        yield server


def test_a_full_named_worker_refuses_the_session_with_a_typed_error_that_says_what_to_do(refusing):
    w = refusing.workers()[0]
    opened = [refusing.open_session(PROMPT, seed=i, worker=w) for i in range(CAP)]

    with pytest.raises(CapacityExceeded, match="max-sessions-per-worker") as refused:
        refusing.open_session(PROMPT, seed=9, worker=w)

    assert "name another worker" in str(refused.value)
    assert ids_on(refusing, w) == {s.id for s in opened}  # nothing was placed there, nothing registered
    elsewhere = refusing.open_session(PROMPT, seed=10)  # placement still finds the other worker
    assert elsewhere.worker != w
    opened[0].close()
    again = refusing.open_session(PROMPT, seed=11, worker=w)  # room again
    assert again.worker == w and [c.index for c in again.stream(1)] == [0]
    for s in (*opened[1:], elsewhere, again):
        s.close()


def test_opens_racing_for_a_named_worker_never_exceed_its_cap(refusing):
    w = refusing.workers()[1]
    results: list = []

    def open_one(seed: int) -> None:
        try:
            results.append(refusing.open_session(PROMPT, seed=seed, worker=w))
        except CapacityExceeded as exc:
            results.append(exc)

    threads = [threading.Thread(target=open_one, args=(20 + i,)) for i in range(3 * CAP)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    opened = [r for r in results if not isinstance(r, Exception)]
    assert len(results) == 3 * CAP
    assert len(opened) == CAP and len(ids_on(refusing, w)) == CAP
    for s in opened:
        s.close()


def test_a_draining_worker_takes_no_named_session(refusing):
    w = refusing.workers()[0]
    refusing.drain(w, retire=False)
    try:
        with pytest.raises(UnknownWorker, match="draining"):
            refusing.open_session(PROMPT, seed=30, worker=w)
    finally:
        refusing.client.run_on_scheduler(_undrain, worker=w)
    s = refusing.open_session(PROMPT, seed=31, worker=w)
    assert s.worker == w
    s.close()


def test_a_named_open_queues_until_its_worker_has_room(queueing):
    w = queueing.workers()[0]
    opened = [queueing.open_session(PROMPT, seed=i, worker=w) for i in range(CAP)]
    box: dict = {}

    def open_queued() -> None:
        box["session"] = queueing.open_session(PROMPT, seed=40, worker=w)

    waiter = threading.Thread(target=open_queued, daemon=True)
    waiter.start()
    time.sleep(2.0)
    assert waiter.is_alive() and len(ids_on(queueing, w)) == CAP  # queued, not placed over the cap

    opened[0].close()
    waiter.join(60)
    assert not waiter.is_alive()
    assert box["session"].worker == w and len(ids_on(queueing, w)) == CAP
    for s in (*opened[1:], box["session"]):
        s.close()


def _undrain(dask_scheduler, worker):
    from framework.registry import PLUGIN_NAME

    dask_scheduler.plugins[PLUGIN_NAME].undrain(worker)
