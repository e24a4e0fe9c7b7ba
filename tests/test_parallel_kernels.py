"""The chunk step at degree k (Ulysses by heads) gives the frames of degree 1.

The ranks are spawned processes joined in a gloo group on the CPU, each with the same
``tiny`` weights; the reference is the plain degree-1 model in this process. fp32 on
the CPU: the states agree to rounding (``allclose``) and the frames within one uint8
level. Under the ``gpu`` marker the same runs at degrees 2 and 4 on CUDA.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from kernels.model import StreamingVideoModel
from kernels.parallel import ParallelModel, connect_group, layout, merge_shards, reshard_bytes, shard_state
from kernels.ulysses import check_degree, token_splits
from workers.p2p_group import free_port

JOIN_TIMEOUT_S = 120.0
PROMPTS = (("a red fox running through snow", 0), ("waves at dusk", 1))


def _model(preset: str = "tiny", device: str = "cpu", height: int | None = None) -> StreamingVideoModel:
    return StreamingVideoModel.from_preset(preset, device=device, weights_seed=0, num_threads=1)


def _to_numpy(state) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.tensors.items()}


def scenario_degree1(preset: str, device: str, size: int | None) -> tuple[list[list[np.ndarray]], list]:
    """The reference: session A alone for 2 chunks, then A and B batched for 3 chunks."""
    model = _model(preset, device)
    a = model.new_session(PROMPTS[0][0], PROMPTS[0][1], height=size, width=size)
    b = model.new_session(PROMPTS[1][0], PROMPTS[1][1], height=size, width=size)
    frames = [model.step([a])[0] for _ in range(2)]
    pairs = [model.step([a, b]) for _ in range(3)]
    return [frames, [p[0] for p in pairs], [p[1] for p in pairs]], [a, b]


def rank_main(rank: int, degree: int, port: int, preset: str, device: str, size: int | None) -> dict:
    """One rank: A's first 2 chunks at degree 1 (on the leader), then A and B at ``degree``.

    Every rank builds the degree-1 state itself (generation is deterministic) and keeps
    its shard: the kernel-level version of a merge at a chunk boundary.
    """
    torch.set_num_threads(1)
    if device == "cuda":
        device = f"cuda:{rank % torch.cuda.device_count()}"
    model = _model(preset, device)
    backend = "nccl" if device.startswith("cuda") and torch.cuda.device_count() >= degree else "gloo"
    group = connect_group(
        "127.0.0.1", port, rank, degree, backend=backend, group_id="test", timeout_s=JOIN_TIMEOUT_S,
        device=torch.device(device) if backend == "nccl" else None,
    )
    a = model.new_session(PROMPTS[0][0], PROMPTS[0][1], height=size, width=size)
    b = model.new_session(PROMPTS[1][0], PROMPTS[1][1], height=size, width=size)
    first = [model.step([a])[0] for _ in range(2)]
    pm = ParallelModel(model, group, rank, degree, timeout_s=JOIN_TIMEOUT_S)
    sa, sb = shard_state(a, rank, degree), shard_state(b, rank, degree)
    pairs = [pm.step([sa, sb]) for _ in range(3)]
    return {
        "first": first,
        "a": [p[0] for p in pairs],
        "b": [p[1] for p in pairs],
        "shards": [_to_numpy(sa), _to_numpy(sb)],
        "chunk": (sa.chunk_index, sb.chunk_index),
        "layout": layout(sa),
        "bytes_sent": pm.exchange.bytes_sent,
        "pid": os.getpid(),
    }


def run_ranks(degree: int, preset: str = "tiny", device: str = "cpu", size: int | None = None,
              pool: cf.ProcessPoolExecutor | None = None) -> list[dict]:
    """The ranks' results, each rank in its own spawned process (``pool``: ``degree`` of them, idle)."""
    if pool is None:
        with cf.ProcessPoolExecutor(max_workers=degree, mp_context=mp.get_context("spawn")) as own:
            return run_ranks(degree, preset, device, size, own)
    port = free_port()
    futures = [pool.submit(rank_main, r, degree, port, preset, device, size) for r in range(degree)]
    return [f.result(timeout=600) for f in futures]


@pytest.fixture(scope="module")
def two_ranks():
    """Two spawned processes for the gloo tests of this module: each test forms a new group
    over them (torch and the model load once, not once per test)."""
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        yield pool


def assert_frames_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == np.uint8, f"chunk {i}: {g.shape} {g.dtype}"
        diff = np.abs(g.astype(np.int16) - w.astype(np.int16)).max()
        assert diff <= 1, f"chunk {i}: frames differ by {diff} uint8 levels (at most 1 allowed)"


def check_against_degree1(results: list[dict], preset: str, device: str, size: int | None, atol: float) -> None:
    degree = len(results)
    (first, want_a, want_b), (a, b) = scenario_degree1(preset, device, size)
    lead = results[0]
    assert_frames_close(lead["first"], first)
    assert_frames_close(lead["a"], want_a)
    assert_frames_close(lead["b"], want_b)
    for r, res in enumerate(results):
        assert res["layout"] == (r, degree)
        assert res["chunk"] == (5, 3)
        if r:
            assert all(f.size == 0 for f in res["a"] + res["b"]), "followers decode nothing"
            assert res["bytes_sent"] > 0
    assert len({res["pid"] for res in results}) == degree
    for which, ref in ((0, a), (1, b)):
        for name, want in ref.tensors.items():
            if name.startswith("kv."):
                got = np.concatenate([res["shards"][which][name] for res in results])
            elif name.startswith("vae."):
                got = lead["shards"][which][name]
                assert all(name not in res["shards"][which] for res in results[1:]), "VAE cache only on the leader"
            else:
                got = lead["shards"][which][name]
            np.testing.assert_allclose(got, want.cpu().numpy(), atol=atol, rtol=1e-4, err_msg=name)


# ------------------------------------------------------------------ the layout, in process


def test_shards_hold_heads_of_the_kv_cache_and_merge_back_bit_for_bit():
    model = _model()
    s = model.new_session("fox", 3)
    model.step([s])
    shards = [shard_state(s, r, 2) for r in range(2)]
    heads = model.preset.num_heads
    assert [sh.tensors["kv.0.k"].shape[0] for sh in shards] == [heads // 2] * 2
    assert "vae.0" in shards[0].tensors and not any(k.startswith("vae.") for k in shards[1].tensors)
    assert [layout(sh) for sh in shards] == [(0, 2), (1, 2)]
    assert merge_shards(shards).equal(s)


def test_reshard_moves_half_the_kv_cache_at_degree_2_and_no_vae():
    model = _model()
    s = model.new_session("fox", 3)
    model.step([s])
    kv = sum(t.nbytes for n, t in s.tensors.items() if n.startswith("kv."))
    small = s.tensors["prompt_embeds"].nbytes + s.tensors["rng"].nbytes
    assert reshard_bytes(s, 2) == kv // 2 + small
    assert reshard_bytes(s, 1) == 0


def test_bad_layouts_and_degrees_are_refused_with_what_to_do():
    model = _model()
    s = model.new_session("fox", 3)
    with pytest.raises(ValueError, match=r"does not divide the model's 2 attention heads.*\[1, 2\]"):
        ParallelModel(model, None, 0, 3)
    with pytest.raises(ValueError, match="positive integer"):
        check_degree(2, 0)
    shard = shard_state(s, 1, 2)
    with pytest.raises(ValueError, match="merge it first"):
        shard_state(shard, 0, 2)
    with pytest.raises(ValueError, match="rank order"):
        merge_shards([shard, shard_state(s, 0, 2)])
    with pytest.raises(ValueError, match="re-shard it"):
        ParallelModel(model, None, 0, 1).step([shard])


def test_token_splits_cover_the_chunk_in_contiguous_near_equal_slices():
    assert token_splits(48, 2) == [24, 24]
    assert token_splits(7, 3) == [3, 2, 2]
    assert sum(token_splits(4680, 8)) == 4680


def test_degree_1_is_the_plain_model_bit_for_bit():
    ref, par = _model(), _model()
    a, b = ref.new_session("fox", 1), par.new_session("fox", 1)
    pm = ParallelModel(par, None, 0, 1)
    for _ in range(2):
        assert np.array_equal(ref.step([a])[0], pm.step([b])[0])
    assert a.equal(b)


# ------------------------------------------------------------------ across processes


@pytest.mark.parametrize("size", [None, 80], ids=["64px-48-tokens", "80px-75-tokens-uneven"])
def test_degree_2_over_two_gloo_processes_matches_degree_1(size, two_ranks):
    results = run_ranks(2, size=size, pool=two_ranks)
    check_against_degree1(results, "tiny", "cpu", size, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("degree", [2, 4])
def test_degree_k_on_cuda_matches_degree_1(degree):
    # wan-1.3b geometry (12 heads: degrees 2 and 4 divide it) at a small resolution.
    results = run_ranks(degree, "wan-1.3b", "cuda", 128)
    check_against_degree1(results, "wan-1.3b", "cuda", 128, atol=5e-3)
