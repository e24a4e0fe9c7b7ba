"""Batch-invariant execution: the ops whose rounding depends on the batch run row by row.

A batched step computes each session's numbers with the same formulas as a lone step,
but not necessarily with the same rounding: BLAS and oneDNN (cuBLAS, cuDNN on a GPU)
choose their blocking, kernel and thread split by the shapes of a call, so a
``[B*N, K] @ [K, O]`` GEMM or a batch-``B`` convolution may add the same products in
another order at another ``B`` (Thinking Machines, "Defeating nondeterminism in LLM
inference"; vLLM's batch-invariant mode swaps such kernels for fixed-tiling ones).

Nothing is rewritten in a kernel language here. Inside :func:`row_wise` the
transformer's ops whose arithmetic can depend on the batch size, the matrix products
(every ``nn.Linear``, and :func:`linear` for direct calls) and attention (see
:mod:`kernels.transformer`), are called once per batch row with that row's shapes, so
a session gets exactly the calls it would get alone. The rest of the transformer is
elementwise or reduces within one token (``layer_norm``, ``rms_norm``: one
independent row per token at any row count) and keeps its one call over the batch.
The VAE decode is made invariant by a fixed tile of sessions per call instead (see
:attr:`kernels.model.StreamingVideoModel.vae_tile`).

Measured cost and what "the same frames" means: ``kernels/README.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F

#: Byte alignment of the inputs of a row-wise call (the CPU allocator's): a row sliced
#: out of a batch at another alignment is copied, so BLAS sees what a lone row gives it.
ALIGN = 64

_ROW_WISE: contextvars.ContextVar[bool] = contextvars.ContextVar("turboserve_row_wise", default=False)


@contextlib.contextmanager
def row_wise(enabled: bool = True) -> Iterator[None]:
    """Run the batch-dependent ops of the code inside one batch row at a time.

    Scoped to the calling thread (a :class:`contextvars.ContextVar`), so another thread
    stepping the same weights is not affected.
    """
    token = _ROW_WISE.set(enabled)
    try:
        yield
    finally:
        _ROW_WISE.reset(token)


def is_row_wise() -> bool:
    """Whether the calling code runs inside :func:`row_wise`."""
    return _ROW_WISE.get()


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy in the same layout when its CPU data is not :data:`ALIGN`-aligned."""
    if t.device.type == "cpu" and t.data_ptr() % ALIGN:
        return t.clone(memory_format=torch.preserve_format)
    return t


def rows(x: torch.Tensor) -> list[torch.Tensor]:
    """The batch rows of ``x``, each a batch of one (aligned, see :func:`aligned`)."""
    return [aligned(x[b : b + 1]) for b in range(x.shape[0])]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``; inside :func:`row_wise`, one call per row of a batched ``x`` (3-D or more).

    Examples
    --------
    >>> x, w = torch.randn(3, 4, 8), torch.randn(5, 8)
    >>> with row_wise():
    ...     y = linear(x, w)
    >>> torch.equal(y[1], F.linear(x[1:2], w)[0])
    True
    """
    if not _ROW_WISE.get() or x.dim() < 3:
        return F.linear(x, weight, bias)
    if x.shape[0] == 1:
        return F.linear(aligned(x), weight, bias)
    return torch.cat([F.linear(r, weight, bias) for r in rows(x)])


class RowWiseLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear` (the same parameters and state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, weight, bias)``, one call per row inside :func:`row_wise`."""
        return linear(x, self.weight, self.bias)


def install_row_wise_linears(module: torch.nn.Module) -> int:
    """Make every ``nn.Linear`` in ``module`` a :class:`RowWiseLinear` in place (idempotent).

    Only the class changes (parameters, buffers, hooks and ``state_dict`` keys stay),
    and outside :func:`row_wise` the forward is ``nn.Linear``'s single ``F.linear``
    call. Returns how many were changed now.
    """
    count = 0
    for mod in module.modules():
        if type(mod) is torch.nn.Linear:
            mod.__class__ = RowWiseLinear
            count += 1
    return count


__all__ = ["ALIGN", "RowWiseLinear", "aligned", "install_row_wise_linears", "is_row_wise", "linear", "row_wise", "rows"]
