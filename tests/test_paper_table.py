"""The paper table, the sweep and the CLI commands, end to end on small traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.paper_table import ORACLE, POLICY_LABELS, paper_table, prepare_trace, run_trace, TraceInput
from experiments.results import CHUNK_COLUMNS, SUMMARY_COLUMNS

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]


def wan_trace(n: int = 12, seed: int = 0, horizon: float = 240.0) -> pd.DataFrame:
    """Sessions of the wan-1.3b preset (published-figure profile) with idle gaps."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = float(rng.uniform(0, horizon / 3))
        rows.append((t, f"s{i:02d}", "open", "c", "wan-1.3b", 12, 480, 832, 16))
        for _ in range(2):
            t += float(rng.exponential(30))
            rows.append((t, f"s{i:02d}", "idle", "c", None, None, None, None, None))
            t += float(rng.exponential(40))
            rows.append((t, f"s{i:02d}", "active", "c", None, None, None, None, None))
        rows.append((t + 20, f"s{i:02d}", "close", "c", None, None, None, None, None))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    summary = paper_table([("small", wan_trace())], gpus=6, out_dir=out, plots=False, echo=False)
    return summary, out


def test_paper_table_has_every_policy_and_the_oracle(table):
    summary, out = table
    assert list(summary["policy"]) == [*POLICY_LABELS, ORACLE]
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    assert (summary["gpus"] == 6).all()
    written = pd.read_csv(out / "summary.csv")
    assert list(written["policy"]) == list(summary["policy"])
    for policy in POLICY_LABELS:
        chunks = pd.read_parquet(out / "runs" / f"small__{policy}" / "chunks.parquet")
        assert list(chunks.columns) == list(CHUNK_COLUMNS) and len(chunks) > 0


def test_static_peak_pays_every_gpu_for_the_whole_trace_and_the_oracle_less(table):
    summary, _ = table
    by = summary.set_index("policy")
    horizon_h = wan_trace()["time_s"].max() / 3600
    assert by.loc["static-peak", "gpu_hours"] == pytest.approx(6 * horizon_h)
    assert by.loc[ORACLE, "gpu_hours"] <= by.loc["static-peak", "gpu_hours"] + 1e-9
    assert by.loc["static-peak", "migrations"] == 0 and by.loc["hpa+least-loaded", "migrations"] == 0


def test_turboserve_offloads_idle_sessions_and_the_baselines_do_not_unless_draining(table):
    summary, _ = table
    by = summary.set_index("policy")
    assert by.loc["turboserve", "offloads"] > 0
    assert by.loc["static-peak", "offloads"] == 0


def test_a_policy_triple_runs_with_the_paper_parameters():
    rows, chunks, _ = run_trace(TraceInput("t", wan_trace(6)), 4, policies=["round-robin+fixed+never"],
                                with_oracle=False)
    assert rows[0]["policy"] == "round-robin+fixed+never"
    assert rows[0]["gpu_hours"] == pytest.approx(4 * wan_trace(6)["time_s"].max() / 3600)


def test_a_prepared_trace_gives_the_rows_of_the_trace_itself():
    trace = TraceInput("t", wan_trace(8))
    prepared = prepare_trace(trace, 4)
    policies = ["turboserve", "hpa+least-loaded"]
    rows, _, _ = run_trace(trace, 4, policies=policies, record_chunks=False)
    again, _, _ = run_trace(prepared, 4, policies=policies, record_chunks=False)
    for row in rows + again:
        row.pop("sim_wall_s", None)
        row.pop("decide_ms_per_tick", None)  # timed, not simulated
    assert again == rows and rows[-1]["policy"] == ORACLE


def test_a_prepared_trace_refuses_another_cluster_or_latency_model():
    from experiments.sim.config import SimConfig

    prepared = prepare_trace(TraceInput("t", wan_trace(3)), 2)
    with pytest.raises(ValueError, match="prepared for gpus=2"):
        run_trace(prepared, 3, policies=["static-peak"])
    slower = SimConfig.from_config(worker_startup_s=prepared.config.worker_startup_s + 5)
    with pytest.raises(ValueError, match="prepare it with this config"):
        run_trace(prepared, 2, policies=["static-peak"], config=slower)
    valve = prepared.config.with_(quality_valve=not prepared.config.quality_valve)
    rows, _, _ = run_trace(prepared, 2, policies=["static-peak"], config=valve, with_oracle=False)
    assert rows[0]["policy"] == "static-peak"


def test_unknown_policy_is_refused_before_any_run():
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        run_trace(TraceInput("t", wan_trace(3)), 2, policies=["best"])


def test_cli_paper_table_and_replay(tmp_path, capsys):
    from experiments.commands import run_sim_replay
    from framework.cli import main

    trace_file = tmp_path / "t.parquet"
    wan_trace(6).to_parquet(trace_file)
    rc = main(["experiment", "paper-table", "--trace", str(trace_file), "--gpus", "4", "--out",
               str(tmp_path / "pt"), "--policy", "turboserve", "--no-plots"])
    assert rc == 0
    assert "turboserve" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "pt" / "summary.csv")["policy"]) == ["turboserve", ORACLE]
    assert main(["experiment", "paper-table", "--trace", str(tmp_path / "missing.parquet"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    row = run_sim_replay(wan_trace(6), "static-peak", tmp_path / "replay", gpus=3, plots=False)
    assert row["policy"] == "static-peak"
    assert list(pd.read_parquet(tmp_path / "replay" / "chunks.parquet").columns) == list(CHUNK_COLUMNS)


def test_sweep_runs_jobs_on_a_local_dask_cluster(tmp_path):
    from distributed import Client, LocalCluster

    from experiments.sweep import sweep, sweep_jobs

    trace_file = tmp_path / "t.parquet"
    wan_trace(6).to_parquet(trace_file)
    jobs = sweep_jobs([str(trace_file)], ["static-peak", "oracle"], gpus=[2, 3], seeds=[0])
    # In-process workers keep the test quick; the CLI's default is worker processes.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        table = sweep(jobs, client=client, out_dir=tmp_path / "sweep", progress=False, plots=False)
    assert len(table) == 4
    assert sorted(zip(table["policy"], table["gpus"])) == [("oracle", 2), ("oracle", 3), ("static-peak", 2),
                                                            ("static-peak", 3)]
    static = table[table["policy"] == "static-peak"].set_index("gpus")["gpu_hours"]
    assert static[3] == pytest.approx(1.5 * static[2])
    assert len(pd.read_csv(tmp_path / "sweep" / "summary.csv")) == 4


def test_a_trace_mixing_models_runs_one_gpu_pool_per_model():
    from experiments.sim.pools import share_gpus

    wan = wan_trace(6)
    tiny = wan_trace(6, seed=1).assign(session_id=lambda d: "t" + d["session_id"])
    tiny.loc[tiny["event"] == "open", ["model", "height", "width"]] = ["tiny", 64, 64]
    mixed = pd.concat([wan, tiny]).sort_values("time_s", kind="stable").reset_index(drop=True)
    rows, chunks, _ = run_trace(TraceInput("mixed", mixed), 5, policies=["static-peak"], with_oracle=False)
    (table,) = chunks.values()
    pools = {w.split("/")[0] for w in table["worker"]}
    assert pools == {"tiny", "wan-1.3b"}
    assert set(table.loc[table["session_id"].str.startswith("t"), "worker"].str.split("/").str[0]) == {"tiny"}
    assert rows[0]["gpu_hours"] == pytest.approx(5 * mixed["time_s"].max() / 3600)  # 5 GPUs split, all paid
    assert share_gpus(10, {"a": 3, "b": 1}) == {"a": 7, "b": 3}
    with pytest.raises(ValueError, match="cannot hold"):
        share_gpus(1, {"a": 1, "b": 1})
