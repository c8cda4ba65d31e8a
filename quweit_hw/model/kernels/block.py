"""The LUT path of a LUT-MLP block (thermometer, fixed-mapping LUT layers, group popcount) as one
autograd function on the compiled kernels, called from quweit_hw.model.lutmlp.LUTMLP.counts when
`supported` says so.

Why one function instead of one per layer: between autograd functions activations must be float
tensors; inside one they travel as 0/1 bytes, and the first layer compares q with its thresholds
itself, so neither the (F*T, N) thermometer bits nor any float copy of a layer's output is
formed. The gradients are those of the reference chain, step for step: the table gradient and
the EFD input gradient of each layer with the same kernels as `kernels.lut`, the last layer
reading its group's output gradient without broadcasting it, and the thermometer's surrogate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch
from .lut import compact_table

MAX_FAN_IN = 8  # byte addresses


def supported(block, q: Tensor) -> bool:
    """True when `block` (a LUTMLP) may run its LUT path here: compiled kernels for q and the
    tables (see dispatch.use_compiled), every mapping fixed (a learnable one needs the float input
    rows for its products and runs layer by layer) and fan-in at most MAX_FAN_IN."""
    layers = block.layers
    if any(layer.mapping_kind == "learnable" or layer.n > MAX_FAN_IN for layer in layers):
        return False
    return dispatch.use_compiled(q, *(layer.luts for layer in layers))


def first_layer_rows(block) -> Tensor:
    """(out0*n,) int64: the feature-major thermometer bit row f*T + t that each input of the first
    layer reads (its mapping indexes the block's bit order)."""
    c = block.config
    m = block.layers[0].mapping.flatten()
    if c.bit_order == "threshold":  # row t*d + f
        m = (m % c.d) * c.thresholds + m // c.d
    return m.contiguous()


def block_counts(block, q: Tensor) -> Tensor:
    """q (N, d) -> (N, d) group popcounts of `block`'s LUT path (before GroupSum's tau),
    differentiable in q and every layer's table, equal to the reference's forward bit for bit."""
    therm = block.thermometer
    plan = (
        first_layer_rows(block),
        [layer.mapping.flatten() for layer in block.layers],
        [layer._kernel for layer in block.layers],
        block.config.group_size,
    )
    thresholds = therm.thresholds.to(q.dtype).contiguous()
    width = therm.surrogate_width().to(q.dtype).contiguous()
    return _BlockFunction.apply(q, thresholds, width, plan, *(layer.luts for layer in block.layers))


class _BlockFunction(torch.autograd.Function):
    """q (N, F), thresholds (F, T), width (F,), plan, luts_0 .. luts_{L-1} -> counts (N, C)."""

    @staticmethod
    def forward(ctx, q, thresholds, width, plan, *luts):
        ops = dispatch.ops()
        bit_rows, mappings, _, k = plan
        q = q.contiguous()
        batch, nthr = q.shape[0], thresholds.shape[1]
        feature = torch.div(bit_rows, nthr, rounding_mode="floor")
        # strictly increasing thresholds (as Thermometer keeps them): bit t is [level > t] on one
        # byte per (feature, sample); otherwise compare q with each threshold
        by_level = nthr < 255 and bool((thresholds[:, 1:] > thresholds[:, :-1]).all())
        x, addrs = None, []
        for i, table in enumerate(luts):
            table = table.detach().contiguous()
            y = torch.empty(table.shape[0], batch, dtype=torch.uint8)
            addr = torch.empty(table.shape[0], batch, dtype=torch.uint8)
            if i == 0 and by_level:
                levels = torch.empty(q.shape[1], batch, dtype=torch.uint8)
                ops.block_levels(q, thresholds, levels)
                ops.block_forward_bytes(levels, feature, (bit_rows % nthr).to(torch.uint8), table, y, addr)
            elif i == 0:
                level = thresholds.reshape(-1).index_select(0, bit_rows)
                ops.block_forward_q(q.t().contiguous(), feature, level, table, y, addr)
            else:
                zero = torch.zeros(mappings[i].numel(), dtype=torch.uint8)  # 0/1 outputs: bit = [x > 0]
                ops.block_forward_bytes(x, mappings[i], zero, table, y, addr)
            x = y
            addrs.append(addr)
        counts = q.new_empty(batch, x.shape[0] // k)
        ops.block_group_counts(x, counts)
        ctx.plan, ctx.layers = plan, len(luts)
        ctx.save_for_backward(q, thresholds, width, *luts, *addrs)
        return counts

    @staticmethod
    def backward(ctx, gcounts):
        ops = dispatch.ops()
        bit_rows, mappings, efd, k = ctx.plan
        q, thresholds, width, *rest = ctx.saved_tensors
        luts, addrs = rest[: ctx.layers], rest[ctx.layers:]
        wants = ctx.needs_input_grad
        g, group = gcounts.t().contiguous(), k  # (C, N): LUT j's output gradient is row j // k
        dq, dluts = None, [None] * ctx.layers
        for i in reversed(range(ctx.layers)):
            if wants[4 + i]:
                dluts[i] = torch.empty(luts[i].shape, dtype=g.dtype)
                ops.lut_dluts(addrs[i], g, dluts[i], group)
            if not (wants[0] or any(wants[4:4 + i])):
                break
            e = compact_table(efd[i], luts[i])
            if i > 0:
                dx = g.new_empty(luts[i - 1].shape[0], q.shape[0])
                ops.lut_dx(e, addrs[i], g, mappings[i], dx, 0, group)
                g, group = dx, 1
            else:
                dbits = g.new_empty(thresholds.numel(), q.shape[0])
                ops.lut_dx(e, addrs[0], g, bit_rows, dbits, 0, group)
                dq = q.new_empty(q.shape)
                ops.thermometer_backward(q, thresholds, width, dbits, dq)
        return (dq, None, None, None, *dluts)
