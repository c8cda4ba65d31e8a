"""The LUT layer's forward and backward on the compiled kernels, called from the reference's
autograd function (quweit_hw.model.lut._LUTFunction) when `dispatch.use_compiled` says so.

Same inputs, outputs and gradients as the reference; what differs is only how they are
formed: addresses are uint8 (n <= 8) or int32 instead of int64, and the EFD table is kept
compact, (out, n, 2**(n-1)), since E[j, l, a] does not depend on bit l of a.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from . import dispatch

# kernel (an _EFDKernel) -> {(dtype, device): the compact columns of its dense EFD matrix}
_compact_matrices: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compact_columns(n: int) -> Tensor:
    """(n * 2**(n-1),) int64: column l*2**n + a of the full EFD table for each compact entry
    (l, c), where a is c with a 0 bit inserted at position l (the inverse of the kernels'
    compact_index)."""
    size, half = 2**n, 2 ** (n - 1)
    c = torch.arange(half)
    cols = []
    for l in range(n):
        low = c & ((1 << l) - 1)
        cols.append(l * size + (low | ((c >> l) << (l + 1))))
    return torch.cat(cols)


def compact_table(kernel, luts: Tensor) -> Tensor:
    """luts (out, 2**n) -> E (out, n, 2**(n-1)) contiguous: E[j, l, c] = the reference EFD table
    kernel.table(luts)[j, l, a] at the address a whose bit l is 0 and whose other bits are c.

    For the exponential EFD on the CPU the compiled kernels form it in product form (a
    difference along bit l, then a 2x2 map along each other bit: about 1/10 of the dense
    product's work, equal to it up to rounding). Otherwise, where the reference forms E with
    one dense matmul, this multiplies by only the needed half of the same matrix; on the
    Walsh-Hadamard path it forms the reference table and picks the half."""
    n, luts = kernel.n, luts.detach()
    if kernel.efd == "exp" and luts.device.type == "cpu" and dispatch.use_compiled(luts):
        e = luts.new_empty(luts.shape[0], n, 2 ** (n - 1))
        dispatch.ops().efd_table_exp(luts.contiguous(), kernel.alpha, kernel.beta, e)
        return e
    consts = kernel._constants(luts.dtype, luts.device)
    if isinstance(consts, Tensor):  # the dense (2**n, n * 2**n) EFD matrix
        per_kernel = _compact_matrices.setdefault(kernel, {})
        key = (luts.dtype, str(luts.device))
        if key not in per_kernel:
            per_kernel[key] = consts[:, compact_columns(n).to(consts.device)].contiguous()
        return (luts @ per_kernel[key]).view(-1, n, 2 ** (n - 1))
    full = kernel.table(luts).reshape(luts.shape[0], -1)
    return full.index_select(1, compact_columns(n).to(full.device)).view(-1, n, 2 ** (n - 1))


def address_dtype(n: int) -> torch.dtype:
    """The dtype the kernels keep addresses in: one byte up to n = 8."""
    return torch.uint8 if n <= 8 else torch.int32


def lut_forward(ctx, x: Tensor, luts: Tensor, weights, mapping_flat: Tensor, kernel, learn) -> Tensor:
    """_LUTFunction.forward on the kernels: rows x (in, B) -> rows y (out, B) = [luts[j, addr] > 0],
    with mapping_flat (out*n,) the rows read (already the argmax ones for a learnable mapping).
    Saves on ctx what `lut_backward` needs and sets ctx.compiled."""
    ops = dispatch.ops()
    x = x.contiguous()
    out, batch = luts.shape[0], x.shape[1]
    mapping = mapping_flat.to(torch.int64).contiguous()
    y = x.new_empty(out, batch)
    addr = torch.empty(out, batch, dtype=address_dtype(kernel.n))
    ops.lut_forward(x, mapping, luts.detach().contiguous(), y, addr)
    ctx.compiled, ctx.kernel, ctx.learn, ctx.in_rows = True, kernel, learn, x.shape[0]
    ctx.save_for_backward(luts, addr, mapping, x if weights is not None else None, weights)
    return y


def lut_backward(ctx, g: Tensor):
    """_LUTFunction.backward on the kernels: the same seven gradients (dx, dluts, dweights, None...)."""
    luts, addr, mapping, x, weights = ctx.saved_tensors
    ops = dispatch.ops()
    g = g.contiguous()
    out, batch = addr.shape
    dx = dluts = dw = None
    if ctx.needs_input_grad[1]:
        dluts = torch.empty(luts.shape, dtype=g.dtype)
        ops.lut_dluts(addr, g, dluts)
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
        e = compact_table(ctx.kernel, luts)
        if weights is None:
            dx = g.new_empty(ctx.in_rows, batch)
            ops.lut_dx(e, addr, g, mapping, dx)
        else:
            gsel = g.new_empty(out * ctx.kernel.n, batch)
            ops.lut_gsel(e, addr, g, gsel)
            dx, dw = learnable_grads(ctx, gsel, x, weights)
    return dx, dluts, dw, None, None, None, None


def learnable_grads(ctx, gsel: Tensor, x: Tensor, weights: Tensor):
    """(dx, dweights) of a learnable mapping from gsel (out*n, B), the EFD gradient of the
    selected rows: dW = (2x-1)^T gsel and dx = gsel softmax(W/tau)^T over each column's window,
    as batched matmuls over blocks of LUTs sharing a span of rows (see _LUTFunction)."""
    tau, _, cols, index = ctx.learn
    (nb, span), (w, used), mn = cols.shape, weights.shape, index.shape[2]
    batch = gsel.shape[1]
    gb = gsel.new_zeros(nb * mn, batch)
    gb[:used] = gsel
    gb = gb.view(nb, mn, batch)
    dx = dw = None
    if ctx.needs_input_grad[2]:
        xb = (2 * x - 1).index_select(0, cols.flatten()).view(nb, span, batch)
        prod = torch.bmm(xb, gb.transpose(1, 2))  # (nb, span, m*n)
        dw = prod.gather(1, index).permute(1, 0, 2).reshape(w, nb * mn)[:, :used]
    if ctx.needs_input_grad[0]:
        soft = torch.softmax(weights / tau, dim=0)
        soft = torch.nn.functional.pad(soft, (0, nb * mn - used)).view(w, nb, mn).transpose(0, 1)
        band = soft.new_zeros(nb, span, mn).scatter_(1, index, soft)
        rows = torch.bmm(band, gb).view(nb * span, batch)
        dx = rows.new_zeros(x.shape).index_add_(0, cols.flatten(), rows)
    return dx, dw
