"""The shared records: policy latency model, registry, snapshot lookups, SessionState equality."""

import pytest

from policies.registry import make
from policies.types import BatchLatencyModel, SessionStatus, Snapshot, WorkerView


def test_latency_model_interpolates_and_extrapolates():
    m = BatchLatencyModel(batch_sizes=(1, 2, 4), step_s=(1.0, 1.5, 2.5))
    assert m.predict(1) == 1.0
    assert m.predict(3) == pytest.approx(2.0)
    assert m.predict(8) == pytest.approx(4.5)  # last slope 0.5 per session
    assert m.predict(0) == 0.0


def test_latency_model_rejects_unsorted_points():
    with pytest.raises(ValueError, match="strictly increasing"):
        BatchLatencyModel(batch_sizes=(2, 1), step_s=(1.0, 1.0))


def test_status_predicates():
    assert SessionStatus.IDLE.on_device and not SessionStatus.SUSPENDED.on_device
    assert SessionStatus.CLOSED.finished


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown placement policy 'nope'; known:"):
        make("placement", "nope")


def test_snapshot_lookup():
    snap = Snapshot(now_s=0.0, workers=(WorkerView("w1"),), sessions=())
    assert snap.worker("w1").address == "w1" and snap.worker("w2") is None


def test_session_state_equality_is_bitwise_and_treats_nan_as_equal():
    import torch

    from kernels.state import SessionState

    a = SessionState("tiny", "p", 0, 64, 64, tensors={"x": torch.tensor([1.0, float("nan")])})
    b = a.to("cpu")
    assert a.equal(b)
    b.tensors["x"][0] = 2.0
    assert not a.equal(b)
