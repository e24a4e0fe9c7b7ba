"""The latency and start-up space of the experiments: the parametric profile, published
t1 figures, the shared flags, and trace files scaled to the cluster."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from experiments.commands import _add_trace_options, sim_config
from experiments.paper_table import load_traces, peak_gpus
from experiments.sim.config import SimConfig
from experiments.sim.latency import LatencySpec, linear_profile, published_t1
from experiments.sim.models import model_cost
from kernels.presets import PRESETS


def test_the_linear_profile_is_t1_times_one_plus_a_per_extra_session():
    for a in (0.1, 0.5, 1.0):
        m = linear_profile(0.344, a)
        for b in (1, 2, 5, 16):
            assert m.predict(b) == pytest.approx(0.344 * (1 + a * (b - 1)))
    with pytest.raises(ValueError, match="t1_s"):
        linear_profile(0.0, 0.1)
    with pytest.raises(ValueError, match="batch_cost"):
        linear_profile(0.3, -0.1)


def test_published_t1_comes_from_the_data_file_and_unknown_pairs_are_named():
    assert published_t1("wan-1.3b", "h100") == pytest.approx(0.344)
    assert published_t1("wan-1.3b", "GB200") == pytest.approx(0.203)
    with pytest.raises(ValueError, match="known"):
        published_t1("wan-1.3b", "a100")


def test_a_latency_spec_picks_the_profile_or_the_parametric_curve():
    assert LatencySpec().model_for("wan-1.3b").predict(1) == pytest.approx(0.7059)
    assert LatencySpec(batch_cost=1.0).model_for("wan-1.3b").predict(2) == pytest.approx(0.688)
    assert LatencySpec(batch_cost=0.1, t1_s=0.2).model_for("wan-1.3b").predict(11) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="not both"):
        LatencySpec(profile="tiny-cpu", batch_cost=0.1)
    with pytest.raises(ValueError, match="--batch-cost"):
        LatencySpec(t1_s=0.3)


def test_the_simulator_prices_state_as_the_kernel_presets_do():
    for name, preset in PRESETS.items():
        for h, w in ((preset.default_height, preset.default_width), (2 * preset.default_height, preset.default_width)):
            assert model_cost(name).state_bytes(h, w) == preset.state_bytes(h, w)


def _args(*argv):
    p = argparse.ArgumentParser()
    _add_trace_options(p)
    return p.parse_args(["--scenario", "steady", *argv])


def test_the_experiment_flags_build_the_simulator_config():
    cfg = sim_config(_args("--batch-cost", "0.5", "--t1-s", "0.3", "--startup-s", "10", "--quality-valve"))
    assert cfg.worker_startup_s == 10.0 and cfg.quality_valve
    assert cfg.latency == LatencySpec(t1_s=0.3, batch_cost=0.5)
    assert sim_config(_args()).latency == LatencySpec()
    with pytest.raises(SystemExit):
        _args("--batch-cost", "-1")
    with pytest.raises(ValueError, match="t1-s"):
        sim_config(_args("--t1-s", "0.3"))  # a t1 without a batch cost


def _trace(n_sessions: int, seed: int = 3) -> pd.DataFrame:
    """Sessions that overlap: each opens within the first minute and closes after 5 minutes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sessions):
        t = float(rng.uniform(0, 60))
        rows.append((t, f"s{i}", "open", "c0", "wan-1.3b", 12, 480, 832, 16))
        rows.append((t + 300.0, f"s{i}", "close", "c0", None, None, None, None, None))
    df = pd.DataFrame(rows, columns=["time_s", "session_id", "event", "client_id", "model", "chunk_frames",
                                     "height", "width", "fps"])
    return df.sort_values("time_s", kind="stable").reset_index(drop=True)


def test_scale_fit_thins_a_trace_file_until_its_peak_fits_the_cluster(tmp_path):
    from traces.io import write_trace

    path = tmp_path / "big.parquet"
    write_trace(_trace(400), path)
    cfg = SimConfig.from_config(latency=LatencySpec(batch_cost=1.0))  # b* = 2 at the 0.75 s SLO
    full_peak = peak_gpus(_trace(400), cfg)
    assert full_peak > 100
    (fitted,) = load_traces([str(path)], scale="fit", gpus=40, seed=0, config=cfg)
    assert fitted.name == "big" and 0 < fitted.scale < 1
    assert abs(peak_gpus(fitted.frame, cfg) - 40) <= 2
    sessions = set(fitted.frame["session_id"])
    assert sessions < set(_trace(400)["session_id"])  # whole sessions kept, none renamed
    # seeded: the same seed keeps the same sessions, another seed others
    (again,) = load_traces([str(path)], scale="fit", gpus=40, seed=0, config=cfg)
    (other,) = load_traces([str(path)], scale="fit", gpus=40, seed=1, config=cfg)
    assert set(again.frame["session_id"]) == sessions != set(other.frame["session_id"])
    (half,) = load_traces([str(path)], scale=0.5, seed=0, config=cfg)
    assert half.scale == 0.5 and 150 < half.frame["session_id"].nunique() < 250
