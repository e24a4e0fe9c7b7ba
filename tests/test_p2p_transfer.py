"""Packing session tensors into per-dtype buffers and back (workers.transfer), in one process."""

from __future__ import annotations

import pytest
import torch
from distributed.protocol import dumps, loads, to_serialize

from kernels.state import SessionState
from workers.transfer import (
    WireState,
    PackError,
    as_bytes,
    decode_meta,
    dtype_from_name,
    empty_buffers,
    encode_meta,
    pack,
    plan_buffers,
    plan_segments,
    segment_bytes,
    tensor_specs,
    unpack,
)


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "prompt_embeds": torch.randn(4, 8, generator=g),
        "kv.0.k": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "kv.0.v": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "vae.0": torch.randn(3, 5, generator=g).half(),
        "rng": torch.randint(0, 256, (16,), dtype=torch.uint8, generator=g),
        "positions": torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),  # not contiguous
        "scale": torch.tensor(0.5),  # 0-d
        "empty": torch.empty(0, 4),
        "mask": torch.rand(6, generator=g) > 0.5,
    }


def test_round_trip_is_bit_exact_for_every_dtype_and_layout():
    tensors = mixed_tensors()
    plan = plan_buffers(tensor_specs(tensors))
    out = unpack(pack(tensors, plan), plan)
    assert set(out) == set(tensors)
    for name, t in tensors.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        assert torch.equal(out[name], t), name


def test_round_trip_through_raw_bytes_into_fresh_buffers():
    tensors = mixed_tensors()
    plan = plan_buffers(tensor_specs(tensors))
    sent = pack(tensors, plan)
    received = empty_buffers(plan)
    for src, dst in zip(sent, received):
        as_bytes(dst).copy_(as_bytes(src))  # what a transport does
    out = unpack(received, plan)
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)


def test_plan_has_one_buffer_per_dtype_in_order_of_first_appearance():
    plan = plan_buffers(tensor_specs(mixed_tensors()))
    assert [b.dtype for b in plan.buffers] == ["float32", "bfloat16", "float16", "uint8", "int64", "bool"]
    assert plan.nbytes == sum(t.numel() * t.element_size() for t in mixed_tensors().values())
    f32 = plan.buffers[0]
    assert [s.name for s in f32.slots] == ["prompt_embeds", "scale", "empty"]
    assert [s.offset for s in f32.slots] == [0, 32, 33]


def test_lone_contiguous_tensor_of_its_dtype_is_passed_through_without_copy():
    tensors = {"a": torch.arange(10), "b": torch.ones(3), "c": torch.zeros(2)}
    plan = plan_buffers(tensor_specs(tensors))
    buffers = pack(tensors, plan)
    assert buffers[0].data_ptr() == tensors["a"].data_ptr()  # int64 group: one tensor, no copy
    assert buffers[1].data_ptr() not in (tensors["b"].data_ptr(), tensors["c"].data_ptr())


def test_unpacked_tensors_are_views_into_the_buffers():
    tensors = {"a": torch.ones(3), "b": torch.zeros(2)}
    plan = plan_buffers(tensor_specs(tensors))
    buffers = pack(tensors, plan)
    out = unpack(buffers, plan)
    buffers[0][4] = 9.0
    assert out["b"][1].item() == 9.0


def test_pack_refuses_a_tensor_that_does_not_match_the_plan():
    plan = plan_buffers({"a": {"shape": [3], "dtype": "float32"}})
    with pytest.raises(PackError, match="'a' is torch.float16"):
        pack({"a": torch.ones(3, dtype=torch.float16)}, plan)
    with pytest.raises(PackError, match=r"\['a'\]"):
        pack({}, plan)


def test_unpack_refuses_buffers_of_the_wrong_size():
    plan = plan_buffers({"a": {"shape": [3], "dtype": "float32"}})
    with pytest.raises(PackError, match="expects 1-D float32 of 3"):
        unpack([torch.ones(4)], plan)
    with pytest.raises(PackError, match="got 2 buffers"):
        unpack([torch.ones(3), torch.ones(3)], plan)


def test_unknown_dtype_name_is_rejected_with_the_name():
    assert dtype_from_name("torch.bfloat16") is torch.bfloat16
    with pytest.raises(PackError, match="'float33'"):
        plan_buffers({"a": {"shape": [1], "dtype": "float33"}})
    with pytest.raises(PackError, match="'Tensor'"):
        dtype_from_name("Tensor")


def test_meta_survives_the_byte_encoding():
    meta = {"prompt": "a red fox — running", "seed": 3, "scalars": {"x": 1.5}, "tensors": {}}
    data = encode_meta(meta)
    assert data.dtype == torch.uint8
    assert decode_meta(data) == meta
    with pytest.raises(PackError, match="not valid JSON"):
        decode_meta(torch.tensor([0xFF, 0x00], dtype=torch.uint8))


@pytest.mark.parametrize(("direct_min", "max_bytes"), [(1, 1 << 30), (16, 64), (64, 64), (1 << 20, 1 << 30), (100, 7)])
def test_segments_cover_every_byte_once_in_order(direct_min, max_bytes):
    plan = plan_buffers(tensor_specs(mixed_tensors()))
    segments = plan_segments(plan, direct_min_bytes=direct_min, max_bytes=max_bytes)
    for i, spec in enumerate(plan.buffers):
        mine = [s for s in segments if s.buffer == i]
        assert [s.start for s in mine] == [0] + [s.stop for s in mine[:-1]]
        assert mine[-1].stop == spec.nbytes
        assert all(0 < s.nbytes <= max_bytes for s in mine)


def test_segments_reassemble_into_the_packed_buffers_bit_exact():
    tensors = mixed_tensors()
    tensors["big"] = torch.randn(64, 64).t()  # large and not contiguous: staged
    tensors["bigger"] = torch.randn(100, 50)  # large and contiguous: sent from its memory
    plan = plan_buffers(tensor_specs(tensors))
    received = empty_buffers(plan)
    copied = 0
    for seg in plan_segments(plan, direct_min_bytes=256, max_bytes=4096):
        data, n = segment_bytes(seg, plan, tensors, device="cpu")
        copied += n
        as_bytes(received[seg.buffer])[seg.start : seg.stop].copy_(data)
    expected = pack(tensors, plan)
    assert all(torch.equal(as_bytes(r), as_bytes(e)) for r, e in zip(received, expected))
    assert copied == plan.nbytes - tensors["bigger"].numel() * 4


def test_a_segment_inside_a_contiguous_tensor_is_a_view_of_it():
    tensors = {"kv": torch.randn(1000), "rng": torch.zeros(10, dtype=torch.uint8), "pos": torch.arange(3)}
    plan = plan_buffers(tensor_specs(tensors))
    segments = plan_segments(plan, direct_min_bytes=1024, max_bytes=1 << 20)
    assert [s.tensor for s in segments] == ["kv", None, None]
    data, copied = segment_bytes(segments[0], plan, tensors, device="cpu")
    assert copied == 0 and data.data_ptr() == tensors["kv"].data_ptr()
    data, copied = segment_bytes(segments[1], plan, tensors, device="cpu")
    assert copied == 10 and data.data_ptr() != tensors["rng"].data_ptr()


def test_segment_sizes_must_be_positive():
    plan = plan_buffers({"a": {"shape": [3], "dtype": "float32"}})
    with pytest.raises(PackError, match="max_bytes=0"):
        plan_segments(plan, direct_min_bytes=1, max_bytes=0)


# ------------------------------------------------------------------ WireState (host-staged over Dask comms)


def wire_state() -> SessionState:
    return SessionState("tiny", "a fox", 3, 64, 64, 2, mixed_tensors(), {"cache_len": 3})


def test_wire_state_round_trips_every_tensor_through_dask_serialization_bit_exact():
    state = wire_state()
    frames = dumps({"result": to_serialize(WireState.of(state))})
    out = loads(frames)["result"].to_state()
    assert out.equal(state)
    assert list(out.tensors) == list(state.tensors)  # the meta's order, not the frames'
    for name, t in state.tensors.items():
        assert (out.tensors[name].dtype, out.tensors[name].shape) == (t.dtype, t.shape), name
        assert out.tensors[name].data_ptr() % t.element_size() == 0, name


def test_wire_state_sends_each_tensor_as_its_own_frame_without_copying_it():
    big = torch.randn(256, 1024)
    state = SessionState("tiny", "a fox", 0, 64, 64, 0, {"kv.0.k": big, "rng": torch.zeros(8, dtype=torch.uint8)})
    wire = WireState.of(state)
    assert wire.frames[wire.names.index("kv.0.k")].ctypes.data == big.data_ptr()  # a view, no copy
    frames = dumps({"result": to_serialize(wire)})
    assert any(memoryview(f).nbytes == big.numel() * 4 for f in frames)  # out of band, not pickled in


def test_wire_state_refuses_device_tensors_and_frames_that_do_not_match():
    state = wire_state()
    wire = WireState.of(state)
    cut = tuple(f[:0] if n == "prompt_embeds" else f for n, f in zip(wire.names, wire.frames))
    bad = WireState(wire.meta, wire.names, cut)
    with pytest.raises(PackError, match="'prompt_embeds' has 0 bytes"):
        bad.to_state()
    with pytest.raises(PackError, match="do not match"):
        WireState(wire.meta, wire.names[1:], wire.frames[1:]).to_state()
    meta_state = SessionState("tiny", "x", 0, 64, 64, 0, {"a": torch.empty(3, device="meta")})
    with pytest.raises(PackError, match=r"\['a'\] are not in host memory"):
        WireState.of(meta_state)
