"""LUTMLP.quantize on the compiled kernels (block_kernels.cpp): q = clamp(round(h / s), lo, hi)
(NaN for an infinite h/s, as the reference's x + (round(x) - x) gives) with the straight-through
gradient, one pass each way, equal to the reference bit for bit. Called from
quweit_hw.model.lutmlp.LUTMLP.quantize where a gradient is taken and `dispatch.use_compiled`
says so."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import dispatch


class _QuantizeFunction(torch.autograd.Function):
    """h (any shape), scale (0-dim, the buffer s_in), lo, hi -> q of h's shape."""

    @staticmethod
    def forward(ctx, h, scale, lo, hi):
        h, scale = h.contiguous(), scale.contiguous()
        q = torch.empty_like(h)
        dispatch.ops().quantize_forward(h, scale, float(lo), float(hi), q)
        ctx.save_for_backward(h, scale)
        ctx.range = (float(lo), float(hi))
        return q

    @staticmethod
    @once_differentiable  # dh is formed by the kernel: no graph for a second derivative
    def backward(ctx, g):
        h, scale = ctx.saved_tensors
        dh = torch.empty_like(h)
        dispatch.ops().quantize_backward(h, g.contiguous(), scale, *ctx.range, dh)
        return dh, None, None, None


def quantize(h: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    """clamp(round(h / scale), lo, hi) (round half to even; NaN where h / scale is infinite or
    NaN), gradient 1/scale inside [lo, hi] (the bounds included) and 0 outside, as
    LUTMLP.quantize's reference; differentiable in h."""
    return _QuantizeFunction.apply(h, scale, lo, hi)
