"""The state of one streaming session: everything needed to produce its next chunk.

A :class:`SessionState` is a typed record around a flat mapping of named tensors, so
the storage tiers (pinned host memory, zarr) and the migration transports can move it
without knowing the model: they only see ``(meta, tensors)``. The model gives the
names their meaning:

``prompt_embeds``
    the encoded prompt, ``[text_tokens, text_dim]``.
``kv.{layer}.k`` / ``kv.{layer}.v``
    the self-attention KV cache of earlier chunks for that transformer layer,
    ``[heads, cached_tokens, head_dim]`` (bounded by a rolling window plus sink frames).
``vae.{i}``
    the causal VAE decoder's feature cache (``vae.count`` in ``scalars`` says how many).
``rng``
    the session's random generator state (``torch.Generator.get_state()``, uint8).

Scalars (chunk counter, cache lengths, shape) live in ``scalars``. A session is fully
defined by ``(model, prompt, seed)``: the state after chunk ``k`` is a pure function of
them, which is what lets a crashed session be regenerated from an older checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: Bumped when the meaning or the names of the tensors change; checkpoints carry it.
STATE_FORMAT_VERSION = 1


@dataclass(eq=False)
class SessionState:
    """Tensors and scalars of one session (see the module docstring for the names)."""

    model: str
    prompt: str
    seed: int
    height: int
    width: int
    chunk_index: int = 0  # index of the next chunk to produce
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: dict[str, int | float | str] = field(default_factory=dict)
    format_version: int = STATE_FORMAT_VERSION

    # ------------------------------------------------------------ size and placement

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (the cost of offloading or migrating it)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def device(self) -> torch.device:
        """Device of the tensors (cpu when there are none)."""
        for t in self.tensors.values():
            return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device, *, pin_memory: bool = False, non_blocking: bool = False) -> "SessionState":
        """A copy of the state with every tensor on ``device``.

        ``pin_memory=True`` (with a CPU target and CUDA available) puts the host copies in
        page-locked memory, so the copy back to the GPU can overlap with compute.
        """
        device = torch.device(device)
        pin = pin_memory and device.type == "cpu" and torch.cuda.is_available()
        moved: dict[str, torch.Tensor] = {}
        for name, t in self.tensors.items():
            if pin:
                dst = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
                dst.copy_(t, non_blocking=non_blocking)
                moved[name] = dst
            else:
                moved[name] = t.to(device, non_blocking=non_blocking, copy=True)
        if pin and non_blocking:
            torch.cuda.synchronize()
        return self.with_tensors(moved)

    def with_tensors(self, tensors: dict[str, torch.Tensor]) -> "SessionState":
        """The same record with other tensors (scalars copied)."""
        return SessionState(
            model=self.model,
            prompt=self.prompt,
            seed=self.seed,
            height=self.height,
            width=self.width,
            chunk_index=self.chunk_index,
            tensors=tensors,
            scalars=dict(self.scalars),
            format_version=self.format_version,
        )

    # ------------------------------------------------------------ flat form for storage

    def meta(self) -> dict[str, Any]:
        """JSON-able description of the record (everything but the tensor data)."""
        return {
            "format_version": self.format_version,
            "model": self.model,
            "prompt": self.prompt,
            "seed": self.seed,
            "height": self.height,
            "width": self.width,
            "chunk_index": self.chunk_index,
            "scalars": dict(self.scalars),
            "tensors": {
                name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                for name, t in self.tensors.items()
            },
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "SessionState":
        """Rebuild a record from :meth:`meta` and its tensors."""
        return cls(
            model=meta["model"],
            prompt=meta["prompt"],
            seed=int(meta["seed"]),
            height=int(meta["height"]),
            width=int(meta["width"]),
            chunk_index=int(meta["chunk_index"]),
            tensors=dict(tensors),
            scalars=dict(meta.get("scalars", {})),
            format_version=int(meta["format_version"]),
        )

    def equal(self, other: "SessionState") -> bool:
        """Bit-exact equality of scalars and tensors (used by tests and checks)."""
        if self.meta() != other.meta():
            return False
        return all(_same_bytes(self.tensors[k], other.tensors[k]) for k in self.tensors)


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Compare raw bytes, not values: NaN != NaN under torch.equal, yet a NaN restored
    # bit for bit is exactly what a checkpoint must give back.
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a8 = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    b8 = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(a8, b8)
