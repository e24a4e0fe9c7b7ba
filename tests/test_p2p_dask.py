"""A state migrates between two Dask workers of a real LocalCluster over the gloo p2p path.

This is how the runtime uses :mod:`workers.p2p`: one task per end, pinned to its worker
with ``workers=[address]``, both running at the same time.
"""

from __future__ import annotations

import pytest
import torch
from distributed import Client, LocalCluster

from kernels.state import SessionState
from workers.p2p import recv_state, send_state
from workers.p2p_group import Rendezvous


def build_state(seed: int) -> SessionState:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeds": torch.randn(16, 32, generator=g),
        "kv.0.k": torch.randn(4, 64, 16, generator=g).bfloat16(),
        "kv.0.v": torch.randn(4, 64, 16, generator=g).bfloat16(),
        "rng": torch.randint(0, 256, (5056,), dtype=torch.uint8, generator=g),
        "positions": torch.arange(64, dtype=torch.int64),
    }
    return SessionState("tiny", "a fox", seed, 64, 64, 2, tensors, {"cache_len": 64})


def send_built(seed: int, rdv: Rendezvous) -> int:
    return send_state(build_state(seed), rendezvous=rdv, timeout=30).nbytes


def recv_and_check(seed: int, rdv: Rendezvous) -> bool:
    return recv_state(rendezvous=rdv, device="cpu", timeout=30).equal(build_state(seed))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.mark.parametrize("seed", [0, 1])  # two migrations in a row on the same workers
def test_state_migrates_between_dask_workers_bit_exact(client, seed):
    a, b = sorted(client.scheduler_info()["workers"])
    host = a.split("://")[1].rsplit(":", 1)[0]
    rdv = client.submit(Rendezvous.new, "gloo", host=host, workers=[a], pure=False).result()
    sent = client.submit(send_built, seed, rdv, workers=[a], pure=False)
    checked = client.submit(recv_and_check, seed, rdv, workers=[b], pure=False)
    assert checked.result(timeout=60) is True
    assert sent.result(timeout=60) == build_state(seed).nbytes
