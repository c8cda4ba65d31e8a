"""LUTMLP.quantize on the compiled kernels (block_kernels.cpp): q = clamp(round(h / s), lo, hi)
with the straight-through gradient, one pass each way, equal to the reference bit for bit.
Called from quweit_hw.model.lutmlp.LUTMLP.quantize when `dispatch.use_compiled` says so."""

from __future__ import annotations

import torch
from torch import Tensor

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
    def backward(ctx, g):
        h, scale = ctx.saved_tensors
        dh = torch.empty_like(h)
        dispatch.ops().quantize_backward(h, g.contiguous(), scale, *ctx.range, dh)
        return dh, None, None, None


def quantize(h: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    """clamp(round(h / scale), lo, hi) (round half to even), gradient 1/scale inside [lo, hi]
    (the bounds included) and 0 outside, as LUTMLP.quantize's reference; differentiable in h."""
    return _QuantizeFunction.apply(h, scale, lo, hi)
