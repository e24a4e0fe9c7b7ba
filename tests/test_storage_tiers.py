"""Tiers: offload to (pinned) host memory and restore to a device keep the state exact."""

from __future__ import annotations

import pytest
import torch

from storage import SessionState, Tier, is_pinned, offload_to_host, restore_to_device, tier_of


def make_state() -> SessionState:
    gen = torch.Generator().manual_seed(0)
    return SessionState(
        model="tiny",
        prompt="p",
        seed=0,
        height=64,
        width=64,
        chunk_index=2,
        tensors={
            "kv.0.k": torch.randn(2, 16, 8, generator=gen).to(torch.bfloat16),
            "vae.0": torch.randn(1, 3, 4, 4, generator=gen).half(),
            "rng": torch.Generator().manual_seed(0).get_state(),
        },
        scalars={"cached_tokens": 16},
    )


def test_a_cpu_state_is_on_the_host_tier() -> None:
    assert tier_of(make_state()) is Tier.HOST
    assert Tier.HOST.in_memory and Tier.DEVICE.in_memory and not Tier.DISK.in_memory


def test_offloading_a_host_state_is_a_no_op_that_keeps_the_tensors() -> None:
    state = make_state()
    assert offload_to_host(state) is state
    assert state.equal(make_state())


def test_restore_to_the_cpu_device_round_trips_exactly() -> None:
    state = make_state()
    restored = restore_to_device(offload_to_host(state), "cpu")
    assert restored.equal(make_state())
    assert restored.device == torch.device("cpu")


def test_not_pinned_without_cuda_or_tensors() -> None:
    assert not is_pinned(make_state().with_tensors({}))
    if not torch.cuda.is_available():
        assert not is_pinned(make_state())


@pytest.mark.gpu
def test_offload_from_gpu_goes_to_pinned_memory_and_frees_the_device_record() -> None:
    on_gpu = make_state().to("cuda")
    assert tier_of(on_gpu) is Tier.DEVICE
    host = offload_to_host(on_gpu)
    assert tier_of(host) is Tier.HOST and is_pinned(host)
    assert on_gpu.tensors == {}  # released: the old record no longer holds device memory
    assert host.equal(make_state())
    back = restore_to_device(host, "cuda", non_blocking=True)
    assert back.device.type == "cuda"
    assert back.equal(make_state())
    assert restore_to_device(back, "cuda") is back


@pytest.mark.gpu
def test_offload_can_keep_the_device_record() -> None:
    on_gpu = make_state().to("cuda")
    host = offload_to_host(on_gpu, release=False)
    assert on_gpu.tensors and host.equal(on_gpu)


def test_a_host_state_is_not_copied_even_with_a_copy_function() -> None:
    state = make_state()
    calls = []
    assert offload_to_host(state, copy=calls.append) is state
    assert calls == [] and state.equal(make_state())


@pytest.mark.gpu
def test_offload_makes_the_host_copy_with_the_given_function_and_releases_the_device_record() -> None:
    on_gpu = make_state().to("cuda")
    host = offload_to_host(on_gpu, copy=lambda s: s.to("cpu"))
    assert tier_of(host) is Tier.HOST and host.equal(make_state())
    assert on_gpu.tensors == {}
