"""Reused host buffers for state copies (workers.host_buffers), in one process."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from kernels.state import SessionState
from workers.host_buffers import (
    ALIGN_BYTES,
    LEND_MIN_BYTES,
    HostBufferPool,
    ReceivePool,
    flat_layout,
    receive_pool,
)
from workers.transfer import PackError, tensor_specs


def mixed_state(seed: int = 0, scale: int = 1) -> SessionState:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeds": torch.randn(4, 8 * scale, generator=g),
        "kv.0.k": torch.randn(2, 3 * scale, 4, generator=g).bfloat16(),
        "vae.0": torch.randn(3, 5, generator=g).half(),
        "rng": torch.randint(0, 256, (13,), dtype=torch.uint8, generator=g),
        "positions": torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),  # not contiguous
        "scale": torch.tensor(0.5),  # 0-d
        "empty": torch.empty(0, 4),
        "mask": torch.rand(6, generator=g) > 0.5,
        "nan": torch.tensor([float("nan"), -0.0]),
    }
    return SessionState("tiny", "a fox", seed, 64, 64, 2, tensors, {"cache_len": 3})


def test_flat_layout_round_trips_every_tensor_at_aligned_offsets():
    state = mixed_state()
    layout = flat_layout(tensor_specs(state.tensors))
    assert [s[0] for s in layout.slots] == list(state.tensors)
    assert all(offset % ALIGN_BYTES == 0 for *_, offset in layout.slots)
    buffer = torch.empty(layout.nbytes, dtype=torch.uint8)
    views = layout.views(buffer)
    for name, t in state.tensors.items():
        views[name].copy_(t)
    for name, t in state.tensors.items():
        v = layout.views(buffer.clone())[name]
        assert (v.dtype, v.shape) == (t.dtype, t.shape), name
        assert torch.equal(v.reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), name


def test_flat_layout_refuses_bad_input_naming_it():
    with pytest.raises(PackError, match="'float33'"):
        flat_layout({"a": {"shape": [1], "dtype": "float33"}})
    with pytest.raises(PackError, match="multiple of 8"):
        flat_layout({}, align=12)
    layout = flat_layout({"a": {"shape": [4], "dtype": "float32"}})
    with pytest.raises(PackError, match="needs 1-D uint8 of 16 bytes"):
        layout.views(torch.empty(8, dtype=torch.uint8))


def test_pool_copies_bit_exact_and_reuses_the_buffer_after_release():
    pool = HostBufferPool(pin_memory=False)
    first = pool.copy(mixed_state(1))
    assert first.state.equal(mixed_state(1))
    ptr = next(iter(first.state.tensors.values())).data_ptr()
    first.release()
    assert first.released and first.state.tensors == {}  # a late use fails loudly
    with pool.copy(mixed_state(2)) as second:
        assert second.state.equal(mixed_state(2))
        assert next(iter(second.state.tensors.values())).data_ptr() == ptr  # the same, warm buffer
    assert (pool.allocated, pool.reused) == (1, 1)


def test_pool_never_hands_one_buffer_to_two_live_copies():
    pool = HostBufferPool(pin_memory=False)
    a, b = pool.copy(mixed_state(3)), pool.copy(mixed_state(4))
    assert a.state.equal(mixed_state(3)) and b.state.equal(mixed_state(4))
    assert pool.allocated == 2
    a.release()
    b.release()
    a.release()  # idempotent
    assert pool.idle_bytes >= 2 * flat_layout(tensor_specs(mixed_state().tensors)).nbytes


def test_pool_takes_the_smallest_buffer_that_fits_and_frees_beyond_its_cap():
    pool = HostBufferPool(pin_memory=False, max_idle_bytes=6 << 20)
    small, big = pool.take(1), pool.take(5 << 20)
    pool.give(big)
    pool.give(small)  # 2 MiB + 6 MiB > the cap: freed
    assert pool.idle_bytes == 6 << 20
    assert pool.take(10).numel() == 6 << 20
    with pytest.raises(ValueError, match="-1"):
        HostBufferPool(max_idle_bytes=-1)


def test_pool_is_safe_across_threads():
    pool = HostBufferPool(pin_memory=False)
    errors = []

    def worker(seed: int) -> None:
        for i in range(20):
            with pool.copy(mixed_state(seed, scale=1 + i % 3)) as copy:
                if not copy.state.equal(mixed_state(seed, scale=1 + i % 3)):
                    errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and pool.allocated <= 4


@pytest.mark.gpu
def test_pool_copies_a_cuda_state_into_pinned_buffers():
    pool = HostBufferPool()
    with pool.copy(mixed_state(5).to("cuda"), non_blocking=True) as copy:
        assert all(t.is_pinned() for t in copy.state.tensors.values() if t.numel())
        assert copy.state.equal(mixed_state(5))


# ------------------------------------------------------------------ ReceivePool (buffers lent to received states)


def test_a_lent_buffer_comes_back_only_when_every_view_of_it_is_gone():
    pool = ReceivePool(max_idle_bytes=64 << 20)
    buf = pool.lend(4096)
    ptr = buf.data_ptr()
    kv = buf[1024:].view(torch.bfloat16).view(2, -1)  # what unpacking a received state makes
    del buf
    second = pool.lend(4096)
    assert second.data_ptr() != ptr  # kv still uses the first: a second buffer
    assert pool.lent_bytes == 2 * (2 << 20)
    del kv
    gc.collect()
    again = pool.lend(4000)
    assert again.data_ptr() == ptr and again.numel() == 4000
    assert (pool.allocated, pool.reused) == (2, 1)


def test_lent_buffers_hold_the_received_bytes_and_the_pool_keeps_at_most_its_cap():
    pool = ReceivePool(max_idle_bytes=2 << 20)
    a, b = pool.lend(3 << 20), pool.lend(10)
    a.fill_(7)
    b.fill_(9)
    assert int(a.sum()) == 7 * (3 << 20) and int(b.sum()) == 90
    del a, b
    gc.collect()
    assert pool.idle_bytes == 2 << 20 and pool.lent_bytes == 0  # the 4 MiB one was freed
    with pytest.raises(ValueError, match="-5"):
        pool.lend(-5)


def test_both_pools_pick_the_best_fit_among_several_idle_buffers():
    pool = HostBufferPool(pin_memory=False)
    taken = [pool.take(n) for n in (5 << 20, 1, 3 << 20)]
    for b in taken:
        pool.give(b)
    assert pool.take(3 << 20).data_ptr() == taken[2].data_ptr()  # not the first idle one
    recv = ReceivePool()
    lent = [recv.lend(n) for n in (5 << 20, 1, 3 << 20)]
    ptrs = [t.data_ptr() for t in lent]
    del lent
    gc.collect()
    assert recv.lend(3 << 20).data_ptr() == ptrs[2] and recv.lend(1).data_ptr() == ptrs[1]


def test_receive_pool_is_one_per_process():
    assert receive_pool() is receive_pool()


# ------------------------------------------------------------------ ReceivePool.copy (where suspended states are parked)


def big_state(seed: int = 0, mib: int = 3) -> SessionState:
    """A state over LEND_MIN_BYTES, with a non-contiguous and a 0-d tensor among the big ones."""
    g = torch.Generator().manual_seed(seed)
    n = mib * (1 << 20) // 4
    tensors = {
        "kv.0.k": torch.randn(n // 2, generator=g).bfloat16().view(-1, 64),
        "kv.0.v": torch.randn(64, n // 128, generator=g).t(),  # not contiguous
        "scale": torch.tensor(0.5),
        "rng": torch.randint(0, 256, (13,), dtype=torch.uint8, generator=g),
    }
    return SessionState("tiny", "a fox", seed, 64, 64, 2, tensors, {"cache_len": 3})


def test_a_parked_copy_is_exact_and_lives_in_one_lent_buffer_that_comes_back_when_it_is_gone():
    pool = ReceivePool()
    parked = pool.copy(big_state(1))
    assert big_state(1).nbytes >= LEND_MIN_BYTES
    assert parked.equal(big_state(1)) and parked.scalars == {"cache_len": 3}
    assert pool.lent_bytes >= big_state(1).nbytes
    ptr = parked.tensors["kv.0.k"].data_ptr()
    del parked  # the session was resumed onto its device
    gc.collect()
    assert pool.lent_bytes == 0
    again = pool.copy(big_state(2))
    assert again.tensors["kv.0.k"].data_ptr() == ptr  # the next suspension lands in warm pages
    assert again.equal(big_state(2))
    assert (pool.allocated, pool.reused) == (1, 1)


def test_a_small_state_is_parked_in_memory_of_its_own():
    pool = ReceivePool()
    small = mixed_state(3)
    assert small.nbytes < LEND_MIN_BYTES
    parked = pool.copy(small)
    assert parked.equal(mixed_state(3)) and parked.tensors["kv.0.k"].data_ptr() != small.tensors["kv.0.k"].data_ptr()
    assert (pool.allocated, pool.lent_bytes) == (0, 0)


def test_a_loan_does_not_take_an_idle_buffer_more_than_twice_its_size():
    pool = ReceivePool()
    big = pool.lend(64 << 20)
    ptr = big.data_ptr()
    del big
    gc.collect()
    small = pool.lend(1 << 20)  # would hold 64 MiB for as long as its session lives
    assert small.data_ptr() != ptr and pool.allocated == 2
    assert pool.lend(40 << 20).data_ptr() == ptr  # within twice the 40 MiB it would allocate


@pytest.mark.gpu
def test_a_cuda_state_is_parked_in_pinned_lent_memory():
    pool = ReceivePool(pin_memory=None)
    parked = pool.copy(big_state(4).to("cuda"), non_blocking=True)
    assert parked.device.type == "cpu" and all(t.is_pinned() for t in parked.tensors.values() if t.numel())
    assert parked.equal(big_state(4))


def test_lent_buffers_start_aligned_so_every_tensor_of_a_layout_is_aligned_in_memory():
    pool = ReceivePool()
    loans = [pool.lend(n) for n in (10, 3 << 20, 40 << 20)]
    assert all(buf.data_ptr() % ALIGN_BYTES == 0 for buf in loans)
    parked = pool.copy(big_state(6))
    assert all(t.data_ptr() % ALIGN_BYTES == 0 for t in parked.tensors.values())
