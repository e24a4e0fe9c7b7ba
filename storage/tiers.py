"""The three places a session's state can live, and the moves between device and host.

``DEVICE`` is where the model runs (a GPU, or the CPU on a CPU-only worker), ``HOST`` is
(pinned, when CUDA is present) host memory, ``DISK`` is a zarr checkpoint
(:class:`storage.checkpoint.CheckpointStore`). Offload frees device memory by dropping
the device tensors: the returned record holds the only copy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch

from kernels.state import SessionState


class Tier(enum.Enum):
    """Where a session's state lives."""

    DEVICE = "device"
    HOST = "host"
    DISK = "disk"

    @property
    def in_memory(self) -> bool:
        """Whether a state on this tier can be used or moved without reading storage."""
        return self is not Tier.DISK


def tier_of(state: SessionState) -> Tier:
    """``DEVICE`` when the tensors live on an accelerator, ``HOST`` when on the CPU."""
    return Tier.HOST if state.device.type == "cpu" else Tier.DEVICE


def is_pinned(state: SessionState) -> bool:
    """Whether every tensor is in page-locked host memory (False without tensors)."""
    return bool(state.tensors) and all(t.device.type == "cpu" and t.is_pinned() for t in state.tensors.values())


def offload_to_host(
    state: SessionState,
    *,
    release: bool = True,
    copy: Callable[[SessionState], SessionState] | None = None,
) -> SessionState:
    """Move the state to host memory, pinned when CUDA is available.

    Parameters
    ----------
    state
        A state on any device. A state already on the host is returned as is.
    release
        Empty ``state.tensors`` after the copy, so the device memory is returned to
        the allocator even if the caller still holds the old record (any later use
        of it fails loudly instead of reading stale tensors).
    copy
        Makes the host copy of a device state, e.g. into a reused buffer (a worker's
        engine parks suspended states in buffers of its
        :class:`workers.host_buffers.ReceivePool`); default: fresh host memory.

    Returns
    -------
    SessionState
        The same record on the host.
    """
    if tier_of(state) is Tier.HOST:
        return state
    if copy is None:
        host = state.to("cpu", pin_memory=torch.cuda.is_available(), non_blocking=True)
    else:
        host = copy(state)
    if release:
        state.tensors.clear()
    return host


def restore_to_device(state: SessionState, device: str | torch.device, *, non_blocking: bool = False) -> SessionState:
    """The state with every tensor on ``device`` (returned as is when already there).

    ``non_blocking=True`` lets the copy from pinned memory overlap with work already
    queued on the device's current stream; kernels queued after it see the data.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if state.tensors and all(t.device == device for t in state.tensors.values()):
        return state
    return state.to(device, non_blocking=non_blocking and is_pinned(state))
