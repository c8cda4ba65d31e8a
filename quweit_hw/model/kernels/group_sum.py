"""The group popcount of the LUT path on the compiled kernels, called from quweit_hw.model.lutmlp.GroupSum
when its input is the LUT path's rows layout seen as (batch, C*k) (a transposed view).

In plain torch that layout costs a transposing copy of the whole (C*k, batch) activation in
the forward or, summed along the rows, a slow strided broadcast copy in the backward; here
both directions are one pass that writes the other layout directly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch


class _GroupSumRows(torch.autograd.Function):
    """rows (C*k, B) contiguous -> counts (B, C): counts[b, c] = sum_m rows[c*k + m, b]."""

    @staticmethod
    def forward(ctx, rows, k):
        counts = rows.new_empty(rows.shape[1], rows.shape[0] // k)
        dispatch.ops().group_sum_forward(rows, counts)
        ctx.k = k
        return counts

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        drows = g.new_empty(g.shape[1] * ctx.k, g.shape[0])
        dispatch.ops().group_sum_backward(g, drows)
        return drows, None


def group_sum_rows(rows: Tensor, k: int) -> Tensor:
    """(B, C) sums of each group of k consecutive rows of `rows` (C*k, B), which must be contiguous
    with C*k a multiple of k (GroupSum checks); differentiable."""
    return _GroupSumRows.apply(rows, k)
