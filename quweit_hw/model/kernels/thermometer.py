"""The thermometer's forward and backward on the compiled kernels, called from the reference's
autograd function (quweit_hw.model.thermometer._ThermometerFunction) when `dispatch.use_compiled` says so."""

from __future__ import annotations

from torch import Tensor

from . import dispatch


def thermometer_forward(ctx, x: Tensor, thresholds: Tensor, width: Tensor) -> Tensor:
    """x (N, F) -> bits as rows (F*T, N), bit (f, t) = [x[:, f] > thresholds[f, t]], equal to the
    reference bit for bit. Saves on ctx what `thermometer_backward` needs and sets ctx.compiled."""
    ops = dispatch.ops()
    x, thresholds = x.contiguous(), thresholds.contiguous()
    bits = x.new_empty(thresholds.numel(), x.shape[0])
    ops.thermometer_forward(x, thresholds, bits)
    ctx.compiled = True
    ctx.save_for_backward(x, thresholds, width.contiguous())
    return bits


def thermometer_backward(ctx, g: Tensor):
    """The triangular surrogate gradient of the reference: (dx (N, F), None, None)."""
    x, thresholds, width = ctx.saved_tensors
    dx = x.new_empty(x.shape)
    dispatch.ops().thermometer_backward(x, thresholds, width, g.contiguous(), dx)
    return dx, None, None
