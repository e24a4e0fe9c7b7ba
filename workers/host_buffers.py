"""Reused host buffers for copies of session states (pinned where CUDA is).

A copy of a state into fresh host memory pays for the memory first: every page of a
new large allocation faults on first touch (and pinning fresh memory costs more than
the copy). Copies that live only for a while -- the engine's checkpoint copies waiting
for the client's acks, host staging on the way to another worker -- can land in
buffers that are kept and reused instead, whose pages are already mapped.

:class:`HostBufferPool` hands out one flat ``uint8`` buffer per copy (the tensors at
64-byte aligned offsets, laid out by :func:`flat_layout`) and takes it back when the
copy is released; :class:`HostCopy` is the copied state plus its lease.

:class:`ReceivePool` serves copies that live as long as a session stays: memory that a
transport receives a state into, and (:meth:`ReceivePool.copy`) the host copy a
suspended session is parked in. The tensors are views of the lent buffer, so there is
no release call; a buffer comes back by itself once no tensor uses it any more (the
session resumed onto its device, or left), and the next transfer or suspension lands in
pages that are already mapped.

Examples
--------
>>> import torch
>>> from kernels.state import SessionState
>>> pool = HostBufferPool()
>>> state = SessionState("tiny", "fox", 0, 64, 64, tensors={"kv": torch.ones(4, 8)})
>>> with pool.copy(state) as copy:
...     copy.state.equal(state)
True
>>> pool.idle_bytes > 0   # the buffer went back to the pool
True
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels.state import SessionState
from workers.transfer import PackError, dtype_from_name

__all__ = [
    "ALIGN_BYTES",
    "DEFAULT_MAX_IDLE_BYTES",
    "LEND_MIN_BYTES",
    "FlatLayout",
    "HostBufferPool",
    "HostCopy",
    "ReceivePool",
    "flat_layout",
    "receive_pool",
]

#: Every tensor starts at a multiple of this many bytes inside a flat buffer.
ALIGN_BYTES = 64
#: Buffers are allocated in multiples of this, so states that grow a little reuse them.
ROUND_BYTES = 2 << 20
#: Idle bytes a pool keeps by default; buffers given back beyond it are freed.
DEFAULT_MAX_IDLE_BYTES = 1 << 30
#: :meth:`ReceivePool.copy` copies a smaller state into memory of its own: a lent buffer
#: is at least :data:`ROUND_BYTES`, and small allocations come from warm heap pages anyway.
LEND_MIN_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FlatLayout:
    """Where each tensor of a state lies in one flat byte buffer.

    ``slots[i] = (name, dtype, shape, byte offset)``, in the state's order; ``nbytes``
    is the size of the buffer needed (the last tensor's end).
    """

    slots: tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]
    nbytes: int

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors as views into ``buffer`` (a 1-D ``uint8`` tensor of at least :attr:`nbytes`)."""
        if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() < self.nbytes:
            raise PackError(
                f"buffer is {buffer.dtype} {tuple(buffer.shape)}, the layout needs 1-D uint8 of {self.nbytes} bytes"
            )
        out = {}
        for name, dtype, shape, offset in self.slots:
            n = math.prod(shape) * dtype.itemsize
            out[name] = buffer[offset : offset + n].view(dtype).view(shape)
        return out


def flat_layout(specs: Mapping[str, Mapping[str, Any]], *, align: int = ALIGN_BYTES) -> FlatLayout:
    """Lay tensors out one after the other in one buffer, each at an ``align``-byte offset.

    Parameters
    ----------
    specs
        ``{name: {"shape": [...], "dtype": "float32"}}``, e.g. ``state.meta()["tensors"]``.
    """
    if align <= 0 or align % 8:
        raise PackError(f"alignment must be a positive multiple of 8 bytes, got {align}")
    slots, end = [], 0
    for name, spec in specs.items():
        dtype = dtype_from_name(spec["dtype"])
        shape = tuple(int(d) for d in spec["shape"])
        if any(d < 0 for d in shape):
            raise PackError(f"tensor {name!r} has a negative dimension in shape {shape}")
        offset = -(-end // align) * align
        slots.append((name, dtype, shape, offset))
        end = offset + math.prod(shape) * dtype.itemsize
    return FlatLayout(tuple(slots), end)


def _best_fit(sizes: list[int], nbytes: int, most: int | None = None) -> int | None:
    """Index of the smallest size that holds ``nbytes`` (and is at most ``most``), or ``None``.

    (By index: ``list.remove`` would compare arrays and tensors element-wise.)
    """
    fits = [i for i, size in enumerate(sizes) if size >= nbytes and (most is None or size <= most)]
    return min(fits, key=lambda i: sizes[i]) if fits else None


def _rounded(nbytes: int) -> int:
    """The size a pool allocates for ``nbytes``: a multiple of :data:`ROUND_BYTES`."""
    return max(ROUND_BYTES, -(-nbytes // ROUND_BYTES) * ROUND_BYTES)


def _copy_into(state: SessionState, buffer: torch.Tensor, *, non_blocking: bool) -> dict[str, torch.Tensor]:
    """Copy every tensor of ``state`` into ``buffer`` (laid out by :func:`flat_layout`); the views.

    ``non_blocking`` (for a pinned ``buffer``) lets copies from a GPU run asynchronously;
    this still waits for them before it returns.
    """
    views = flat_layout(state.meta()["tensors"]).views(buffer)
    cuda = False
    for name, t in state.tensors.items():
        views[name].copy_(t, non_blocking=non_blocking)
        cuda |= t.is_cuda
    if cuda and non_blocking:
        torch.cuda.synchronize()
    return views


class HostCopy:
    """A host copy of a state held in a pooled buffer; :meth:`release` gives the buffer back.

    Use ``copy.state`` until the release and never after it (its tensors are views of
    the buffer, which the next copy overwrites). A context manager releases on exit.
    """

    def __init__(self, state: SessionState, buffer: torch.Tensor, pool: "HostBufferPool") -> None:
        self.state = state
        self._buffer: torch.Tensor | None = buffer
        self._pool = pool

    @property
    def released(self) -> bool:
        """Whether the buffer went back to the pool."""
        return self._buffer is None

    def release(self) -> None:
        """Give the buffer back (idempotent) and empty ``state.tensors``, so a late use fails loudly."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            self.state.tensors.clear()
            self._pool.give(buffer)

    def __enter__(self) -> "HostCopy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class HostBufferPool:
    """Flat host buffers reused across copies of session states (thread-safe).

    Parameters
    ----------
    pin_memory
        Page-locked buffers (for fast, asynchronous copies from and to a GPU); ``None``:
        pinned exactly when CUDA is available.
    max_idle_bytes
        Idle buffers kept for reuse at most; ``None``: :data:`DEFAULT_MAX_IDLE_BYTES`.

    A request takes the smallest idle buffer that fits, or allocates a new one (rounded
    up to :data:`ROUND_BYTES`).
    """

    def __init__(self, *, pin_memory: bool | None = None, max_idle_bytes: int | None = None) -> None:
        cuda = torch.cuda.is_available()
        self.pin_memory = cuda if pin_memory is None else bool(pin_memory and cuda)
        self.max_idle_bytes = DEFAULT_MAX_IDLE_BYTES if max_idle_bytes is None else int(max_idle_bytes)
        if self.max_idle_bytes < 0:
            raise ValueError(f"max_idle_bytes must be >= 0, got {max_idle_bytes!r}")
        self._idle: list[torch.Tensor] = []
        self._lock = threading.Lock()
        #: Buffers allocated and requests served from an idle buffer (for metrics and tests).
        self.allocated = 0
        self.reused = 0

    @property
    def idle_bytes(self) -> int:
        """Bytes held in idle buffers."""
        with self._lock:
            return sum(b.numel() for b in self._idle)

    def take(self, nbytes: int) -> torch.Tensor:
        """A 1-D ``uint8`` host buffer of at least ``nbytes`` bytes (contents undefined)."""
        with self._lock:
            best = _best_fit([b.numel() for b in self._idle], nbytes)
            if best is not None:
                self.reused += 1
                return self._idle.pop(best)
            self.allocated += 1
        return torch.empty(_rounded(nbytes), dtype=torch.uint8, pin_memory=self.pin_memory)

    def give(self, buffer: torch.Tensor) -> None:
        """Return a buffer from :meth:`take`; it is freed instead when the pool is full."""
        with self._lock:
            if sum(b.numel() for b in self._idle) + buffer.numel() <= self.max_idle_bytes:
                self._idle.append(buffer)

    def copy(self, state: SessionState, *, non_blocking: bool = False) -> HostCopy:
        """Copy ``state`` (any device) into one pooled host buffer.

        ``non_blocking`` lets copies from a GPU into pinned buffers run asynchronously;
        the call still waits for them before it returns, so the copy is complete.
        """
        buffer = self.take(flat_layout(state.meta()["tensors"]).nbytes)
        views = _copy_into(state, buffer, non_blocking=non_blocking and self.pin_memory)
        return HostCopy(state.with_tensors(views), buffer, self)


class ReceivePool:
    """Host buffers lent to received or parked states; each comes back by itself when unused (thread-safe).

    Parameters
    ----------
    max_idle_bytes
        Idle buffers kept for reuse at most; ``None``: :data:`DEFAULT_MAX_IDLE_BYTES`.
    pin_memory
        Page-locked buffers (a suspended state goes back to the GPU fast and
        asynchronously); ``None``: pinned exactly when CUDA is available. Default
        ``False``: a transport that stages into pinned memory copies out and frees it
        right away, which torch's caching host allocator already serves from warm memory.

    :meth:`lend` returns a ``uint8`` tensor over a numpy view of a buffer the pool owns.
    Every tensor made from it (slices, dtype views, the unpacked state's tensors) holds
    that view through its storage; when the last of them is gone the view dies, a
    ``weakref.finalize`` hands the buffer back, and the next loan lands in pages that are
    already mapped. A loan never takes an idle buffer more than twice the size it would
    allocate, so a small state does not keep a large buffer for as long as it lives.

    Examples
    --------
    >>> pool = ReceivePool()
    >>> buf = pool.lend(1000)
    >>> ptr = buf.data_ptr()
    >>> del buf                       # the received state went away
    >>> pool.lend(1000).data_ptr() == ptr
    True
    """

    def __init__(self, *, max_idle_bytes: int | None = None, pin_memory: bool | None = False) -> None:
        self.max_idle_bytes = DEFAULT_MAX_IDLE_BYTES if max_idle_bytes is None else int(max_idle_bytes)
        if self.max_idle_bytes < 0:
            raise ValueError(f"max_idle_bytes must be >= 0, got {max_idle_bytes!r}")
        cuda = torch.cuda.is_available()
        self.pin_memory = cuda if pin_memory is None else bool(pin_memory and cuda)
        self._idle: list[np.ndarray] = []
        self._lock = threading.RLock()  # a loan may come back on any thread, also inside lend()
        #: Bytes of buffers some tensor still uses.
        self.lent_bytes = 0
        #: Buffers allocated and loans served from an idle buffer (for metrics and tests).
        self.allocated = 0
        self.reused = 0

    @property
    def idle_bytes(self) -> int:
        """Bytes held in idle buffers."""
        with self._lock:
            return sum(a.nbytes for a in self._idle)

    def lend(self, nbytes: int) -> torch.Tensor:
        """A 1-D ``uint8`` host tensor of exactly ``nbytes`` bytes (contents undefined)."""
        if nbytes < 0:
            raise ValueError(f"cannot lend a buffer of {nbytes} bytes")
        with self._lock:
            best = _best_fit([a.nbytes for a in self._idle], nbytes, most=2 * _rounded(nbytes))
            if best is not None:
                base = self._idle.pop(best)
                self.reused += 1
            else:
                base = None
                self.allocated += 1
        if base is None:  # allocated outside the lock (pinning is slow)
            # torch's allocator aligns to 64 bytes (numpy's large arrays start 16 bytes into
            # a page, which made copies into them 1.4x slower); the array keeps the tensor alive.
            base = torch.empty(_rounded(nbytes), dtype=torch.uint8, pin_memory=self.pin_memory).numpy()
        with self._lock:
            self.lent_bytes += base.nbytes
        view = base[:nbytes]
        weakref.finalize(view, self._give_back, base)
        return torch.from_numpy(view)

    def copy(self, state: SessionState, *, non_blocking: bool = False) -> SessionState:
        """A host copy of ``state`` (any device) in one lent buffer: where a suspended state is parked.

        The copy's tensors are views of the buffer, which comes back by itself when they
        are gone (the session was restored to its device, or left). A state under
        :data:`LEND_MIN_BYTES` is copied into memory of its own (pinned like the pool's).
        ``non_blocking`` lets copies from a GPU into pinned buffers run asynchronously;
        the call still waits for them, so the copy is complete when it returns.
        """
        if state.nbytes < LEND_MIN_BYTES:
            return state.to("cpu", pin_memory=self.pin_memory, non_blocking=non_blocking)
        buffer = self.lend(flat_layout(state.meta()["tensors"]).nbytes)
        return state.with_tensors(_copy_into(state, buffer, non_blocking=non_blocking and self.pin_memory))

    def _give_back(self, base: np.ndarray) -> None:
        with self._lock:
            self.lent_bytes -= base.nbytes
            if sum(a.nbytes for a in self._idle) + base.nbytes <= self.max_idle_bytes:
                self._idle.append(base)


_RECEIVE_POOL: ReceivePool | None = None
_RECEIVE_POOL_LOCK = threading.Lock()


def receive_pool() -> ReceivePool:
    """This process's :class:`ReceivePool` (one per worker process, made on first use)."""
    global _RECEIVE_POOL
    with _RECEIVE_POOL_LOCK:
        if _RECEIVE_POOL is None:
            _RECEIVE_POOL = ReceivePool()
        return _RECEIVE_POOL
