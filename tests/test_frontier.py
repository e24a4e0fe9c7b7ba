"""Cost-tail frontiers: the dominance and headline computations on hand-made points,
and a small frontier run end to end (in this process: no cluster)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from experiments.headline import (
    cost_at_tail,
    covers,
    headline,
    mean_ci,
    pareto,
    tail_at_cost,
    uncovered,
)

# ---------------------------------------------------------------- pure computations

T = [(10.0, 1.0), (8.0, 2.0), (12.0, 0.9), (9.0, 2.5)]  # (gpu_hours, tail)


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both_axes():
    assert pareto(T) == [(8.0, 2.0), (10.0, 1.0), (12.0, 0.9)]
    assert pareto([(1.0, float("nan")), (2.0, 1.0)]) == [(2.0, 1.0)]


def test_equal_cost_and_equal_tail_read_the_frontier_as_a_step_function():
    assert tail_at_cost(T, 10.0) == 1.0
    assert tail_at_cost(T, 9.99) == 2.0  # no interpolation towards (10, 1.0)
    assert math.isnan(tail_at_cost(T, 7.0))  # nothing that cheap
    assert cost_at_tail(T, 1.0) == 10.0
    assert cost_at_tail(T, 0.95) == 12.0
    assert math.isnan(cost_at_tail(T, 0.5))  # nothing that good


def test_a_point_is_covered_only_by_one_at_most_as_costly_and_at_most_as_slow():
    assert covers(T, (10.0, 1.0))
    assert covers(T, (11.0, 1.5))
    assert not covers(T, (7.5, 5.0))  # cheaper than all of T
    assert not covers(T, (20.0, 0.5))  # better tail than all of T
    assert uncovered(T, [(11.0, 1.5), (7.5, 5.0), (20.0, 0.5)]) == [(7.5, 5.0), (20.0, 0.5)]


def test_mean_ci_is_a_student_t_interval():
    mean, lo, hi, n = mean_ci([0.1, 0.2, 0.3])
    assert n == 3 and mean == pytest.approx(0.2)
    half = 4.303 * np.std([0.1, 0.2, 0.3], ddof=1) / math.sqrt(3)
    assert (lo, hi) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert mean_ci([float("nan")])[3] == 0
    assert math.isnan(mean_ci([0.5])[1])


def _rows(policy, points, trace="t", seed=0):
    return [{"trace": trace, "seed": seed, "policy": policy, "knob": k, "gpu_hours": c, "instream_max_s": m}
            for k, (c, m) in points]


def test_headline_compares_each_baseline_at_its_standard_knob_over_traces_and_seeds():
    rows = []
    for seed in (0, 1):
        rows += _rows("turboserve", [(0.8, (8.0, 1.0)), (1.0, (10.0, 0.5))], seed=seed)
        # HPA's standard point (knob 0.8) costs 10 for a worst case of 1.0
        rows += _rows("hpa", [(0.8, (10.0, 1.0)), (1.0, (7.0, 3.0))], seed=seed)
    frame = pd.DataFrame(rows)
    head = headline(frame, "turboserve", {"hpa": 0.8})
    (row,) = head.to_dict("records")
    # at HPA's cost (10) TurboServe's worst case is 0.5: a 50% reduction; at HPA's worst
    # case (1.0) TurboServe costs 8: 20% cheaper
    assert row["tail_reduction"] == pytest.approx(0.5)
    assert row["cost_reduction"] == pytest.approx(0.2)
    assert row["n_tail"] == row["n_cost"] == 2
    # HPA at knob 1.0 (7 GPU-h) is cheaper than any TurboServe point: not covered
    assert (row["uncovered_points"], row["points"]) == (2, 4)


def test_a_cost_reduction_bought_with_admission_waits_is_reported_apart():
    # TurboServe's cheap point (7 GPU-h) makes new sessions wait 40 s for a slot; its
    # 9 GPU-h point admits as fast as HPA's standard point (TTFC p99 5 s).
    rows = [
        {"trace": "t", "seed": 0, "policy": "turboserve", "knob": 1.25, "gpu_hours": 7.0, "instream_max_s": 0.8,
         "ttfc_p99_s": 40.0, "resume_wait_p99_s": 1.0},
        {"trace": "t", "seed": 0, "policy": "turboserve", "knob": 1.0, "gpu_hours": 9.0, "instream_max_s": 0.8,
         "ttfc_p99_s": 4.0, "resume_wait_p99_s": float("nan")},  # nothing resumed: no wait
        {"trace": "t", "seed": 0, "policy": "hpa", "knob": 0.8, "gpu_hours": 10.0, "instream_max_s": 1.0,
         "ttfc_p99_s": 5.0, "resume_wait_p99_s": 1.0},
    ]
    (row,) = headline(pd.DataFrame(rows), "turboserve", {"hpa": 0.8},
                      admission=("ttfc_p99_s", "resume_wait_p99_s")).to_dict("records")
    assert row["cost_reduction"] == pytest.approx(0.3)  # 7 vs 10: the tail alone
    assert row["cost_reduction_same_admission"] == pytest.approx(0.1)  # 9 vs 10
    # and without any point that admits as fast, the pair is undefined, not flattering
    rows[1]["ttfc_p99_s"] = 6.0
    (row,) = headline(pd.DataFrame(rows), "turboserve", {"hpa": 0.8},
                      admission=("ttfc_p99_s", "resume_wait_p99_s")).to_dict("records")
    assert math.isnan(row["cost_reduction_same_admission"]) and row["same_admission_undefined"] == 1


def test_headline_leaves_out_pairs_where_turboserve_has_no_comparable_point():
    frame = pd.DataFrame(_rows("turboserve", [(1.0, (10.0, 2.0))]) + _rows("static", [(1.0, (9.0, 1.0))]))
    (row,) = headline(frame, "turboserve", {"static": 1.0}).to_dict("records")
    assert math.isnan(row["tail_reduction"]) and row["tail_undefined"] == 1
    assert math.isnan(row["cost_reduction"]) and row["cost_undefined"] == 1


# ---------------------------------------------------------------- end to end


def test_a_small_frontier_writes_its_tables_and_plot(tmp_path):
    from experiments.frontier import FRONTIER_COLUMNS, frontier
    from experiments.sim.config import SimConfig
    from experiments.sim.latency import LatencySpec

    cfg = SimConfig.from_config(latency=LatencySpec(batch_cost=0.5), worker_startup_s=10.0)
    table, head = frontier(["steady"], gpus=3, seeds=[0], out_dir=tmp_path, config=cfg, duration_s=120.0, scale=0.05,
                           families=["static", "turboserve"], n_workers=0, progress=False)
    assert list(table.columns[: len(FRONTIER_COLUMNS)]) == list(FRONTIER_COLUMNS)
    assert set(table["policy"]) == {"static", "turboserve", "static-iso-cost", "oracle"}
    assert (table["gpu_hours"] > 0).all()
    runs = table[table["policy"] != "oracle"]
    assert (runs["chunks"] > 0).all()
    oracle = table[table["policy"] == "oracle"]
    assert len(oracle) == 1 and oracle["gpu_hours"].iloc[0] > 0  # the cost bound (of SLO-meeting policies)
    assert set(head["baseline"]) == {"static", "static-iso-cost"}
    for name in ("frontier.csv", "headline.csv", "frontier.png", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    again = pd.read_csv(tmp_path / "frontier.csv")
    assert len(again) == len(table)


def test_the_iso_cost_run_follows_turboserve_and_dask_gives_the_rows_run_here():
    """Each (trace, seed) gets a static run at TurboServe's mean GPU count (its standard
    knob), sent once that run is done; on a local Dask cluster the rows are those run
    in this process."""
    from experiments.frontier import FAMILIES, ISO_COST, REFERENCE, frontier
    from experiments.sim.config import SimConfig
    from experiments.sim.latency import LatencySpec

    cfg = SimConfig.from_config(latency=LatencySpec(batch_cost=0.5), worker_startup_s=10.0)
    kw = dict(gpus=4, seeds=[0, 1], config=cfg, duration_s=120.0, scale=0.08, families=["static", "turboserve"],
              progress=False)
    here, _ = frontier(["steady"], n_workers=0, **kw)
    on_dask, _ = frontier(["steady"], n_workers=1, **kw)
    for seed in (0, 1):
        rows = here[here["seed"] == seed]
        std = rows[(rows["policy"] == REFERENCE) & (rows["knob"] == FAMILIES[REFERENCE].default)]
        iso = rows[rows["policy"] == ISO_COST]
        hours = 120.0 / 3600.0
        mean_gpus = std["gpu_hours"].iloc[0] / hours
        assert len(iso) == 1 and iso["knob"].iloc[0] == pytest.approx(max(1, round(mean_gpus)) / 4, abs=1e-4)
    key = ["trace", "policy", "knob", "seed", "valve"]
    cols = [c for c in here.columns if c != "sim_wall_s"]
    a = here[cols].sort_values(key).reset_index(drop=True)
    b = on_dask[cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_a_frontier_measured_from_a_later_second_costs_and_counts_only_that_window():
    """``measure_from_s``: the same runs, summarised over [W, end]; the iso-cost run sits
    at TurboServe's mean GPU count over that window, and the oracle covers it too."""
    from experiments.frontier import FAMILIES, ISO_COST, REFERENCE, frontier
    from experiments.sim.config import SimConfig
    from experiments.sim.latency import LatencySpec

    cfg = SimConfig.from_config(latency=LatencySpec(batch_cost=0.5), worker_startup_s=10.0)
    kw = dict(gpus=4, seeds=[0], duration_s=120.0, scale=0.08, families=["static", "turboserve"], n_workers=0,
              progress=False)
    whole, _ = frontier(["steady"], config=cfg, **kw)
    late, _ = frontier(["steady"], config=cfg.with_(measure_from_s=60.0), **kw)
    key = ["policy", "knob"]
    w = whole[whole["policy"] != ISO_COST].set_index(key).sort_index()
    l_ = late[late["policy"] != ISO_COST].set_index(key).sort_index()
    assert (l_["gpu_hours"] < w["gpu_hours"]).all()
    runs = l_.drop(index="oracle", level="policy")
    assert (runs["chunks"] > 0).all() and runs["instream_max_s"].notna().all()  # frontier runs keep no chunk rows
    assert (runs["chunks"] < w.drop(index="oracle", level="policy")["chunks"]).all()
    assert (runs["measure_from_s"] == 60.0).all()
    static_full = l_.loc[("static", 1.0), "gpu_hours"]
    assert static_full == pytest.approx(4 * 60.0 / 3600.0)  # 4 GPUs held over the last minute
    std = late[(late["policy"] == REFERENCE) & (late["knob"] == FAMILIES[REFERENCE].default)]
    iso = late[late["policy"] == ISO_COST]
    mean_gpus = std["gpu_hours"].iloc[0] / (60.0 / 3600.0)
    assert iso["knob"].iloc[0] == pytest.approx(max(1, round(mean_gpus)) / 4, abs=1e-4)


def test_turboserve_without_the_valve_is_turboserve_with_the_valve_off():
    from experiments.frontier import NO_VALVE, REFERENCE, _family_of, _policy_set
    from experiments.paper_table import policy_sets

    sets = policy_sets(8, new_session_bytes=1, worker_memory=10, max_batch=4)
    with_valve = _policy_set(_family_of(REFERENCE), 0.9, "idle-timeout", sets, 8)
    without = _policy_set(_family_of(NO_VALVE), 0.9, "idle-timeout", sets, 8)
    assert without.name == NO_VALVE
    assert (without.placement, without.autoscaling, without.offload) == (
        with_valve.placement, with_valve.autoscaling, with_valve.offload)
    with pytest.raises(ValueError, match="unknown policy family"):
        _family_of("nope")


def test_an_oracle_only_frontier_has_one_oracle_row_per_trace_and_seed(tmp_path):
    from experiments.frontier import FRONTIER_COLUMNS, frontier
    from experiments.sim.config import SimConfig
    from experiments.sim.latency import LatencySpec

    cfg = SimConfig.from_config(latency=LatencySpec(batch_cost=1.0))
    table, head = frontier(["steady"], gpus=3, seeds=[0, 1], config=cfg, duration_s=120.0, scale=0.05,
                           families=["oracle"], n_workers=0, progress=False)
    assert list(table.columns[: len(FRONTIER_COLUMNS)]) == list(FRONTIER_COLUMNS)
    assert list(table["policy"]) == ["oracle", "oracle"] and sorted(table["seed"]) == [0, 1]
    assert head.empty
