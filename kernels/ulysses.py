"""Ulysses sequence parallelism by heads: the token/head exchange of one degree-k step.

A degree-``k`` group runs one chunk step on ``k`` ranks (one per worker/GPU), each
holding the full weights. Every per-token op (patch embedding's output rows, the
linears, norms, modulation, cross-attention, the FFN) runs on the rank's own slice of
the chunk's tokens (:meth:`HeadExchange.local_tokens`). Self-attention needs every
token, so around it the rank trades its tokens of all heads for all tokens of its
heads (:meth:`HeadExchange.to_heads`, one all-to-all for q, k and v together) and
back (:meth:`HeadExchange.to_tokens`); the output tokens are gathered once per
forward (:meth:`HeadExchange.all_tokens`). This is the DeepSpeed-Ulysses pattern as
xDiT and vLLM-Omni apply it to DiTs; the KV cache of a session is then naturally
sharded by heads (rank ``r`` holds heads ``r*H/k .. (r+1)*H/k - 1`` of every layer),
so a degree change moves whole heads and never gathers the cache.

The exchange is installed for the calling thread with :func:`sequence_parallel`
(a :class:`contextvars.ContextVar`, as :func:`kernels.invariance.row_wise`); the
chunk-causal transformer (:mod:`kernels.transformer`) asks :func:`current_exchange`.
Nothing here knows the model: the group is any ``torch.distributed`` process group
(or a bare gloo/NCCL backend object) with ``alltoall_base``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
from collections.abc import Iterator
from typing import Any

import torch

_EXCHANGE: contextvars.ContextVar["HeadExchange | None"] = contextvars.ContextVar(
    "turboserve_sequence_parallel", default=None
)

#: Seconds a collective may wait for the other ranks before it fails.
DEFAULT_TIMEOUT_S = 60.0


def token_splits(tokens: int, degree: int) -> list[int]:
    """Tokens of each rank: contiguous, sizes differing by at most one (``tensor_split``'s).

    >>> token_splits(10, 4)
    [3, 3, 2, 2]
    """
    base, extra = divmod(tokens, degree)
    return [base + (1 if r < extra else 0) for r in range(degree)]


def check_degree(num_heads: int, degree: int) -> None:
    """Raise ``ValueError`` unless ``degree`` is a positive divisor of ``num_heads``."""
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"parallel degree must be a positive integer, got {degree!r}")
    if num_heads % degree:
        fits = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ValueError(
            f"degree {degree} does not divide the model's {num_heads} attention heads "
            f"(Ulysses shards heads); use one of {fits}"
        )


class HeadExchange:
    """One rank's side of the token <-> head exchanges of a degree-``k`` group.

    Parameters
    ----------
    group
        A process group of ``degree`` ranks (``alltoall_base`` is all it needs).
    rank, degree
        This rank and the group size.
    timeout_s
        Seconds each collective may wait; a peer that died raises ``RuntimeError``.
    """

    def __init__(self, group: Any, rank: int, degree: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not 0 <= rank < degree:
            raise ValueError(f"rank {rank} is outside a group of degree {degree}")
        self.group = group
        self.rank = rank
        self.degree = degree
        self._timeout = datetime.timedelta(seconds=timeout_s)
        #: Bytes this rank sent through collectives so far (for benchmarks).
        self.bytes_sent = 0
        #: Tokens of the chunk in the current forward (the transformer sets it).
        self.tokens: int | None = None

    # ------------------------------------------------------------ token slices

    def local_tokens(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous slice of ``x`` along its token axis ``dim``."""
        sizes = token_splits(x.shape[dim], self.degree)
        start = sum(sizes[: self.rank])
        return x.narrow(dim, start, sizes[self.rank])

    def _alltoall(self, send: list[torch.Tensor], recv_sizes: list[int], like: torch.Tensor) -> list[torch.Tensor]:
        """Send ``send[j]`` (any shape) to rank ``j``; receive ``recv_sizes[i]`` elements from ``i``."""
        flat = torch.cat([s.reshape(-1) for s in send]).contiguous()
        out = torch.empty(sum(recv_sizes), dtype=like.dtype, device=like.device)
        in_sizes = [s.numel() for s in send]
        work = self.group.alltoall_base(out, flat, recv_sizes, in_sizes)
        work.wait(self._timeout)
        self.bytes_sent += (flat.numel() - in_sizes[self.rank]) * flat.element_size()
        return list(out.split(recv_sizes))

    # ------------------------------------------------------------ the three exchanges

    def to_heads(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """``[B, n_local, H, D]`` each -> ``[B, N, H/k, D]``: all tokens, this rank's heads.

        The tensors (q, k, v) travel in one all-to-all.
        """
        stacked = torch.stack(xs)  # [m, B, n, H, D]
        m, b, n, h, d = stacked.shape
        hk = h // self.degree
        per_rank = stacked.unflatten(3, (self.degree, hk))  # [m, B, n, k, hk, D]
        send = [per_rank[:, :, :, j] for j in range(self.degree)]
        sizes = token_splits(self._total_tokens(n), self.degree)
        got = self._alltoall(send, [m * b * s * hk * d for s in sizes], stacked)
        full = torch.cat([g.view(m, b, s, hk, d) for g, s in zip(got, sizes)], dim=2)
        return list(full.unbind(0))

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H/k, N, D]`` (this rank's heads) -> ``[B, H, n_local, D]`` (its tokens)."""
        b, hk, n_all, d = x.shape
        sizes = token_splits(n_all, self.degree)
        send = list(x.split(sizes, dim=2))
        mine = sizes[self.rank]
        got = self._alltoall(send, [b * hk * mine * d] * self.degree, x)
        return torch.cat([g.view(b, hk, mine, d) for g in got], dim=1)

    def all_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n_local, C]`` -> ``[B, N, C]`` on every rank (the output head's gather)."""
        b, n, c = x.shape
        sizes = token_splits(self._total_tokens(n), self.degree)
        got = self._alltoall([x] * self.degree, [b * s * c for s in sizes], x)
        return torch.cat([g.view(b, s, c) for g, s in zip(got, sizes)], dim=1)

    def _total_tokens(self, local: int) -> int:
        # A local size does not pin the total down (sizes differ by one), so the
        # transformer sets the chunk's token count before the blocks run.
        if self.tokens is None:
            raise RuntimeError("HeadExchange.tokens is unset: the transformer sets it per forward")
        if token_splits(self.tokens, self.degree)[self.rank] != local:
            raise RuntimeError(f"rank {self.rank} holds {local} tokens, expected its share of {self.tokens}")
        return self.tokens


@contextlib.contextmanager
def sequence_parallel(exchange: HeadExchange | None) -> Iterator[None]:
    """Run the chunk-causal transformer in the calling thread over ``exchange``'s group."""
    token = _EXCHANGE.set(exchange)
    try:
        yield
    finally:
        _EXCHANGE.reset(token)


def current_exchange() -> HeadExchange | None:
    """The exchange installed by :func:`sequence_parallel` in this thread, or ``None``."""
    return _EXCHANGE.get()


__all__ = ["DEFAULT_TIMEOUT_S", "HeadExchange", "check_degree", "current_exchange", "sequence_parallel", "token_splits"]
