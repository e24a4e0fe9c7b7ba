"""`turboserve replay --backend sim` and the simulated side of the live/sim comparison:
same output folder and columns as every replay, trace seconds throughout."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import framework.config  # noqa: F401  (turboserve defaults before any dask.config.set)
from experiments.parity import compare, decision_counts
from experiments.replay_common import burst_trace
from experiments.sim_replay import replay_sim
from experiments.replay_profiles import migration_stall_from_chunks
from experiments.results import CHUNK_COLUMNS, INTERVAL_COLUMNS, SUMMARY_COLUMNS
from framework.cli import main
from traces.io import validate, write_trace

PROFILE = ((1, 0.2), (2, 0.3), (8, 0.9))  # wall seconds per step, by batch size


def test_burst_trace_is_a_valid_trace():
    trace = burst_trace(base=2, burst=3)
    validate(trace)
    assert (trace["event"] == "open").sum() == 5
    assert trace.groupby("session_id")["event"].last().eq("close").all()


def test_step_times_are_scaled_into_trace_seconds():
    trace = burst_trace(base=1, burst=0, tail_s=30)
    one = replay_sim(trace, time_scale=1, workers=1, profile=PROFILE)
    five = replay_sim(trace, time_scale=5, workers=1, profile=PROFILE)
    # one session alone on its worker: every chunk after the first takes one batch-1 step
    assert one.chunks["latency_s"].iloc[1:].round(9).eq(0.2).all()
    assert five.chunks["latency_s"].iloc[1:].round(9).eq(1.0).all()


def test_sim_replay_scales_out_for_the_burst_and_in_after_it():
    trace = burst_trace(base=1, burst=3, burst_at_s=10, burst_len_s=80, tail_s=120)
    result = replay_sim(trace, time_scale=5, workers=1, profile=PROFILE, startup_s=2,
                        control={"maximum": 3, "slo_s": 0.5, "autoscaling_params": {"downscale_delay_s": 20}})
    counts = decision_counts(result)
    assert counts["peak workers"] == 3 and counts["final workers"] == 1
    assert counts["scale-ups"] >= 1 and counts["workers retired"] == 2
    assert counts["sessions served"] == 4
    table = compare(result, result).set_index("metric")
    assert (table.loc[["chunks", "gpu_hours"], "diff"] == 0).all()


def test_cli_replay_sim_writes_the_contract_outputs(tmp_path, capsys):
    trace_path = tmp_path / "burst.parquet"
    write_trace(burst_trace(base=1, burst=2, burst_at_s=5, burst_len_s=20, tail_s=20), trace_path)
    out = tmp_path / "out"
    rc = main(["--config", "engine.max-batch=2", "replay", str(trace_path), "--backend", "sim", "--out", str(out),
               "--time-scale", "4", "--workers", "1", "--seed", "3"])
    assert rc == 0
    assert "sim:" in capsys.readouterr().out
    assert tuple(pd.read_parquet(out / "chunks.parquet").columns) == CHUNK_COLUMNS
    assert tuple(pd.read_parquet(out / "intervals.parquet").columns) == INTERVAL_COLUMNS
    summary = pd.read_csv(out / "summary.csv")
    assert tuple(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert summary.loc[0, "backend"] == "sim" and summary.loc[0, "trace"] == "burst"
    assert set(pd.read_parquet(out / "decisions.parquet")["action"]) >= {"Place"}
    profile = pd.read_csv(out / "profile.csv")
    assert list(profile["batch_size"]) == sorted(profile["batch_size"]) and (profile["step_s"] > 0).all()
    assert (out / "config.yaml").read_text().count("time_scale: 4") == 1


def test_cli_replay_of_a_missing_trace_is_an_error(tmp_path, capsys):
    rc = main(["replay", str(tmp_path / "nope.parquet"), "--backend", "sim", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_time_scale_must_be_positive():
    with pytest.raises(ValueError, match="time-scale"):
        replay_sim(burst_trace(), time_scale=0, profile=PROFILE)


def _chunk(sid, index, latency, migrated=False):
    return (sid, index, 0.0, 0.0, latency, latency, "w", 1, migrated)


def test_migration_stall_is_the_migrated_chunks_excess_over_their_sessions_usual_latency():
    rows = [_chunk("a", 0, 9.0)] + [_chunk("a", i, 1.0) for i in range(1, 5)] + [_chunk("a", 5, 4.0, True)]
    rows += [_chunk("b", i, 2.0) for i in range(1, 4)] + [_chunk("b", 4, 7.0, True)]
    rows += [_chunk("c", 1, 3.0)] + [_chunk("c", 2, 5.5, True)]
    chunks = pd.DataFrame(rows, columns=list(CHUNK_COLUMNS))
    # stalls 4-1=3, 7-2=5, 5.5-3=2.5 (the slow first chunk of "a" is not its usual latency)
    assert migration_stall_from_chunks(chunks) == pytest.approx(3.0)


def test_migration_stall_is_nan_without_migrations_and_never_negative():
    still = pd.DataFrame([_chunk("a", i, 1.0) for i in range(4)], columns=list(CHUNK_COLUMNS))
    assert math.isnan(migration_stall_from_chunks(still))
    faster = pd.DataFrame([_chunk("a", 1, 1.0), _chunk("a", 2, 0.5, True)], columns=list(CHUNK_COLUMNS))
    assert migration_stall_from_chunks(faster) == 0.0


def test_sim_replay_charges_the_measured_migration_stall_in_trace_seconds():
    trace = burst_trace(base=1, burst=3, burst_at_s=10, burst_len_s=80, tail_s=120)
    kwargs = {"time_scale": 5, "workers": 1, "profile": PROFILE, "startup_s": 2,
              "control": {"maximum": 3, "slo_s": 0.5, "autoscaling_params": {"downscale_delay_s": 20},
                          "placement_params": {"min_gain": 0.01}}}
    free = replay_sim(trace, **kwargs)
    stalled = replay_sim(trace, migration_s=1.5, **kwargs)
    assert stalled.summary["migration_s"] == pytest.approx(1.5) and free.summary["migration_s"] == 0.0
    moved = stalled.chunks[stalled.chunks["migrated"]]
    assert len(moved) >= 1
    d = stalled.decisions
    moves = d[(d["action"] == "Migrate") & d["accepted"].astype(bool)]
    for _, chunk in moved.iterrows():
        moved_at = moves.loc[(moves["session_id"] == chunk["session_id"])
                             & (moves["time_s"] <= chunk["t_request_s"]), "time_s"].max()
        # the copy starts at the move (or when its chunk in flight ends), then 1.5 wall s = 7.5 trace s
        assert chunk["t_start_s"] >= moved_at + 7.5 - 1e-9
    assert stalled.summary["max_latency_s"] > free.summary["max_latency_s"]


def test_migration_stall_with_decisions_runs_from_the_copy_start_to_the_chunk_start():
    #               sid  index request start  done  latency worker batch migrated
    rows = [("a", 0, 0.0, 0.0, 1.0, 1.0, "w0", 1, False), ("a", 1, 3.0, 3.0, 4.0, 1.0, "w0", 1, False),
            ("a", 2, 6.0, 6.0, 7.0, 1.0, "w0", 1, False),
            # moved at 7.5, asked at 9.0, started only at 12.0: the copy took 12.0 - 7.5
            ("a", 3, 9.0, 12.0, 13.0, 4.0, "w1", 1, True)]
    chunks = pd.DataFrame(rows, columns=list(CHUNK_COLUMNS))
    decisions = pd.DataFrame([(7.5, "Migrate", "a", "w1", True, "rebalance"), (8.0, "Migrate", "a", "w2", False, "no")],
                             columns=["time_s", "action", "session_id", "worker", "accepted", "reason"])
    assert migration_stall_from_chunks(chunks, decisions) == pytest.approx(4.5)
    assert migration_stall_from_chunks(chunks) == pytest.approx(3.0)  # latency 4 - usual 1


def test_the_replay_keys_are_declared_with_the_other_defaults():
    """``--config replay.profile=...`` / ``replay.startup-s=...`` are keys of framework/turboserve.yaml (null: not given)."""
    from framework import config

    assert config.DEFAULTS["turboserve"]["replay"] == {"profile": None, "startup-s": None}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_replay_counts_the_resumes_a_request_wakes_not_only_the_loops(tmp_path):
    """A suspended session that streams again is resumed by its own request (no Resume
    decision): the live summary counts it, as the simulator counts a placed host state."""
    import dask

    from experiments.live_replay import replay_live

    rows = [(0.0, "s0", "open"), (6.0, "s0", "idle"), (30.0, "s0", "active"), (36.0, "s0", "close")]
    trace = pd.DataFrame(rows, columns=["time_s", "session_id", "event"])
    trace["client_id"], trace["model"] = "c0", "tiny"
    first = trace["event"] == "open"
    for col, value in (("chunk_frames", 12), ("height", 64), ("width", 64), ("fps", 4)):
        trace[col] = pd.array([value if f else pd.NA for f in first], dtype="Int64")
    validate(trace)
    with dask.config.set({"turboserve.control.idle-offload-s": 2, "turboserve.state.store": str(tmp_path)}):
        result = replay_live(trace, time_scale=3, workers=1, seed=0, progress=False, profile=PROFILE,
                             control={"maximum": 1})
    decisions = result.decisions[result.decisions["accepted"]]
    assert (decisions["action"] == "Offload").sum() >= 1, decisions.to_string()
    assert (decisions["action"] == "Resume").sum() == 0
    assert result.summary["resumes"] >= 1, result.summary
    chunks = result.chunks
    assert list(chunks["index"]) == list(range(len(chunks)))  # the stream goes on where it stopped
