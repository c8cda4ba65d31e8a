"""The LUT path of a LUT-MLP block (thermometer, fixed-mapping LUT layers, group popcount) as one
autograd function on the compiled kernels, called from quweit_hw.model.lutmlp.LUTMLP.counts when
`supported` says so.

Why one function instead of one per layer: between autograd functions activations must be float
tensors; inside one they travel as 0/1 bytes, and the first layer compares q with its thresholds
itself, so neither the (F*T, N) thermometer bits nor any float copy of a layer's output is
formed. The gradients are those of the reference chain, step for step and summed in the same
order: the table gradient and the EFD input gradient of each layer, the last layer reading its
group's output gradient without broadcasting it, and the thermometer's surrogate. The backward
runs in the blocked layout of blocked_kernels.cpp (blocks of 256 samples, each block of every
gradient row one contiguous region that stays in L2), where `kernels.lut`'s per-layer ops
stream whole rows.
"""

from __future__ import annotations

import threading

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
    plan = _plan(block, q.dtype)
    return _BlockFunction.apply(q, plan.thresholds, plan.width, plan, *(layer.luts for layer in block.layers))


class _Plan:
    """What the block's kernels read besides q and the tables, derived from its mappings and
    thresholds (buffers that training does not change): formed once and kept on the block while
    those buffers stay as they are."""

    def __init__(self, block, dtype):
        therm, nthr = block.thermometer, block.config.thresholds
        self.key = _plan_key(block, dtype)
        self.bit_rows = first_layer_rows(block)
        self.mappings = [layer.mapping.flatten() for layer in block.layers]
        self.efd = [layer._kernel for layer in block.layers]
        self.k = block.config.group_size
        self.thresholds = therm.thresholds.to(dtype).contiguous()
        self.width = therm.surrogate_width().to(dtype).contiguous()
        self.feature = torch.div(self.bit_rows, nthr, rounding_mode="floor")
        self.level = (self.bit_rows % nthr).to(torch.uint8)
        # strictly increasing thresholds (as Thermometer keeps them): bit t is [level > t] on one
        # byte per (feature, sample); otherwise compare q with each threshold
        t = self.thresholds
        self.by_level = nthr < 255 and bool((t[:, 1:] > t[:, :-1]).all())
        self.q_level = t.reshape(-1).index_select(0, self.bit_rows)
        self.zeros = [torch.zeros(m.numel(), dtype=torch.uint8) for m in self.mappings]  # 0/1 inputs: [x > 0]


_scratch = threading.local()


def scratch(name: str, shape: tuple, dtype) -> Tensor:
    """A tensor for a value that lives only inside one forward or one backward call (a layer's
    output bytes, a layer's input gradient), kept for the next call on this thread that asks
    for the same name (the blocks of a model share them: one block's call runs at a time; a
    new shape or dtype replaces the tensor: a short last batch costs an allocation, and the
    next full one another). They stay allocated for the thread's life.
    Fresh megabytes every step cost a page fault per 4 KB on first touch: 300-800 per step
    of the bench's block, more time than blocked_dx's own work. What outlives the call (the
    saved addresses, the returned gradients) is never taken from here."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    t = buffers.get(name)
    if t is None or t.shape != tuple(shape) or t.dtype != dtype:
        t = buffers[name] = torch.empty(shape, dtype=dtype)
    return t


def _plan_key(block, dtype) -> tuple:
    buffers = [block.thermometer.thresholds, *(layer.mapping for layer in block.layers)]
    return (dtype, block.config.bit_order, *((b.data_ptr(), b._version) for b in buffers))


def _plan(block, dtype) -> _Plan:
    plan = getattr(block, "_kernel_plan", None)
    if plan is None or plan.key != _plan_key(block, dtype):
        plan = _Plan(block, dtype)
        block._kernel_plan = plan
    return plan


class _BlockFunction(torch.autograd.Function):
    """q (N, F), thresholds (F, T), width (F,), plan, luts_0 .. luts_{L-1} -> counts (N, C)."""

    @staticmethod
    def forward(ctx, q, thresholds, width, plan, *luts):
        ops = dispatch.ops()
        q = q.contiguous()
        batch = q.shape[0]
        x, addrs = None, []
        for i, table in enumerate(luts):
            table = table.detach().contiguous()
            y = scratch(f"y{i}", (table.shape[0], batch), torch.uint8)  # read by the next layer only
            addr = torch.empty(-(-batch // ops.block_samples()), table.shape[0], ops.block_samples(), dtype=torch.uint8)
            if i == 0 and plan.by_level:
                levels = scratch("levels", (q.shape[1], batch), torch.uint8)
                ops.block_levels(q, thresholds, levels)
                ops.block_forward_bytes(levels, plan.feature, plan.level, table, y, addr)
            elif i == 0:
                ops.block_forward_q(q.t().contiguous(), plan.feature, plan.q_level, table, y, addr)
            else:
                ops.block_forward_bytes(x, plan.mappings[i], plan.zeros[i], table, y, addr)
            x = y
            addrs.append(addr)
        counts = q.new_empty(batch, x.shape[0] // plan.k)
        ops.block_group_counts(x, counts)
        ctx.plan, ctx.layers = plan, len(luts)
        ctx.save_for_backward(q, thresholds, width, *luts, *addrs)
        return counts

    @staticmethod
    def backward(ctx, gcounts):
        """The gradients in the blocked layout of blocked_kernels.cpp: (blocks, rows, S), S samples
        of a row contiguous, the batch padded to whole blocks; each layer's input gradient is the
        next one's output gradient in that layout, and the first layer's goes block by block
        into the thermometer's backward without being kept (blocked_dx_thermometer)."""
        ops = dispatch.ops()
        plan = ctx.plan
        bit_rows, mappings, efd, k = plan.bit_rows, plan.mappings, plan.efd, plan.k
        q, thresholds, width, *rest = ctx.saved_tensors
        luts, addrs = rest[: ctx.layers], rest[ctx.layers:]
        wants = ctx.needs_input_grad
        batch, nb = q.shape[0], -(-q.shape[0] // ops.block_samples())
        g = scratch("g", (nb, gcounts.shape[1], ops.block_samples()), gcounts.dtype)
        ops.columns_to_blocks(gcounts.contiguous(), g)
        group = k  # LUT j's output gradient: row j // k of g
        dq, dluts = None, [None] * ctx.layers
        for i in reversed(range(ctx.layers)):
            addr = addrs[i]  # blocked by the forward
            if wants[4 + i]:
                dluts[i] = torch.empty(luts[i].shape, dtype=g.dtype)
                ops.blocked_dluts(addr, g, dluts[i], batch, group)
            if not (wants[0] or any(wants[4:4 + i])):
                break
            e = compact_table(efd[i], luts[i])
            if i == 0:  # the thermometer's backward reads each block of dx as it is formed
                dq = q.new_empty(q.shape)
                ops.blocked_dx_thermometer(e, addr, g, bit_rows, q, thresholds, width, dq, group)
                break
            dx = scratch(f"dx{i}", (nb, luts[i - 1].shape[0], ops.block_samples()), g.dtype)  # the next step's g
            ops.blocked_dx(e, addr, g, mappings[i], dx, group)
            g, group = dx, 1
        return (dq, None, None, None, *dluts)
