"""Importers turn the real traces in the shared data folder into valid session traces."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from traces.arrivals import arrivals
from traces.generator import generate
from traces.spec import ClientSpec, WorkloadSpec
from traces.importers import (
    DataNotFoundError,
    azure_requests,
    azure_trace,
    data_dir,
    mooncake_conversations,
    mooncake_trace,
    servegen_clients,
)
from traces.io import period_table, session_table, validate


@pytest.fixture(scope="module")
def data():
    try:
        return data_dir()
    except DataNotFoundError as exc:
        pytest.skip(f"shared trace data not available: {exc}")


def test_a_missing_data_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TURBOSERVE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="TURBOSERVE_DATA_DIR"):
        data_dir()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mooncake_trace()


def test_the_data_folder_can_be_given_explicitly(tmp_path):
    assert data_dir(tmp_path) == tmp_path
    with pytest.raises(DataNotFoundError, match="does not exist"):
        mooncake_trace(data_dir=tmp_path)


# --- Mooncake ------------------------------------------------------------------------------


def test_conversations_follow_the_longest_shared_prefix():
    hashes = [[0, 1, 2], [0, 3], [0, 1, 2, 4, 5], [0, 3, 6], [0, 7], [0, 1, 9]]
    # Block 0 (the shared system prompt) alone joins nothing; [0, 1] is shared by 0 and 5.
    assert mooncake_conversations(hashes).tolist() == [0, 1, 0, 1, 2, 0]
    assert mooncake_conversations(hashes, min_shared_blocks=3).tolist() == [0, 1, 0, 2, 3, 4]


def write_mooncake(folder, records):
    path = folder / "mooncake" / "conversation_trace.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_turns_become_active_bursts_and_gaps_become_idle(tmp_path):
    write_mooncake(tmp_path, [
        {"timestamp": 0, "output_length": 100, "hash_ids": [0, 1]},
        {"timestamp": 5000, "output_length": 10, "hash_ids": [0, 2]},
        {"timestamp": 30000, "output_length": 50, "hash_ids": [0, 1, 3]},
        {"timestamp": 32000, "output_length": 10, "hash_ids": [0, 1, 3, 4]},
    ])
    df = mooncake_trace(data_dir=tmp_path, seconds_per_token=0.1, linger_s=2.0)
    validate(df)
    periods = period_table(df)
    first = periods[periods["session_id"] == "mooncake-0"]
    # turn 1: 0-10 s; turn 3 at 30 s (5 s) and turn 4 at 32 s (1 s) overlap: 30-35 s.
    assert first[["state", "start_s", "end_s"]].values.tolist() == [
        ["active", 0.0, 10.0], ["idle", 10.0, 30.0], ["active", 30.0, 35.0], ["idle", 35.0, 37.0],
    ]
    table = session_table(df).set_index("session_id")
    assert table.loc["mooncake-1", "open_s"] == 5.0
    assert table.loc["mooncake-1", "close_s"] == pytest.approx(8.0)


def test_the_real_mooncake_trace_imports_as_valid_multi_turn_sessions(data):
    df = mooncake_trace(data_dir=data)
    validate(df)
    table = session_table(df)
    n_requests = sum(1 for _ in open(data / "mooncake" / "conversation_trace.jsonl"))
    assert 1000 < len(table) < n_requests  # turns are grouped into fewer sessions
    assert (table["n_active_periods"] >= 2).sum() > 100  # multi-turn sessions with idle gaps
    assert df["time_s"].max() == pytest.approx(3600.0, rel=0.05)


# --- ServeGen ------------------------------------------------------------------------------


def test_servegen_clients_carry_the_windows_of_their_files(data):
    clients = servegen_clients("language/m-large", data_dir=data)
    assert len(clients) == 162
    first = next(c for c in clients if c.client_id == "m-large-0")
    raw = pd.read_csv(data / "servegen/language/m-large/chunk-0-trace.csv", header=None)
    assert len(first.rate.rates) == len(raw)
    active = raw[3].notna().to_numpy()
    assert np.allclose(np.array(first.rate.rates)[active], raw[1].to_numpy()[active])
    assert all(r == 0 for r, a in zip(first.rate.rates, active) if not a)


def test_servegen_arrivals_follow_the_per_window_rates(data):
    (client,) = servegen_clients("language/m-large", data_dir=data, max_clients=1)
    spec = WorkloadSpec((client,), 6 * 3600.0)
    t = arrivals(client, spec, np.random.default_rng(0))
    hours = np.bincount((t // 3600).astype(int), minlength=6)
    expected = np.array(client.rate.rates[:36]).reshape(6, 6).sum(axis=1) * 600.0
    assert hours.sum() == pytest.approx(expected.sum(), rel=0.1)
    assert np.corrcoef(hours, expected)[0, 1] > 0.9


@pytest.mark.parametrize("dataset", ["multimodal/mm-image", "reason/deepseek-r1"])
def test_every_servegen_dataset_generates_a_valid_trace(data, dataset):
    clients = servegen_clients(dataset, ClientSpec("t"), data_dir=data)
    df = generate(WorkloadSpec(clients, 1800.0, total_rate=0.2, seed=1))
    validate(df)
    assert df["client_id"].nunique() > 3


# --- Azure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "code"])
def test_every_azure_request_opens_one_session(data, kind):
    requests = azure_requests(kind, data_dir=data)
    df = azure_trace(kind, data_dir=data)
    validate(df)
    opens = df.loc[df["event"] == "open", "time_s"].to_numpy()
    assert len(opens) == len(requests)
    assert np.allclose(np.sort(opens), requests["time_s"].to_numpy())


def test_azure_lifetimes_are_ranked_by_generated_tokens(data):
    requests = azure_requests("conv", data_dir=data)
    df = azure_trace("conv", data_dir=data, duration_s=1e7)  # nothing truncated
    table = session_table(df).sort_values("open_s", kind="stable")
    tokens = requests.sort_values("time_s", kind="stable")["generated"].to_numpy()
    # Spearman's rho: the correlation of the ranks.
    rho = pd.Series(tokens).rank().corr(pd.Series(table["duration_s"].to_numpy()).rank())
    assert rho > 0.95


def test_azure_share_thins_and_superposes_requests(data):
    n = len(azure_requests("code", data_dir=data))
    half = azure_trace("code", data_dir=data, share=0.5)
    double = azure_trace("code", data_dir=data, share=2.0)
    validate(double)
    assert half["session_id"].nunique() == pytest.approx(0.5 * n, rel=0.05)
    assert double["session_id"].nunique() == pytest.approx(2 * n, rel=0.05)


def test_unknown_azure_kind_is_refused(data):
    with pytest.raises(ValueError, match="unknown Azure trace kind 'chat'"):
        azure_requests("chat", data_dir=data)
