"""Packing a session's tensors into a few large contiguous buffers, and back.

A transport moves one buffer per dtype instead of one message per tensor: the many
small KV-cache tensors of a session become one long send, whatever the transport. Both
ends compute the same :class:`BufferPlan` from the state's JSON meta
(:meth:`kernels.state.SessionState.meta`), so only the meta and the raw bytes travel.

Buffers are typed 1-D tensors (their dtype is the group's dtype, so every tensor is a
naturally aligned slice); a transport sends them as raw bytes with :func:`as_bytes`.
Unpacked tensors are views into the received buffers: no second copy.

On the wire a transport need not build the sender's buffers at all: :func:`plan_segments`
cuts the buffers into messages, where a large tensor is its own message sent straight
from its memory and runs of small tensors are coalesced into one staged message
(:func:`segment_bytes`). The receiver receives every message into its slice of the
receiver's buffers, so it still ends with one contiguous buffer per dtype, while the
sender copies only the small tensors (packing everything cost 2-3x a plain memcpy of
the same bytes here, a pure overhead on a transport that can send from any address).

For the host-staged path over Dask's comms, :class:`WireState` carries a host state as
its meta plus one raw byte array per tensor: Dask pickles it with protocol 5, so every
array travels as its own out-of-band frame (no pickling copy on the sender, and the
receiver's tensors are views of the frames Dask read from the socket).

Examples
--------
>>> import torch
>>> tensors = {"a": torch.ones(2, 3), "b": torch.arange(4), "c": torch.zeros(5)}
>>> plan = plan_buffers(tensor_specs(tensors))
>>> [(b.dtype, b.numel) for b in plan.buffers]
[('float32', 11), ('int64', 4)]
>>> out = unpack(pack(tensors, plan), plan)
>>> all(torch.equal(out[k], tensors[k]) for k in tensors)
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels.state import SessionState

__all__ = [
    "BufferPlan",
    "BufferSpec",
    "PackError",
    "Segment",
    "TensorSlot",
    "as_bytes",
    "decode_meta",
    "dtype_from_name",
    "empty_buffers",
    "encode_meta",
    "pack",
    "plan_buffers",
    "plan_segments",
    "segment_bytes",
    "tensor_specs",
    "unpack",
    "WireState",
]


class PackError(ValueError):
    """Tensors, buffers or meta do not match the plan they are packed or unpacked with."""


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one named tensor lives inside its dtype's buffer (offsets in elements)."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """One contiguous buffer: all tensors of one dtype, in meta order."""

    dtype: str
    numel: int
    slots: tuple[TensorSlot, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        """The buffer's element type as a ``torch.dtype``."""
        return dtype_from_name(self.dtype)

    @property
    def nbytes(self) -> int:
        """Size of the buffer in bytes."""
        return self.numel * self.torch_dtype.itemsize


@dataclass(frozen=True, slots=True)
class BufferPlan:
    """The buffers of one state, in the order both ends send and receive them."""

    buffers: tuple[BufferSpec, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers together (equals the state's ``nbytes``)."""
        return sum(b.nbytes for b in self.buffers)

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names covered by the plan."""
        return tuple(s.name for b in self.buffers for s in b.slots)


@dataclass(frozen=True, slots=True)
class Segment:
    """One wire message: bytes ``[start, stop)`` of buffer number ``buffer``.

    ``tensor`` names the one tensor the bytes lie in (a large tensor, sent from its own
    memory), or is ``None`` for a run of whole small tensors (staged into one message).
    """

    buffer: int
    start: int
    stop: int
    tensor: str | None

    @property
    def nbytes(self) -> int:
        """Size of the message in bytes."""
        return self.stop - self.start


def dtype_from_name(name: str) -> torch.dtype:
    """The ``torch.dtype`` called ``name`` (``"float32"``, ``"torch.bfloat16"``, ...).

    Raises
    ------
    PackError
        If ``name`` is not a torch dtype.
    """
    attr = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(attr, torch.dtype):
        raise PackError(f"unknown tensor dtype {name!r}; expected a torch dtype name such as 'float32'")
    return attr


def tensor_specs(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "..."}}`` of tensors, as in ``SessionState.meta()["tensors"]``."""
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in tensors.items()
    }


def plan_buffers(specs: Mapping[str, Mapping[str, Any]]) -> BufferPlan:
    """Group tensors by dtype into one buffer each; dtypes in order of first appearance.

    Parameters
    ----------
    specs
        ``{name: {"shape": [...], "dtype": "float32"}}``, e.g. ``state.meta()["tensors"]``.
        Its order decides the layout, so both ends must pass the same mapping.
    """
    groups: dict[str, list[TensorSlot]] = {}
    sizes: dict[str, int] = {}
    for name, spec in specs.items():
        dtype = str(spec["dtype"]).removeprefix("torch.")
        dtype_from_name(dtype)  # validate early, with the bad name in the message
        shape = tuple(int(d) for d in spec["shape"])
        if any(d < 0 for d in shape):
            raise PackError(f"tensor {name!r} has a negative dimension in shape {shape}")
        numel = math.prod(shape)
        offset = sizes.get(dtype, 0)
        groups.setdefault(dtype, []).append(TensorSlot(name, shape, offset, numel))
        sizes[dtype] = offset + numel
    return BufferPlan(tuple(BufferSpec(d, sizes[d], tuple(slots)) for d, slots in groups.items()))


def empty_buffers(plan: BufferPlan, *, device: str | torch.device = "cpu", pin_memory: bool = False) -> list[torch.Tensor]:
    """Uninitialised buffers to receive ``plan`` into (pinned only for a CPU target with CUDA present)."""
    device = torch.device(device)
    pin = pin_memory and device.type == "cpu" and torch.cuda.is_available()
    return [torch.empty(b.numel, dtype=b.torch_dtype, device=device, pin_memory=pin) for b in plan.buffers]


def pack(
    tensors: Mapping[str, torch.Tensor],
    plan: BufferPlan,
    *,
    device: str | torch.device | None = None,
    pin_memory: bool = False,
) -> list[torch.Tensor]:
    """Copy ``tensors`` into the buffers of ``plan`` (one 1-D tensor per :class:`BufferSpec`).

    Parameters
    ----------
    tensors
        The tensors named in ``plan``, with the planned dtypes and shapes.
    plan
        From :func:`plan_buffers` on these tensors' specs.
    device
        Where the buffers live; ``None``: the device of the tensors (cpu when there are none).
    pin_memory
        Page-locked CPU buffers (with a CPU ``device`` and CUDA present), for fast copies
        from and to a GPU.

    A dtype group made of a single contiguous tensor already on ``device`` is passed
    through as a flat view, without a copy.
    """
    if device is None:
        device = next((t.device for t in tensors.values()), torch.device("cpu"))
    device = torch.device(device)
    missing = set(plan.names) - set(tensors)
    if missing:
        raise PackError(f"tensors {sorted(missing)} are in the plan but were not given")
    buffers: list[torch.Tensor] = []
    for spec in plan.buffers:
        dtype = spec.torch_dtype
        for slot in spec.slots:
            t = tensors[slot.name]
            if t.dtype != dtype or tuple(t.shape) != slot.shape:
                raise PackError(
                    f"tensor {slot.name!r} is {str(t.dtype)} {tuple(t.shape)}, "
                    f"the plan expects {spec.dtype} {slot.shape}; rebuild the plan from these tensors"
                )
        only = tensors[spec.slots[0].name] if len(spec.slots) == 1 else None
        if only is not None and only.is_contiguous() and only.device == device and not pin_memory:
            buffers.append(only.reshape(-1))
            continue
        (buf,) = empty_buffers(BufferPlan((spec,)), device=device, pin_memory=pin_memory)
        for slot in spec.slots:
            buf[slot.offset : slot.offset + slot.numel].view(slot.shape).copy_(tensors[slot.name])
        buffers.append(buf)
    return buffers


def unpack(buffers: Sequence[torch.Tensor], plan: BufferPlan) -> dict[str, torch.Tensor]:
    """Named tensors as views into ``buffers`` (as made by :func:`pack` or :func:`empty_buffers`).

    The result is in the plan's order, grouped by dtype; the caller keeps the original
    name order through the meta (``SessionState.from_meta`` does).
    """
    if len(buffers) != len(plan.buffers):
        raise PackError(f"got {len(buffers)} buffers, the plan has {len(plan.buffers)}")
    out: dict[str, torch.Tensor] = {}
    for buf, spec in zip(buffers, plan.buffers):
        if buf.dtype != spec.torch_dtype or buf.numel() != spec.numel or buf.dim() != 1:
            raise PackError(
                f"buffer is {str(buf.dtype)} {tuple(buf.shape)}, the plan expects 1-D {spec.dtype} of {spec.numel}"
            )
        for slot in spec.slots:
            out[slot.name] = buf[slot.offset : slot.offset + slot.numel].view(slot.shape)
    return out


def plan_segments(plan: BufferPlan, *, direct_min_bytes: int, max_bytes: int) -> tuple[Segment, ...]:
    """Cut the buffers of ``plan`` into messages (both ends derive the same ones).

    Parameters
    ----------
    direct_min_bytes
        Tensors at least this large travel as their own message(s), without a copy.
    max_bytes
        Upper bound of one message; larger tensors are split.
    """
    if max_bytes <= 0 or direct_min_bytes <= 0:
        raise PackError(f"message sizes must be positive, got max_bytes={max_bytes}, direct_min_bytes={direct_min_bytes}")
    direct_min_bytes = min(direct_min_bytes, max_bytes)
    out: list[Segment] = []
    for i, spec in enumerate(plan.buffers):
        size = spec.torch_dtype.itemsize
        run: int | None = None  # start of the open run of small tensors
        end = 0
        for slot in spec.slots:
            b0, b1 = slot.offset * size, (slot.offset + slot.numel) * size
            if b1 - b0 >= direct_min_bytes:
                if run is not None:
                    out.append(Segment(i, run, b0, None))
                    run = None
                out.extend(Segment(i, a, min(a + max_bytes, b1), slot.name) for a in range(b0, b1, max_bytes))
            elif b1 > b0:
                if run is not None and b1 - run > max_bytes:
                    out.append(Segment(i, run, b0, None))
                    run = None
                run = b0 if run is None else run
            end = b1
        if run is not None and end > run:
            out.append(Segment(i, run, end, None))
    return tuple(out)


def segment_bytes(
    segment: Segment,
    plan: BufferPlan,
    tensors: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device,
    pin_memory: bool = False,
) -> tuple[torch.Tensor, int]:
    """The bytes of one message as a ``uint8`` tensor on ``device``, and how many were copied.

    A segment inside one contiguous tensor already on ``device`` is a view of that
    tensor (0 bytes copied); anything else is staged into a fresh (optionally pinned)
    tensor. The returned tensor must stay alive until the send completes.
    """
    device = torch.device(device)
    spec = plan.buffers[segment.buffer]
    size = spec.torch_dtype.itemsize
    parts = [s for s in spec.slots if s.numel and s.offset * size < segment.stop and (s.offset + s.numel) * size > segment.start]
    for s in parts:
        t = tensors[s.name]
        if t.dtype != spec.torch_dtype or tuple(t.shape) != s.shape:
            raise PackError(f"tensor {s.name!r} is {str(t.dtype)} {tuple(t.shape)}, the plan expects {spec.dtype} {s.shape}")
    if segment.tensor is not None:
        (slot,) = parts
        t = tensors[slot.name]
        lo, hi = segment.start - slot.offset * size, segment.stop - slot.offset * size
        if t.is_contiguous() and t.device == device and not pin_memory:
            return t.reshape(-1).view(torch.uint8)[lo:hi], 0
        staged = _staging(segment.nbytes, device, pin_memory)
        staged.copy_(t.contiguous().reshape(-1).view(torch.uint8)[lo:hi])
        return staged, segment.nbytes
    staged = _staging(segment.nbytes, device, pin_memory)
    for s in parts:
        a = s.offset * size - segment.start
        staged[a : a + s.numel * size].copy_(tensors[s.name].contiguous().reshape(-1).view(torch.uint8))
    return staged, segment.nbytes


def _staging(nbytes: int, device: torch.device, pin_memory: bool) -> torch.Tensor:
    pin = pin_memory and device.type == "cpu" and torch.cuda.is_available()
    return torch.empty(nbytes, dtype=torch.uint8, device=device, pin_memory=pin)


def as_bytes(buf: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a contiguous 1-D buffer as a ``uint8`` view (no copy)."""
    if buf.dim() != 1 or not buf.is_contiguous():
        raise PackError(f"as_bytes needs a contiguous 1-D buffer, got shape {tuple(buf.shape)}")
    return buf.view(torch.uint8)


def encode_meta(meta: Mapping[str, Any]) -> torch.Tensor:
    """JSON-encode ``meta`` into a ``uint8`` tensor (what a transport sends first)."""
    raw = json.dumps(meta, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def decode_meta(data: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`encode_meta` (the tensor may live on any device)."""
    try:
        return json.loads(bytes(data.cpu().numpy().tobytes()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"received meta is not valid JSON ({exc}); the peer speaks another protocol") from exc


@dataclass(frozen=True, slots=True)
class WireState:
    """A host session state as Dask moves it best: JSON meta plus raw byte frames.

    ``frames[i]`` holds the bytes of tensor ``names[i]`` as a 1-D ``uint8`` numpy array
    that shares memory with the tensor. Pickled with protocol 5 (Dask does, with a
    buffer callback) each array becomes an out-of-band frame: the sender copies
    nothing, and the receiver's tensors are views of the buffers Dask received into.
    Frames go smallest first, so the one frame Dask may read into its header buffer
    (at an arbitrary offset) is small; a frame that arrives misaligned for its dtype is
    copied once (:meth:`to_state`).

    Examples
    --------
    >>> import torch
    >>> from kernels.state import SessionState
    >>> s = SessionState("tiny", "fox", 0, 64, 64, tensors={"kv": torch.ones(2, 3).bfloat16()})
    >>> WireState.of(s).to_state().equal(s)
    True
    """

    meta: dict[str, Any]
    names: tuple[str, ...]
    frames: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, state: SessionState) -> "WireState":
        """The frames of ``state`` (its tensors must be on the host; contiguous ones are not copied).

        Raises
        ------
        PackError
            If a tensor is not in host memory (stage it first: ``storage.offload_to_host``).
        """
        off_host = sorted(name for name, t in state.tensors.items() if t.device.type != "cpu")
        if off_host:
            raise PackError(f"tensors {off_host} are not in host memory; stage the state to the host first")
        names = tuple(sorted(state.tensors, key=lambda n: state.tensors[n].numel() * state.tensors[n].element_size()))
        frames = tuple(_host_bytes(state.tensors[n]).numpy() for n in names)
        return cls(meta=state.meta(), names=names, frames=frames)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor frames."""
        return sum(f.nbytes for f in self.frames)

    def to_state(self) -> SessionState:
        """The state, with tensors that are views of the received frames (in the meta's order).

        Raises
        ------
        PackError
            If a frame's size does not match the meta.
        """
        specs = self.meta["tensors"]
        if set(specs) != set(self.names) or len(self.names) != len(self.frames):
            raise PackError(f"frames of {sorted(self.names)} do not match the meta's tensors {sorted(specs)}")
        tensors: dict[str, torch.Tensor] = {}
        for name, frame in zip(self.names, self.frames):
            dtype = dtype_from_name(specs[name]["dtype"])
            shape = tuple(int(d) for d in specs[name]["shape"])
            if frame.nbytes != math.prod(shape) * dtype.itemsize:
                raise PackError(
                    f"frame of tensor {name!r} has {frame.nbytes} bytes, the meta describes {dtype} {shape}"
                )
            raw = frame.reshape(-1).view(np.uint8)
            if not raw.flags.writeable or raw.ctypes.data % dtype.itemsize:
                raw = raw.copy()  # read-only or misaligned for its dtype: one copy of this frame
            tensors[name] = torch.from_numpy(raw).view(dtype).view(shape)
        return SessionState.from_meta(self.meta, {name: tensors[name] for name in specs})


def _host_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a host tensor as a flat ``uint8`` tensor (a view when it is contiguous)."""
    return t.contiguous().reshape(-1).view(torch.uint8)
