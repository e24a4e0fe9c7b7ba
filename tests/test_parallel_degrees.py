"""Which degrees a parallel group may have: every divisor of its model's heads, up to a maximum.

Ulysses shards whole attention heads, so a group serving one model may have any degree
that divides *that model's* heads (``kernels.presets``), up to
``turboserve.policies.parallelism-max-degree`` (8: one node): wan-14b 1, 2, 4, 5, 8;
wan-1.3b 1, 2, 3, 4, 6. One function (``framework.parallelism.model_degrees``) gives the
set to the live control loop's policy, to ``set_parallelism``'s refusals and to the
simulated experiment. Last, on a real LocalCluster of four CPU workers (``tiny-trained``:
4 heads), a streaming session goes to degree 4 and back with the frames of an
uninterrupted degree-1 run, and a degree that does not divide the heads is refused.
"""

from __future__ import annotations

import dask
import pytest

from framework import config
from framework.control_settings import ControlSettings
from framework.errors import BadDegree
from framework.parallelism import ParallelGroups, model_degrees, plan_groups
from kernels.presets import get_preset
from policies.parallelism import Adaptive, FixedDegree, head_degrees
from policies.types import BatchLatencyModel, ParallelStepModel, Snapshot, WorkerView

MAX_KEY = "turboserve.policies.parallelism-max-degree"


def test_the_degrees_are_the_divisors_of_the_models_heads_up_to_the_configured_maximum():
    assert config.DEFAULTS["turboserve"]["policies"]["parallelism-max-degree"] == 8  # framework/turboserve.yaml
    assert model_degrees("wan-14b") == (1, 2, 4, 5, 8)
    assert model_degrees("wan-1.3b") == (1, 2, 3, 4, 6)
    assert model_degrees("tiny-trained") == (1, 2, 4) and model_degrees("tiny") == (1, 2)
    for name in ("wan-14b", "wan-1.3b", "tiny-trained"):
        heads = get_preset(name).num_heads
        assert all(heads % k == 0 for k in model_degrees(name)), "every degree shards whole heads"
        assert model_degrees(name) == tuple(k for k in range(1, 9) if heads % k == 0), "and every such degree is there"
    with dask.config.set({MAX_KEY: 4}):
        assert model_degrees("wan-14b") == (1, 2, 4)
    assert model_degrees("wan-14b", 10) == (1, 2, 4, 5, 8, 10)
    with pytest.raises(ValueError, match="must be a positive integer"), dask.config.set({MAX_KEY: 0}):
        model_degrees("wan-14b")
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        head_degrees(0, 8)


def test_the_live_loop_and_the_simulator_give_the_policy_the_same_degrees():
    from experiments.parallelism import spec_for

    with dask.config.set({"turboserve.model": "wan-14b"}):
        live = ControlSettings.from_config(parallelism="adaptive").build().parallelism
    assert isinstance(live, Adaptive)
    assert live.degrees == spec_for("adaptive", "wan-14b").params["degrees"] == (1, 2, 4, 5, 8)
    with dask.config.set({"turboserve.model": "wan-14b", MAX_KEY: 4}):
        assert ControlSettings.from_config(parallelism="adaptive").build().parallelism.degrees == (1, 2, 4)
        assert spec_for("adaptive", "wan-14b").params["degrees"] == (1, 2, 4)
    # a fixed degree the model does not allow is refused when the loop's policies are built
    with dask.config.set({"turboserve.model": "wan-1.3b"}):
        fixed = ControlSettings.from_config(parallelism="fixed", parallelism_params={"degree": 8})
    with pytest.raises(ValueError, match=r"degree 8 is not one the model allows \(1, 2, 3, 4, 6\)"):
        fixed.build()
    assert isinstance(ControlSettings.from_config(parallelism="fixed", parallelism_params={"degree": 2}).build()
                      .parallelism, FixedDegree)


def test_set_parallelism_plans_any_allowed_degree_and_refuses_the_others_with_bad_degree():
    free = lambda w: []  # noqa: E731
    eight = [f"w{i}" for i in range(8)]
    assert plan_groups(8, eight, free, 40, 8) == [tuple(eight)]
    assert plan_groups(5, eight[:5], free, 40, 8) == [tuple(eight[:5])]
    with pytest.raises(BadDegree, match=r"does not divide the model's 40 attention heads .*use one of \[1, 2, 4, 5, 8\]"):
        plan_groups(3, eight[:6], free, 40, 8)
    with pytest.raises(BadDegree, match=r"above the largest allowed, 8 \(turboserve.policies.parallelism-max-degree\)"):
        plan_groups(10, eight + ["w8", "w9"], free, 40, 8)
    with dask.config.set({MAX_KEY: 4}):  # the scheduler's groups take the configured maximum
        assert ParallelGroups(None, free, lambda s: "tiny", lambda: None).max_degree == 4
    assert ParallelGroups(None, free, lambda s: "tiny", lambda: None).max_degree == 8


def _snap(n: int) -> Snapshot:
    """``n`` free GPUs of a wan-14b-like model: 2.48 s alone, batching cheap (a = 0.1)."""
    curve = BatchLatencyModel(tuple(range(1, 9)), tuple(2.48 * (1 + 0.1 * (b - 1)) for b in range(1, 9)))
    par = ParallelStepModel(efficiency=0.9, comm_latency_s=0.01, comm_bytes_per_session=1e9, link_bytes_per_s=4.5e11)
    return Snapshot(now_s=0.0, workers=tuple(WorkerView(f"w{i}", memory_bytes=80e9, max_batch=8) for i in range(n)),
                    sessions=(), slo_s=0.75, latency=curve, parallel=par)


def test_the_adaptive_policy_takes_degree_8_where_it_serves_most_per_gpu_and_only_what_its_workers_can_form():
    policy = Adaptive(degrees=model_degrees("wan-14b"))
    assert policy.target(_snap(16)) == 8
    assert [a.workers for a in policy.decide(_snap(16), None)[0]] == [tuple(f"w{i}" for i in range(8)),
                                                                      tuple(f"w{i}" for i in range(8, 16))]
    # with 1, 2, 4 only, or 4 workers, the best it can form is 4
    assert Adaptive().target(_snap(16)) == 4
    assert policy.target(_snap(4)) == 4
    assert [a.workers for a in policy.decide(_snap(4), None)[0]] == [("w0", "w1", "w2", "w3")]


PROMPT = "a red square moving right"


@pytest.mark.slow
def test_a_streaming_session_goes_to_degree_4_on_four_workers_and_back_with_the_same_frames(tmp_path):
    import numpy as np

    from framework import Server
    from kernels.model import StreamingVideoModel
    from kernels.presets import packaged_weights

    net = StreamingVideoModel.from_pretrained(packaged_weights("tiny-trained"), preset="tiny-trained", num_threads=1)
    state = net.new_session(PROMPT, 3)
    expected = [net.step([state])[0] for _ in range(7)]

    with Server.local(n_workers=4, model="tiny-trained", store=str(tmp_path), checkpoint_every=4,
                      dashboard_address=":0") as server:
        workers = server.workers()
        with pytest.raises(BadDegree, match="does not divide the model's 4 attention heads"):
            server.set_parallelism(3, workers[:3])
        s = server.open_session(PROMPT, seed=3)
        home = s.worker
        chunks = list(s.stream(2))
        pending = s.submit()  # streaming while the four workers merge
        merged = server.set_parallelism(4, workers)
        (group,) = [row for row in server.parallelism() if row["degree"] == 4]
        assert group["leader"] == home and sorted(group["workers"]) == sorted(workers)
        assert [f["workers"][0] for f in merged["formed"]] == [home]
        chunks.append(pending.result(timeout=180))  # at degree 1 or 4: the merge waits for a chunk boundary
        chunks += list(s.stream(2))  # at degree 4
        pending = s.submit()
        (done,) = server.set_parallelism(1, workers)["split"]
        assert done["broken"] is None and done["steps"] >= 2, done
        assert [row["degree"] for row in server.parallelism()] == [1, 1, 1, 1]
        chunks.append(pending.result(timeout=180))
        chunks += list(s.stream(1))
        s.close()
    assert [c.index for c in chunks] == list(range(7)), "indices contiguous, none lost or repeated"
    for c, e in zip(chunks, expected):
        diff = np.abs(c.frames.astype(np.int16) - e.astype(np.int16)).max()
        assert diff <= 1, f"chunk {c.index} differs by {diff} uint8 levels from the uninterrupted degree-1 run"
    assert all(c.worker == home for c in chunks), "the session stays on the leader"
