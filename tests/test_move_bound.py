"""A suspension or a resumption whose worker stops answering is aborted within the bound (issue 13).

``turboserve.control.transfer-timeout`` bounds every call the scheduler makes to a
session's actor; a frozen worker process (SIGSTOP) keeps its connections open and
answers nothing, and used to hold the session's lock for good in ``suspend`` and
``resume``. On a real LocalCluster (tiny model, CPU workers, a 3 s bound):

- ``suspend`` on a frozen worker raises :class:`TransferError` within the bound, the
  session stays where it was (``suspend-aborted``); a suspension the worker carries out
  late, once it runs again, is taken back (``settled``), to host or to disk;
- ``resume`` in place on a frozen worker raises within the bound and the session stays
  suspended; a resumption carried out late is suspended again;
- ``resume`` onto a target that freezes in its commit raises within the bound, the
  session stays suspended with its checkpoint, the late commit is fenced out (the store
  records a newer epoch), and the session resumes elsewhere;

and every stream goes on with each chunk once, in order, bit-identical to an undisturbed
run of the same prompt and seed.

The worker is frozen either from outside (``os.kill(pid, SIGSTOP)``) or by itself, on
entering the actor method under test, so that the call it answers late is known.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import dask
import numpy as np
import pytest

from framework import Server
from kernels.model import StreamingVideoModel
from storage import CheckpointStore
from workers.errors import TransferError

pytestmark = pytest.mark.slow

PROMPT = "a kite over a beach"
BOUND_S = 3.0
SLACK_S = 6.0  # the RPCs around the bound on a loaded 2-core machine


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def server(store):
    with dask.config.set({"turboserve.control.transfer-timeout": f"{BOUND_S}s"}):
        with Server.local(n_workers=2, model="tiny", store=store, dashboard_address=None) as server:
            yield server


def undisturbed(seed: int, n: int) -> list[np.ndarray]:
    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    state = model.new_session(PROMPT, seed)
    return [model.step([state])[0] for _ in range(n)]


def assert_undisturbed(chunks, seed: int) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for got, want in zip(chunks, undisturbed(seed, len(chunks)), strict=True):
        np.testing.assert_array_equal(got.frames, want)


def freeze_on_entry(method: str) -> None:
    """On a worker: the next call of ``SessionActor.<method>`` stops this process (SIGSTOP) first."""
    from workers.session_actor import SessionActor

    original = getattr(SessionActor, method)

    async def frozen(self, *args, **kwargs):
        setattr(SessionActor, method, original)
        os.kill(os.getpid(), signal.SIGSTOP)  # runs on once the test sends SIGCONT
        return await original(self, *args, **kwargs)

    setattr(SessionActor, method, frozen)


def timed(fn):
    """``fn()`` in a thread: (its error or None, seconds); fails if it still runs well past the bound."""
    box: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - what the caller saw
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(BOUND_S * 3 + SLACK_S + 30)
    assert not t.is_alive(), "the call still waits on the frozen worker"
    return box.get("error"), box["elapsed"]


def record(server, s) -> dict:
    return next(r for r in server.sessions() if r["id"] == s.id)


def wait_for_event(s, kind: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in s.events() if e["kind"] == kind]
        if found:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {kind!r} event in {timeout} s: {[e['kind'] for e in s.events()]}")


def test_a_suspend_on_a_frozen_worker_is_aborted_within_the_bound_and_the_stream_goes_on(server):
    s = server.open_session(PROMPT, seed=11)
    chunks = list(s.stream(2))
    before = record(server, s)
    pid = server.client.run(os.getpid, workers=[s.worker])[s.worker]
    os.kill(pid, signal.SIGSTOP)
    try:
        error, elapsed = timed(lambda: s.suspend(to="host"))
        after = record(server, s)
        again, elapsed_again = timed(lambda: s.suspend(to="host"))  # still frozen: the first is in doubt
    finally:
        os.kill(pid, signal.SIGCONT)
    assert isinstance(error, TransferError), error
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed
    msg = str(error)
    assert "was aborted" in msg and "turboserve.control.transfer-timeout" in msg and "stays" in msg, msg
    assert isinstance(again, TransferError) and "until its worker answers" in str(again), again
    assert BOUND_S <= elapsed_again < BOUND_S + SLACK_S, elapsed_again
    assert (after["status"], after["worker"], after["epoch"]) == (before["status"], before["worker"], before["epoch"])
    assert any(e["kind"] == "suspend-aborted" for e in s.events())
    chunks += list(s.stream(3))  # the worker runs again; a late suspension is taken back
    assert_undisturbed(chunks, 11)
    s.suspend(to="host")  # and the session suspends and resumes as usual
    s.resume()
    chunks += list(s.stream(1))
    assert_undisturbed(chunks, 11)
    s.close()


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_a_suspension_carried_out_late_is_taken_back(server, tier):
    s = server.open_session(PROMPT, seed=12)
    chunks = list(s.stream(2))
    worker = s.worker
    pid = server.client.run(os.getpid, workers=[worker])[worker]
    server.client.run(freeze_on_entry, "offload", workers=[worker])
    try:
        error, elapsed = timed(lambda: s.suspend(to=tier))
        after = record(server, s)
    finally:
        os.kill(pid, signal.SIGCONT)  # the offload runs now, after the scheduler gave up on it
    assert isinstance(error, TransferError) and "was aborted" in str(error), error
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed
    assert after["status"] != "suspended" and after["worker"] == worker, after
    settled = wait_for_event(s, "settled")
    assert settled["undid"] == "a suspension that arrived late", settled
    assert [e["tier"] for e in s.events() if e["kind"] == "suspended"] == [tier]  # the actor's own record
    assert record(server, s)["status"] != "suspended"
    chunks += list(s.stream(3))
    assert_undisturbed(chunks, 12)
    assert s.worker == worker
    s.close()


def test_a_resume_in_place_on_a_frozen_worker_is_aborted_and_a_late_one_suspended_again(server):
    s = server.open_session(PROMPT, seed=13)
    chunks = list(s.stream(2))
    s.suspend(to="host")
    worker = s.worker
    pid = server.client.run(os.getpid, workers=[worker])[worker]
    server.client.run(freeze_on_entry, "restore", workers=[worker])
    try:
        error, elapsed = timed(lambda: s.resume())
        after = record(server, s)
    finally:
        os.kill(pid, signal.SIGCONT)  # the restore runs now, after the scheduler gave up on it
    assert isinstance(error, TransferError) and "suspended" in str(error), error
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed
    assert (after["status"], after["tier"], after["worker"]) == ("suspended", "host", worker), after
    assert any(e["kind"] == "resume-aborted" for e in s.events())
    settled = wait_for_event(s, "settled")
    assert settled["undid"] == "a resumption that arrived late", settled
    assert record(server, s)["status"] == "suspended"
    s.resume()
    chunks += list(s.stream(3))
    assert_undisturbed(chunks, 13)
    s.close()


def engine_sessions(dask_worker) -> list[str]:
    """On a worker: the sessions attached to its engine."""
    host = dask_worker.plugins["turboserve-model-host"]
    return list(host.engine(host.model)._entries)


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_a_resume_whose_target_freezes_in_its_commit_is_fenced_out_and_resumes_elsewhere(server, store, tier):
    """From disk the scheduler claims the newer epoch in the store; from host the parked source does."""
    s = server.open_session(PROMPT, seed=14)
    chunks = list(s.stream(2))
    source = s.worker
    (target,) = [w for w in server.workers() if w != source]
    s.suspend(to=tier)
    suspended = record(server, s)
    pid = server.client.run(os.getpid, workers=[target])[target]
    server.client.run(freeze_on_entry, "commit", workers=[target])
    try:
        error, elapsed = timed(lambda: s.resume(target))
        after = record(server, s)
    finally:
        os.kill(pid, signal.SIGCONT)  # its commit runs now, after the scheduler gave up on it
    assert isinstance(error, TransferError) and "nothing is lost" in str(error), error
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed
    assert (after["status"], after["tier"], after["worker"]) == ("suspended", tier, suspended["worker"]), after
    # The late commit's epoch (one above the suspended record's) is fenced: the store records a newer one.
    fence = CheckpointStore(store).owner_epoch(s.id)
    assert fence == after["epoch"] >= suspended["epoch"] + 2, (fence, suspended, after)
    assert any(e["kind"] == "resume-aborted" for e in s.events())
    time.sleep(1.0)  # the late commit has run, and was refused: the target serves nothing of the session
    assert s.id not in server.client.run(engine_sessions, workers=[target])[target]
    assert CheckpointStore(store).owner_epoch(s.id) == fence
    s.resume(source)
    chunks += list(s.stream(3))
    assert_undisturbed(chunks, 14)
    assert CheckpointStore(store).owner_epoch(s.id) == record(server, s)["epoch"] >= fence  # (in place: the same)
    s.close()


def test_a_migration_whose_target_freezes_in_its_prepare_goes_on_at_the_source(server):
    """The target's late ``prepare`` asks the source for its state after the session was handed
    back: the source, serving again, refuses, instead of taking the state off its engine."""
    s = server.open_session(PROMPT, seed=15)
    chunks = list(s.stream(2))
    source = s.worker
    (target,) = [w for w in server.workers() if w != source]
    pid = server.client.run(os.getpid, workers=[target])[target]
    server.client.run(freeze_on_entry, "prepare", workers=[target])
    try:
        error, elapsed = timed(lambda: s.migrate(target))
    finally:
        os.kill(pid, signal.SIGCONT)  # its prepare runs now, after the scheduler gave up on it
    assert isinstance(error, TransferError) and "goes on at the source" in str(error), error
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S, elapsed
    time.sleep(1.0)  # the late prepare has asked the source for its state, and was refused
    box: dict = {}
    failed, _ = timed(lambda: box.setdefault("chunks", list(s.stream(3))))
    assert failed is None, failed
    chunks += box["chunks"]
    assert_undisturbed(chunks, 15)
    assert s.worker == source and record(server, s)["worker"] == source
    assert s.id not in server.client.run(engine_sessions, workers=[target])[target]
    s.close()


def test_a_migration_whose_source_freezes_is_recovered_and_the_source_serves_nothing_after(server):
    """A source that does not answer the freeze is not asked again: the session is recovered from
    its checkpoint at a newer epoch, and the frozen actor, running again, is not a second owner."""
    s = server.open_session(PROMPT, seed=16)
    chunks = list(s.stream(2))
    source = s.worker
    (target,) = [w for w in server.workers() if w != source]
    pid = server.client.run(os.getpid, workers=[source])[source]
    os.kill(pid, signal.SIGSTOP)
    try:
        error, elapsed = timed(lambda: s.migrate(target))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert isinstance(error, TransferError) and "did not answer" in str(error), error
    assert BOUND_S <= elapsed < 2 * BOUND_S, elapsed  # one bound: the source is not asked to take it back
    box: dict = {}
    failed, _ = timed(lambda: box.setdefault("chunks", list(s.stream(3))))
    assert failed is None, failed
    chunks += box["chunks"]
    assert_undisturbed(chunks, 16)
    assert "recovered" in [e["kind"] for e in s.events()]
    time.sleep(1.0)
    attached = server.client.run(engine_sessions)
    assert sum(s.id in sessions for sessions in attached.values()) == 1, attached
    s.close()


def registry_kinds(dask_scheduler, session_id: str) -> list[str]:
    """On the scheduler: the kinds of the events its registry recorded for the session."""
    from framework.registry import PLUGIN_NAME

    return [e["kind"] for e in dask_scheduler.plugins[PLUGIN_NAME].registry.get(session_id).events]


def settling(dask_scheduler, session_id: str) -> bool:
    """On the scheduler: whether the session's call is still in doubt or any settle task still runs."""
    from framework.registry import PLUGIN_NAME

    actors = dask_scheduler.plugins[PLUGIN_NAME].actors
    return session_id in actors._doubts or bool(actors._settling)


def test_closing_a_session_whose_suspension_is_in_doubt_returns_within_the_bound(server):
    s = server.open_session(PROMPT, seed=17)
    list(s.stream(1))
    pid = server.client.run(os.getpid, workers=[s.worker])[s.worker]
    os.kill(pid, signal.SIGSTOP)
    try:
        error, _ = timed(lambda: s.suspend(to="host"))
        closed, elapsed = timed(s.close)
        status = next(r["status"] for r in server.sessions(include_closed=True) if r["id"] == s.id)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert isinstance(error, TransferError), error
    assert closed is None and elapsed < BOUND_S + SLACK_S and status == "closed", (closed, elapsed, status)
    # Nothing is left to settle for a closed session: its settle task ends (it retries every
    # second, each try bounded by BOUND_S) without a note; what it notes, it notes before it ends.
    deadline = time.monotonic() + 2 * BOUND_S + SLACK_S
    while server.client.run_on_scheduler(settling, session_id=s.id):
        assert time.monotonic() < deadline, "the closed session's doubt is still being settled"
        time.sleep(0.2)
    kinds = server.client.run_on_scheduler(registry_kinds, session_id=s.id)
    assert "suspend-aborted" in kinds and "settle-failed" not in kinds and "settled" not in kinds, kinds
