"""Admission's memory check and its taking back of drained workers, on an in-memory fake
cluster (no Dask): :meth:`framework.admission.Admission.memory_fit`, ``check_memory``,
``choose`` and ``reclaim_drained`` (issue 13: admission by memory, long recovery gaps)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from framework.admission import Admission
from framework.fleet import WorkerFleet
from framework.errors import InsufficientMemory
from framework.limits import GIB
from framework.registry import SessionRecord, SessionRegistry
from policies.types import SessionStatus


class FakeLoop:
    """The control loop's ``choose``: the first worker not excluded; its (real) worker fleet."""

    def __init__(self) -> None:
        self.fleet = WorkerFleet(clock=lambda: 0.0)

    def choose(self, session_id, exclude, max_sessions=None):
        return next((w for w in sorted(WORKERS) if w not in exclude), None)


WORKERS: dict = {}


def admission(workers: dict, cold=frozenset()) -> tuple[Admission, SessionRegistry, FakeLoop]:
    WORKERS.clear()
    WORKERS.update(workers)
    registry, loop = SessionRegistry(), FakeLoop()
    settings = SimpleNamespace(model="tiny", max_sessions_per_worker=32, on_full="refuse", queue_timeout_s=0.1)
    adm = Admission(SimpleNamespace(workers=WORKERS), registry, settings, SimpleNamespace(cold=lambda: cold),
                    None, lambda: loop)
    return adm, registry, loop


def worker(memory_gib: float, gpu: bool = False) -> SimpleNamespace:
    return SimpleNamespace(memory_limit=int(memory_gib * GIB), resources={"GPU": 1} if gpu else {})


def record(sid: str, model: str = "tiny", height: int = 64, width: int = 64, on: str | None = None) -> SessionRecord:
    rec = SessionRecord(session_id=sid, model=model, prompt="p", seed=0, height=height, width=width)
    rec.worker, rec.status = on, SessionStatus.ACTIVE if on else SessionStatus.PENDING
    return rec


def test_a_model_that_fits_no_worker_is_refused_and_says_what_it_needs():
    adm, _, _ = admission({"w1": worker(4)})
    with pytest.raises(InsufficientMemory, match=r"wan-1.3b session at 480x832 needs 13.67 GiB .* worker w1 \(empty\)"):
        adm.check_memory(record("s", "wan-1.3b", 480, 832))


def test_placement_skips_the_workers_a_session_does_not_fit():
    adm, _, _ = admission({"w1": worker(4), "w2": worker(64)})
    rec = record("s", "wan-1.3b", 480, 832)
    adm.check_memory(rec)  # w2 takes it
    assert adm.choose(rec) == "w2"
    assert adm.memory_fit(rec, "w1").needed == adm.memory_fit(rec, "w2").needed


def test_what_a_worker_holds_counts_and_its_model_s_weights_once():
    adm, registry, _ = admission({"w1": worker(24), "w2": worker(24)})
    for i in range(2):  # two wan sessions on w1: 2 x (state + activations) + the weights once
        registry.add(record(f"h{i}", "wan-1.3b", 480, 832, on="w1"))
    rec = record("s", "wan-1.3b", 480, 832)
    fit = adm.memory_fit(rec, "w1")
    assert not fit.fits and fit.needed < adm.memory_fit(rec, "w2").needed  # weights already there
    assert adm.choose(rec) == "w2"
    assert adm.memory_fit(rec, "w1", empty=True).fits


def test_gpu_workers_and_unlimited_workers_are_not_checked():
    adm, _, _ = admission({"g": worker(4, gpu=True), "u": SimpleNamespace(memory_limit=0, resources={})})
    rec = record("s", "wan-14b", 480, 832)
    assert adm.memory_fit(rec, "g") is None and adm.memory_fit(rec, "u") is None
    adm.check_memory(rec)


def test_a_named_worker_the_session_does_not_fit_now_is_refused():
    adm, registry, _ = admission({"w1": worker(16)})
    registry.add(record("h", "wan-1.3b", 480, 832, on="w1"))
    with pytest.raises(InsufficientMemory, match="worker w1 has"):
        adm.check_memory(record("s", "wan-1.3b", 480, 832), "w1")


def test_recovery_takes_back_a_worker_drained_by_a_scale_down_not_one_drained_by_hand():
    adm, _, loop = admission({"a": worker(8), "b": worker(8), "c": worker(8)}, cold=frozenset({"c"}))
    adm.draining.update({"a", "b", "c"})
    loop.fleet.drained.update({"b", "c"})  # the control loop's Retire drained b and c; a was drained by hand
    loop.fleet.retiring.update({"b", "c"})
    rec = record("s")
    assert adm.choose(rec) is None
    assert adm.reclaim_drained(rec) == "b"  # c is still loading its model
    assert "b" not in adm.draining | loop.fleet.drained | loop.fleet.retiring
    assert {"a", "c"} <= adm.draining and "c" in loop.fleet.drained
    assert adm.reclaim_drained(rec, exclude={"b"}) is None
