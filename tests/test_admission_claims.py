"""Claims on workers being closed, on an in-memory fake cluster (no Dask): a worker offered
to the cluster manager for closing takes no placement, a placement in flight keeps its
target from being claimed, and claims are given back or lapse (issue 13, the scale-down
race; live: ``tests/test_scale_down_claims.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import dask
import pytest

from framework.admission import Admission
from framework.fleet import WorkerFleet
from framework.registry import SessionRecord, SessionRegistry
from policies.types import SessionStatus
from workers.errors import TransferError, UnknownWorker


class FakeLoop:
    """The control loop's ``choose``: the first worker not excluded; its (real) worker fleet."""

    def __init__(self) -> None:
        self.fleet = WorkerFleet(clock=lambda: 0.0)

    def choose(self, session_id, exclude, max_sessions=None):
        return next((w for w in sorted(self.workers) if w not in exclude), None)


def admission(*names: str) -> tuple[Admission, FakeLoop, dict]:
    workers = {n: SimpleNamespace(name=i, memory_limit=0, resources={}, status=SimpleNamespace(name="running"))
               for i, n in enumerate(names)}
    loop = FakeLoop()
    loop.workers = workers
    settings = SimpleNamespace(model="tiny", max_sessions_per_worker=32, on_full="refuse", queue_timeout_s=0.1)
    adm = Admission(SimpleNamespace(workers=workers), SessionRegistry(), settings,
                    SimpleNamespace(cold=lambda: frozenset()), None, lambda: loop)
    return adm, loop, workers


def pending(sid: str = "s") -> SessionRecord:
    rec = SessionRecord(session_id=sid, model="tiny", prompt="p", seed=0, height=64, width=64)
    rec.status = SessionStatus.PENDING
    return rec


def test_a_claimed_worker_is_offered_to_no_placement():
    adm, loop, _ = admission("a", "b")
    assert adm.claim(["a"]) == ["a"]
    assert adm.choose(pending()) == "b"
    with pytest.raises(TransferError, match="being closed by the autoscaler"):
        with adm.placing("a"):
            pass
    with pytest.raises(UnknownWorker, match="being closed by the autoscaler.*another of \\['b'\\]"):
        adm.check_not_closing("a")
    loop.fleet.drained.add("a")  # a drained worker a recovery could take back: not while it is claimed
    adm.draining.add("a")
    assert adm.reclaim_drained(pending(), exclude={"b"}) is None


def test_a_placement_in_flight_keeps_its_target_from_being_claimed():
    adm, _, _ = admission("a", "b")
    with adm.placing("a"):
        assert adm.claim(["a", "b"]) == ["b"]
        assert adm.load()["a"] == 1  # counted as a session being opened there
    assert adm.claim(["a"]) == ["a"]


def test_claims_are_given_back_by_name_and_lapse_unless_the_worker_is_retiring():
    adm, _, workers = admission("a", "b")
    adm.claim(["a", "b"])
    assert adm.release([0]) == ["a"]  # Dask names the workers it closes (the Adaptive's attribute="name")
    assert adm.claimed() == {"b"}
    with dask.config.set({"turboserve.autoscale.claim-timeout": 0}):
        workers["b"].status = SimpleNamespace(name="closing_gracefully")  # Dask retires it: kept
        assert adm.claimed() == {"b"}
        workers["b"].status = SimpleNamespace(name="running")  # the autoscaler never came back: lapses
        assert adm.claimed() == set()
    adm.claim(["a"])
    del workers["a"]  # it left
    assert adm.claimed() == set()
