"""The streaming video model at degree k: session states sharded by heads, one step over k ranks.

A *parallel group* of degree ``k`` is ``k`` processes (one per worker/GPU), each with
the same weights, joined in a ``torch.distributed`` group (:func:`connect_group`:
NCCL between distinct GPUs, gloo otherwise). :class:`ParallelModel` runs
:meth:`kernels.model.StreamingVideoModel.step` on every rank at once under
:func:`kernels.ulysses.sequence_parallel`: each rank computes its slice of the
chunk's tokens and, inside self-attention, its ``H/k`` heads (Ulysses). Every rank
draws the same noise (the generator state is replicated), so the sampler's latents
agree everywhere; rank 0, the *leader*, alone decodes frames with the VAE.

A session's state at degree ``k`` is ``k`` :class:`~kernels.state.SessionState`
shards (:func:`shard_state`): rank ``r`` holds heads ``r*H/k .. (r+1)*H/k - 1`` of
every layer's KV cache, the prompt embedding and the generator state; the VAE cache
stays with the leader. Changing the degree moves whole heads (:func:`shard_state`,
:func:`merge_shards`, :func:`reshard_bytes`): from degree 1 to ``k`` the leader keeps
``1/k`` of the cache and sends the rest, and nothing is ever gathered in one place
except on the way back to degree 1.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .model import StreamingVideoModel
from .rendezvous_store import open_store
from .state import SessionState
from .ulysses import DEFAULT_TIMEOUT_S, HeadExchange, check_degree, sequence_parallel

#: Scalars a shard carries: its rank and the degree of its layout.
SHARD_RANK, SHARD_DEGREE = "shard.rank", "shard.degree"


def _is_kv(name: str) -> bool:
    return name.startswith("kv.")


def _is_vae(name: str) -> bool:
    return name.startswith("vae.")


def layout(state: SessionState) -> tuple[int, int]:
    """``(rank, degree)`` of a state's layout (``(0, 1)`` for an unsharded state)."""
    return int(state.scalars.get(SHARD_RANK, 0)), int(state.scalars.get(SHARD_DEGREE, 1))


def heads_of(num_heads: int, rank: int, degree: int) -> slice:
    """The heads rank ``rank`` of a degree-``degree`` group holds."""
    check_degree(num_heads, degree)
    per = num_heads // degree
    return slice(rank * per, (rank + 1) * per)


def shard_state(state: SessionState, rank: int, degree: int) -> SessionState:
    """Rank ``rank``'s shard of an unsharded ``state`` (copies; ``state`` is left as it is).

    Raises
    ------
    ValueError
        If ``state`` is itself a shard, or ``degree`` does not divide its heads.
    """
    if layout(state) != (0, 1):
        raise ValueError(f"shard_state takes a degree-1 state; this one is shard {layout(state)}: merge it first")
    num_heads = int(state.tensors["kv.0.k"].shape[0])
    heads = heads_of(num_heads, rank, degree)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.tensors.items():
        if _is_kv(name):
            tensors[name] = t[heads].clone()
        elif _is_vae(name):
            if rank == 0:
                tensors[name] = t.clone()
        else:
            tensors[name] = t.clone()
    shard = state.with_tensors(tensors)
    if degree > 1:
        shard.scalars[SHARD_RANK], shard.scalars[SHARD_DEGREE] = rank, degree
    return shard


def merge_shards(shards: Sequence[SessionState]) -> SessionState:
    """The degree-1 state of a session from its shards in rank order.

    Raises
    ------
    ValueError
        If the shards are not ranks ``0..k-1`` of one degree-``k`` layout of one
        session at one chunk.
    """
    if not shards:
        raise ValueError("merge_shards needs at least one shard")
    degree = len(shards)
    lead = shards[0]
    for r, s in enumerate(shards):
        if layout(s) != (r, degree) and not (degree == 1 and layout(s) == (0, 1)):
            raise ValueError(f"shard {r} of {degree} has layout {layout(s)}; pass every rank's shard in rank order")
        if (s.model, s.prompt, s.seed, s.chunk_index) != (lead.model, lead.prompt, lead.seed, lead.chunk_index):
            raise ValueError(
                f"shard {r} is of session ({s.prompt!r}, seed {s.seed}) at chunk {s.chunk_index}, the leader's "
                f"of ({lead.prompt!r}, seed {lead.seed}) at chunk {lead.chunk_index}: shards of one session only"
            )
    tensors: dict[str, torch.Tensor] = {}
    for name, t in lead.tensors.items():
        tensors[name] = torch.cat([s.tensors[name] for s in shards]) if _is_kv(name) else t
    merged = lead.with_tensors(tensors)
    merged.scalars.pop(SHARD_RANK, None)
    merged.scalars.pop(SHARD_DEGREE, None)
    return merged


def reshard_bytes(state: SessionState, degree: int) -> int:
    """Bytes that cross between ranks to take a degree-1 ``state`` to ``degree`` (or back).

    ``(k-1)/k`` of the KV cache plus, for each follower, the prompt embedding and the
    generator state; the VAE cache stays on the leader.
    """
    kv = sum(t.numel() * t.element_size() for n, t in state.tensors.items() if _is_kv(n))
    small = sum(t.numel() * t.element_size() for n, t in state.tensors.items() if not (_is_kv(n) or _is_vae(n)))
    return kv * (degree - 1) // degree + small * (degree - 1)


class RankGroup:
    """This process's end of a ``degree``-rank group (from :func:`connect_group`).

    Holds the bare backend object and the rendezvous store (rank 0 serves it, so it
    lives as long as the group); :meth:`close` tears both down.
    """

    def __init__(self, backend: Any, store: Any, rank: int, degree: int, kind: str) -> None:
        self.backend, self.store = backend, store
        self.rank, self.degree, self.kind = rank, degree, kind

    def alltoall_base(self, out: torch.Tensor, inp: torch.Tensor, out_sizes: list[int], in_sizes: list[int]) -> Any:
        """The backend's ``alltoall_base`` (flat tensors, sizes in elements)."""
        return self.backend.alltoall_base(out, inp, out_sizes, in_sizes)

    def close(self, *, abort: bool = False) -> None:
        """Tear the group down (idempotent); ``abort`` after an error."""
        backend, self.backend, self.store = self.backend, None, None
        if backend is None:
            return
        try:
            backend.abort() if abort else backend.shutdown()
        except RuntimeError:
            pass


def connect_group(
    host: str,
    port: int,
    rank: int,
    degree: int,
    *,
    backend: str = "gloo",
    group_id: str = "default",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: torch.device | None = None,
) -> RankGroup:
    """Join the private ``degree``-rank group ``group_id``; rank 0 hosts the store at ``host:port``.

    The backend object (gloo or NCCL) is never registered as torch's default group,
    so a worker may belong to one group after another. Blocks until every rank
    joined; raises ``RuntimeError`` after ``timeout_s``.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    store = open_store(host, int(port), world_size=degree, is_master=rank == 0, timeout=timeout)  # on host only
    prefixed = dist.PrefixStore(f"turboserve/parallel/{group_id}", store)
    if backend == "gloo":
        pg = dist.ProcessGroupGloo(prefixed, rank, degree, timeout)
    elif backend == "nccl":
        from torch.distributed import ProcessGroupNCCL  # only present in CUDA builds

        if device is not None:
            torch.cuda.set_device(device)
        opts = ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = ProcessGroupNCCL(prefixed, rank, degree, opts)
    else:
        raise ValueError(f"unknown parallel backend {backend!r}; known: ['gloo', 'nccl']")
    return RankGroup(pg, store, rank, degree, backend)


class _HostStaged:
    """A gloo group used for device tensors: each collective goes through host memory."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def alltoall_base(self, out: torch.Tensor, inp: torch.Tensor, out_sizes: list[int], in_sizes: list[int]) -> Any:
        host_out = torch.empty(out.shape, dtype=out.dtype)
        work = self.group.alltoall_base(host_out, inp.cpu(), out_sizes, in_sizes)
        return _CopyBack(work, host_out, out)


class _CopyBack:
    def __init__(self, work: Any, src: torch.Tensor, dst: torch.Tensor) -> None:
        self.work, self.src, self.dst = work, src, dst

    def wait(self, timeout: Any = None) -> bool:
        self.work.wait(timeout) if timeout is not None else self.work.wait()
        self.dst.copy_(self.src)
        return True


class ParallelModel:
    """One rank of a degree-``k`` group stepping its shards of the group's sessions.

    Every rank calls :meth:`step` with its shards of the same sessions in the same
    order; the collectives inside pair them up.

    Parameters
    ----------
    model
        This rank's model (the same weights on every rank).
    group, rank, degree
        The group from :func:`connect_group` (ignored at degree 1), this rank, its size.
    host_staged
        Stage collectives through host memory (a gloo group serving CUDA models, e.g.
        several ranks on one GPU, where NCCL refuses to run); default: when the group
        is gloo and the model is not on the CPU.
    """

    def __init__(
        self,
        model: StreamingVideoModel,
        group: Any,
        rank: int,
        degree: int,
        *,
        host_staged: bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        check_degree(model.preset.num_heads, degree)
        self.model = model
        self.rank, self.degree = rank, degree
        if host_staged is None:
            host_staged = model.device.type != "cpu" and getattr(group, "kind", None) == "gloo"
        comm = _HostStaged(group) if host_staged else group
        self.exchange = HeadExchange(comm, rank, degree, timeout_s=timeout_s) if degree > 1 else None

    @property
    def leader(self) -> bool:
        """Whether this rank decodes the frames (rank 0)."""
        return self.rank == 0

    def step(self, shards: Sequence[SessionState], *, denoise_steps: int | None = None) -> list[np.ndarray]:
        """Advance this rank's shards by one chunk; frames on the leader, empty arrays elsewhere.

        Raises
        ------
        ValueError
            If a shard belongs to another rank or degree.
        RuntimeError
            If a peer fails or does not answer within the timeout (the shards are
            then left as they were before the step: a state is swapped whole).
        """
        for s in shards:
            if layout(s) != (self.rank, self.degree):
                raise ValueError(
                    f"rank {self.rank} of a degree-{self.degree} group got a shard of layout {layout(s)} "
                    f"(session {s.prompt!r}, seed {s.seed}); re-shard it with shard_state/merge_shards"
                )
        with sequence_parallel(self.exchange):
            return self.model.step(shards, denoise_steps=denoise_steps, decode=self.leader)


__all__ = [
    "SHARD_DEGREE",
    "SHARD_RANK",
    "ParallelModel",
    "RankGroup",
    "connect_group",
    "heads_of",
    "layout",
    "merge_shards",
    "reshard_bytes",
    "shard_state",
]
