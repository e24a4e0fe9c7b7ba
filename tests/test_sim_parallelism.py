"""Parallel groups in the simulator: degree-k steps, transformations, the parallelism experiment.

A group of k simulated GPUs steps its sessions at ``step(b, k)`` (``SimConfig.parallel``),
a transformation pauses the sessions of the workers it reshapes for the fixed pause plus
their re-sharded KV over the link, and the actions go through the same rules
(``policies.semantics``) and the same ``ActionApplier`` as every other action.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from experiments.parallelism import (
    CAPACITY_COLUMNS,
    capacity_table,
    degree_for,
    gpus_per_session,
    parallelism_experiment,
    split_fleet,
)
from experiments.results import SUMMARY_COLUMNS
from experiments.sim import PolicySet, SimConfig, simulate
from experiments.sim.config import PolicySpec
from experiments.sim.models import kv_share, model_cost, parallel_model
from policies.types import BatchLatencyModel, FormGroup, SplitGroup

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]
PERIOD = 0.75  # 12 frames at 16 fps
SLOW = BatchLatencyModel((1, 2), (2.4, 4.6))  # a wan-14b-like chunk: misses 0.75 s alone


def trace(model: str, *events: tuple) -> pd.DataFrame:
    rows = []
    for t, sid, ev in events:
        shape = (model, 12, 480, 832, 16) if ev == "open" else (None, None, None, None, None)
        rows.append((float(t), sid, ev, "c0", *shape))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


def config(n: int, model: str = "wan-14b", **kw) -> SimConfig:
    return SimConfig(initial_workers=n, min_workers=n, max_workers=n, gpu_memory_bytes=85.9e9,
                     parallel=parallel_model(model), **kw)


def policies(n: int, parallelism: PolicySpec | object) -> PolicySet:
    return PolicySet(PolicySpec("placement", "least-loaded"), PolicySpec("autoscaling", "fixed", {"n": n}),
                     PolicySpec("offload", "never"), parallelism=parallelism)


def instream(result, session: str = "s0") -> pd.DataFrame:
    chunks = result.chunks[result.chunks["session_id"] == session]
    return chunks[chunks["index"] > 0]


ONE_14B = trace("wan-14b", (0.0, "s0", "open"), (60.0, "s0", "close"))


def test_a_14b_session_misses_every_deadline_at_degree_one():
    result = simulate(ONE_14B, policies(4, PolicySpec("parallelism", "fixed", {"degree": 1})), config(4), latency=SLOW)
    assert (instream(result)["latency_s"] > PERIOD).all()


def test_on_a_group_of_four_a_14b_session_steps_at_step_b_k_and_meets_its_deadline():
    cfg = config(4)
    result = simulate(ONE_14B, policies(4, PolicySpec("parallelism", "fixed", {"degree": 4})), cfg, latency=SLOW)
    chunks = instream(result)
    step = cfg.parallel.predict(SLOW, 1, 4)
    assert step <= PERIOD
    assert np.allclose((chunks["t_done_s"] - chunks["t_start_s"]).to_numpy(), step)
    assert (chunks["latency_s"] <= PERIOD + 1e-9).all()
    assert result.counters["transformations"] == 1
    # the whole group costs four GPUs
    assert result.gpu_seconds == pytest.approx(4 * result.end_s)


def test_the_adaptive_policy_groups_the_workers_a_14b_session_needs():
    result = simulate(ONE_14B, policies(5, PolicySpec("parallelism", "adaptive")), config(5), latency=SLOW)
    assert (instream(result)["latency_s"] <= PERIOD + 1e-9).all()
    forms = result.decisions[result.decisions["action"] == "FormGroup"]
    assert len(forms) == 1 and forms["accepted"].all()


class FormAt:
    """Test parallelism policy: form the group ``workers`` at ``t_form`` and split it at ``t_split``."""

    kind, name = "parallelism", "form-at"

    def __init__(self, workers, t_form, t_split=math.inf):
        self.workers, self.t_form, self.t_split = tuple(workers), t_form, t_split

    def initial_state(self):
        return "alone"

    def min_degree(self, snap):
        return 1

    def decide(self, snap, state):
        if state == "alone" and snap.now_s >= self.t_form:
            return [FormGroup(self.workers)], "grouped"
        if state == "grouped" and snap.now_s >= self.t_split:
            return [SplitGroup(self.workers)], "split"
        return [], state


def test_a_transformation_pauses_the_streaming_session_for_its_reshard_and_loses_no_chunk():
    df = trace("wan-1.3b", (0.0, "s0", "open"), (40.0, "s0", "close"))
    cfg = config(2, "wan-1.3b", transform_fixed_s=1.0)
    base = BatchLatencyModel((1, 2), (0.5, 0.9))
    result = simulate(df, policies(2, FormAt(("sim-w0", "sim-w1"), 10.0, 25.0)), cfg, latency=base)
    chunks = result.chunks[result.chunks["session_id"] == "s0"]
    assert chunks["index"].tolist() == list(range(len(chunks)))  # contiguous: none lost or repeated
    assert result.counters["transformations"] == 2
    nbytes = model_cost("wan-1.3b").state_bytes()
    moved = nbytes * kv_share("wan-1.3b") * (2 - 1) / 2
    assert result.counters["transform_bytes"] == 2 * int(moved)
    pause = cfg.transform_fixed_s + moved / cfg.parallel.link_bytes_per_s
    # the first chunk started after the form waits for the re-shard (its step is at degree 2)
    after = chunks[chunks["t_start_s"] >= 10.0].iloc[0]
    assert after["t_start_s"] >= 10.0 + pause - 1e-9
    assert after["t_done_s"] - after["t_start_s"] == pytest.approx(cfg.parallel.predict(base, 1, 2))
    last = chunks[chunks["t_start_s"] >= 25.0 + pause].iloc[0]
    assert last["t_done_s"] - last["t_start_s"] == pytest.approx(0.5)  # back at degree 1


def test_a_follower_takes_no_session_and_a_group_is_refused_twice():
    df = trace("wan-1.3b", (0.0, "s0", "open"), (5.0, "s1", "open"), (20.0, "s0", "close"), (20.0, "s1", "close"))
    twice = FormAt(("sim-w1", "sim-w2"), 0.0)
    result = simulate(df, policies(3, PolicySpec("parallelism", "fixed", {"degree": 2})), config(3, "wan-1.3b"),
                      latency=BatchLatencyModel((1,), (0.5,)))
    assert set(result.chunks["worker"]) <= {"sim-w0", "sim-w2"}  # w1 follows w0; w2 is alone
    refused = simulate(df, policies(3, twice), config(3, "wan-1.3b"), latency=BatchLatencyModel((1,), (0.5,)))
    assert refused.counters["transformations"] == 1


# ---------------------------------------------------------------- the experiment


def test_degrees_and_fleet_split_follow_the_models_needs():
    cfg = SimConfig.from_config()
    assert degree_for("adaptive", "wan-14b", cfg) == 4
    assert degree_for("adaptive", "wan-1.3b", cfg) == 1
    assert degree_for("fixed-2", "wan-1.3b", cfg) == 2
    assert gpus_per_session("wan-14b", 4, cfg) == 4.0
    fleet = split_fleet(64, {"wan-1.3b": 20, "wan-14b": 8}, {"wan-1.3b": 1, "wan-14b": 4}, cfg)
    assert fleet["wan-14b"] % 4 == 0 and sum(fleet.values()) <= 64
    assert fleet["wan-14b"] > fleet["wan-1.3b"]  # 8 sessions x 4 GPUs outweigh 20 x 1


def test_capacity_is_read_at_equal_slo_and_compared_with_the_best_fixed_degree():
    runs = pd.DataFrame({
        "trace": "t", "policy": ["fixed-1", "fixed-1", "fixed-4", "fixed-4", "adaptive", "adaptive"],
        "scale": [1, 2, 1, 2, 1, 2], "instream_attainment": [0.5, 0.4, 1.0, 0.9, 1.0, 1.0],
        "instream_attainment_14b": [0.0, 0.0, 1.0, 1.0, 1.0, 1.0], "ttfc_p99_s": 1.0,
        "sessions_per_gpu_hour": [10.0, 20.0, 10.0, 20.0, 10.0, 20.0],
    })
    oracles = pd.DataFrame({"trace": "t", "policy": ["oracle:fixed-1", "oracle:fixed-4", "oracle:adaptive"],
                            "scale": 2, "sessions_per_gpu_hour": [9.0, 5.0, 8.0],
                            "meets_deadline": [False, True, True]})
    table = capacity_table(runs, oracles, target=0.99, admission_s=10.0)
    assert list(table.columns) == list(CAPACITY_COLUMNS)
    table = table.set_index("policy")
    assert math.isnan(table.loc["fixed-1", "capacity_scale"])  # never meets the 14B deadline
    assert table.loc["fixed-4", "capacity_scale"] == 1 and table.loc["adaptive", "capacity_scale"] == 2
    assert table.loc["adaptive", "vs_best_fixed"] == 2.0
    # fixed-1 packs more but meets no 14B deadline: the bound is against fixed-4
    assert table.loc["adaptive", "oracle_vs_best_fixed"] == 8.0 / 5.0


def test_capacity_from_folders_reads_a_grid_run_as_several_commands(tmp_path):
    from experiments.parallelism import capacity_from

    def run(name, policies, scales, att):
        d = tmp_path / name
        d.mkdir()
        rows = [{"trace": "t", "policy": f"{p}@{s:g}", "parallelism": p, "scale": s, "instream_attainment": a,
                 "instream_attainment_14b": a, "ttfc_p99_s": 1.0, "sessions_per_gpu_hour": 10.0 * s}
                for p, s, a in zip(policies, scales, att)]
        pd.DataFrame(rows).to_csv(d / "summary.csv", index=False)
        pd.DataFrame({"trace": "t", "policy": [f"oracle:{p}" for p in policies], "scale": scales,
                      "sessions_per_gpu_hour": [5.0 if p == "fixed-4" else 6.0 for p in policies],
                      "meets_deadline": True}).to_csv(d / "oracle.csv", index=False)
        return d

    first = run("grid", ["fixed-4", "adaptive", "fixed-4", "adaptive"], [1, 1, 2, 2], [1.0, 1.0, 0.9, 1.0])
    more = run("more", ["adaptive"], [3], [1.0])  # the adaptive policy at a scale the grid missed
    summary, oracles, table = capacity_from([first, more])
    assert len(summary) == 5 and set(summary["policy"]) == {"fixed-4", "adaptive"}
    table = table.set_index("policy")
    assert table.loc["fixed-4", "capacity_scale"] == 1 and table.loc["adaptive", "capacity_scale"] == 3
    assert table.loc["adaptive", "vs_best_fixed"] == 3.0
    # the bound is read where fixed-4 was run too (scale 2), not at the adaptive-only scale 3
    assert table.loc["adaptive", "oracle_vs_best_fixed"] == 6.0 / 5.0


def test_capacity_is_also_compared_with_the_per_model_static_baseline_which_is_no_uniform_fixed_degree():
    runs = pd.DataFrame({
        "trace": "t", "policy": ["fixed-4", "fixed-4", "static-per-model", "static-per-model", "adaptive", "adaptive"],
        "scale": [1, 2, 1, 2, 1, 2], "instream_attainment": [1.0, 0.9, 1.0, 1.0, 1.0, 1.0],
        "instream_attainment_14b": 1.0, "ttfc_p99_s": 1.0,
        "sessions_per_gpu_hour": [10.0, 20.0, 30.0, 40.0, 33.0, 44.0],
    })
    oracles = pd.DataFrame({"trace": "t", "policy": ["oracle:fixed-4", "oracle:static-per-model", "oracle:adaptive"],
                            "scale": 2, "sessions_per_gpu_hour": [20.0, 50.0, 55.0], "meets_deadline": True})
    table = capacity_table(runs, oracles, target=0.99, admission_s=10.0).set_index("policy")
    # the best fixed degree stays the best *uniform* one (fixed-4 at 10), not the per-model static one
    assert table.loc["static-per-model", "vs_best_fixed"] == 4.0 and table.loc["adaptive", "vs_best_fixed"] == 4.4
    assert table.loc["adaptive", "vs_static_per_model"] == pytest.approx(1.1)
    assert table.loc["adaptive", "oracle_vs_static_per_model"] == pytest.approx(1.1)
    assert table.loc["adaptive", "oracle_vs_best_fixed"] == 2.75


@pytest.mark.slow
def test_the_experiment_writes_one_summary_row_per_policy_and_scale(tmp_path):
    summary, capacity = parallelism_experiment(
        ["mixed-14b-share"], gpus=24, scales=(0.1,), duration_s=900.0, out_dir=tmp_path,
        config=SimConfig.from_config(),
    )
    labels = ["fixed-1", "fixed-2", "fixed-4", "static-per-model", "adaptive", "adaptive-4", "adaptive-8"]
    assert list(summary["policy"]) == labels
    written = pd.read_csv(tmp_path / "summary.csv")
    assert set(SUMMARY_COLUMNS) <= set(written.columns) and len(written) == len(labels)
    assert (tmp_path / "capacity.csv").is_file() and (tmp_path / "oracle.csv").is_file()
    by = summary.set_index("policy")
    assert by.loc["fixed-1", "instream_attainment_14b"] == 0.0  # 2.5 s a chunk against 0.75 s
    assert by.loc["adaptive", "instream_attainment_14b"] > by.loc["fixed-2", "instream_attainment_14b"]
    # the published profile: 8 gains nothing over 4 (2 sessions a group of 8), so every
    # policy of the head-dividing degrees runs 14B at 4
    for label in ("adaptive", "adaptive-4", "adaptive-8", "static-per-model"):
        assert by.loc[label, "degrees"] == "wan-1.3b:1,wan-14b:4", label


def test_the_oracle_bound_never_counts_a_degree_that_misses_the_14b_deadline_as_best_fixed():
    from experiments.parallelism import oracle_table

    table = oracle_table(["mixed-14b-share"], gpus=64, scales=(0.1,), duration_s=900.0).set_index("policy")
    assert not table.loc["oracle:fixed-1", "meets_deadline"] and not table.loc["oracle:fixed-2", "meets_deadline"]
    assert table.loc["oracle:fixed-4", "vs_best_fixed"] == 1.0
    # the adaptive degrees need at most the GPU-hours of fixed 4 (the same 14B degree, 1.3B at its best)
    assert table.loc["oracle:adaptive", "gpu_hours"] <= table.loc["oracle:fixed-4", "gpu_hours"]
    # one pool per model provisions the sum of the pools' peaks, a shared fleet the peak of the sum
    assert (table["peak_gpus_pooled"] >= table["peak_gpus_shared"]).all()


def _batch_cost(a: float) -> SimConfig:
    from experiments.sim.latency import LatencySpec

    return SimConfig.from_config(latency=LatencySpec(batch_cost=a))


def test_the_fewest_gpus_of_any_mix_of_degrees_is_exact():
    import itertools

    from experiments.parallelism import cover_gpus

    per = {1: 0, 4: 1, 5: 3, 8: 8}
    need = cover_gpus(per, 20)
    for n in range(21):  # brute force over up to 5 units of each degree
        best = min(4 * a + 5 * b + 8 * c for a, b, c in itertools.product(range(6), repeat=3) if a + 3 * b + 8 * c >= n)
        assert need[n] == best, n
    assert list(need[[1, 3, 8, 9]]) == [4, 5, 8, 12]
    with pytest.raises(ValueError, match="no degree"):
        cover_gpus({1: 0, 2: 0}, 3)


def test_the_adaptive_default_takes_the_models_head_dividing_degrees_and_groups_14b_by_8_where_batching_is_cheap():
    from experiments.parallelism import spec_for
    from framework.parallelism import model_degrees

    assert model_degrees("wan-14b", 8) == (1, 2, 4, 5, 8)  # 40 heads
    assert model_degrees("wan-1.3b", 8) == (1, 2, 3, 4, 6)  # 12 heads
    # the default: up to turboserve.policies.parallelism-max-degree (8), as the live loop
    assert spec_for("adaptive", "wan-14b").params["degrees"] == model_degrees("wan-14b") == (1, 2, 4, 5, 8)
    assert spec_for("adaptive-8", "wan-14b").params["degrees"] == (1, 2, 4, 5, 8)
    assert spec_for("adaptive-4", "wan-14b").params["degrees"] == (1, 2, 4)
    cheap = _batch_cost(0.1)
    assert degree_for("adaptive-4", "wan-14b", cheap) == 4  # 1 session per 4 GPUs (a batch of 2 takes 0.80 s)
    assert degree_for("adaptive", "wan-14b", cheap) == 8  # 8 sessions per 8 GPUs within 0.75 s
    assert degree_for("adaptive", "wan-1.3b", cheap) == 1


def test_the_per_model_static_baseline_fixes_each_model_at_its_own_best_degree():
    from experiments.parallelism import spec_for, static_degree
    from framework.parallelism import model_degrees

    cheap = _batch_cost(0.1)
    # batching cheap: 1.3B alone (8 a GPU), 14B in groups of 8 (8 per 8 GPUs); never regrouped
    assert spec_for("static-per-model", "wan-14b", cheap) == PolicySpec("parallelism", "fixed",
                                                                      {"degree": 8, "degrees": (1, 2, 4, 5, 8)})
    assert degree_for("static-per-model", "wan-1.3b", cheap) == 1
    # the published profile: a 14B group of 8 holds 2 sessions, as many per GPU as one of 4: the smaller wins
    assert static_degree("wan-14b", model_degrees("wan-14b"), SimConfig.from_config()) == 4
    # the adaptive policy targets the same degree on a fleet of any size
    for cfg in (cheap, SimConfig.from_config()):
        for model in ("wan-1.3b", "wan-14b"):
            assert degree_for("adaptive", model, cfg) == degree_for("static-per-model", model, cfg)
