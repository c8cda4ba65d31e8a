"""The golden model: the bundle's semantics in vectorized integer numpy, the single reference.

Torch eval, Amaranth simulation, cocotb on Verilog and the board must equal `counts`
bit for bit. Imports no torch.
"""

import numpy as np

from ..errors import UserError
from .bundle import signed_range


def check_tokens(block, q):
    """q as an int64 (N, d) array, checked against the block's width and signed b-bit range."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] != block.d:
        raise UserError(f"tokens must have shape (N, {block.d}) for block {block.name!r}, got {q.shape}")
    if q.size and not np.issubdtype(q.dtype, np.integer):
        if not np.array_equal(q, np.round(q)):
            raise UserError("tokens must be integers (quantized features)")
    q = q.astype(np.int64)
    lo, hi = signed_range(block.bits)
    if q.size and (q.min() < lo or q.max() > hi):
        raise UserError(f"tokens must be signed {block.bits}-bit, in [{lo}, {hi}]; got [{q.min()}, {q.max()}]")
    return q


def thermometer(block, q):
    """(N, d) tokens -> (N, d*T) uint8 bits, feature-major: bit f*T + t = [q_f > theta(f, t)]."""
    q = check_tokens(block, q)
    return (q[:, :, None] > block.thresholds[None, :, :]).reshape(len(q), -1).astype(np.uint8)


def lut_layer(layer, x):
    """(N, in) bits -> (N, out) bits: out_j = table[j, sum_l x[mapping[j, l]] << l]."""
    return _lut_layer_t(layer, np.ascontiguousarray(x.T)).T


def table_indices(layer, xt):
    """(out, N) indices into layer.table.ravel(): node j's address per column of the bits
    `xt` (in, N), plus j * 2**n. Feature-major (in, N) layout: gathering whole rows is a
    memcpy per LUT input, several times faster than gathering columns of (N, in)."""
    address = np.zeros((layer.out_features, xt.shape[1]), np.int32)  # (out, N)
    for l in range(layer.n):  # column 0 is the address LSB
        address |= xt[layer.mapping[:, l]].astype(np.int32) << l
    return address + (np.arange(layer.out_features, dtype=np.int32) << layer.n)[:, None]


def _lut_layer_t(layer, xt):
    return np.take(layer.table.ravel(), table_indices(layer, xt))


def group_popcount(block, x):
    """(N, d*k) bits -> (N, d) counts; group j is bits [j*k, (j+1)*k)."""
    return x.reshape(len(x), block.d, block.group_size).sum(axis=2, dtype=np.int64)


def stages(block, q):
    """Every stage's output: [thermometer bits, layer 0 bits, ..., counts]."""
    out = [thermometer(block, q)]
    xt = np.ascontiguousarray(out[0].T)
    for layer in block.layers:
        xt = _lut_layer_t(layer, xt)
        out.append(xt.T)
    out.append(group_popcount(block, out[-1]))
    return out


def counts(block, q, *, chunk=8192):
    """(N, d) signed b-bit tokens -> (N, d) int64 group popcounts, each in [0, group_size]."""
    q = check_tokens(block, q)
    parts = [stages(block, q[i:i + chunk])[-1] for i in range(0, len(q), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, block.d), np.int64)


def affine(block, c):
    """The float output y = a * c + b the model adds to its residual stream (float32, as torch)."""
    return block.affine_a[None, :] * np.asarray(c, np.float32) + block.affine_b[None, :]
