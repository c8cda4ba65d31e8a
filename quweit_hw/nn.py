"""DWN building blocks in plain torch: thermometer, LUT layers with EFD backward, group sum, LUT-MLP block.

Speed (no Python loop over samples or table entries; CPU and CUDA alike):
- inside the LUT path activations travel as *rows*, a (features, batch) tensor; the public
  `forward` methods take and return (batch, features), and between chained layers the
  transposes are free views;
- a fixed mapping is two cached sparse CSR matrices: (out, in) with entries 2**l, so one
  sparse @ dense product gives every LUT's address, and (in, out*n) with ones, which sums the
  EFD gradient of each input over the LUTs that read it;
- the EFD gradient is linear in a LUT's table: E = luts @ G^T forms it for every LUT,
  input bit and address at once (out, n, 2**n), then one gather picks each sample's address.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from quweit_hw.model import kernels  # compiled CPU kernels; the code here is their reference

THERMOMETER_KINDS = ("uniform", "gaussian", "distributive")
MAPPINGS = ("random", "learnable", "local", "arange")
DEEP_MAPPINGS = ("local", "random")
EFD_VARIANTS = ("exp", "linear")
BIT_ORDERS = ("feature", "threshold")
MAX_FAN_IN = 16
# Dense EFD matrices cost n * 4**n entries; above this fan-in the EFD table is formed with
# Walsh-Hadamard transforms instead (same numbers, O(n**2 2**n) per LUT, no big constant).
DENSE_EFD_MAX_N = 8
# calibrate(): s_in maps this quantile of |h| to the largest code, so rare outliers clip
# instead of wasting the code range.
CALIBRATION_QUANTILE = 0.999
# LUTMLP affine init: y = a*c + b with a small and b = -a*k/2, so the fresh block's output is
# centred on zero with spread ~ a*sqrt(k)/2 (random tables give c ~ Binomial(k, 1/2)) and
# the residual stream it is added to starts almost undisturbed.
AFFINE_A_INIT = 0.02


def _check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- thermometer


class _ThermometerFunction(torch.autograd.Function):
    """x (N, F) -> bits as rows (F*T, N); backward is the triangular surrogate of Thermometer."""

    @staticmethod
    def forward(ctx, x, thresholds, width):
        if kernels.use_compiled(x, thresholds, width):  # compiled-kernel dispatch
            return kernels.thermometer_forward(ctx, x, thresholds, width)
        ctx.save_for_backward(x, thresholds, width)
        bits = x.t().unsqueeze(1) > thresholds.unsqueeze(2)  # (F, T, N)
        return bits.to(x.dtype).view(-1, x.shape[0])

    @staticmethod
    def backward(ctx, g):
        if getattr(ctx, "compiled", False):  # compiled-kernel dispatch
            return kernels.thermometer_backward(ctx, g)
        x, thresholds, width = ctx.saved_tensors
        dist = x.t().unsqueeze(1) - thresholds.unsqueeze(2)  # (F, T, N)
        # in place: this is the thermometer's only big temporary
        tri = dist.abs_().div_(width.view(-1, 1, 1)).neg_().add_(1).clamp_(min=0).mul_(g.view_as(dist))
        dx = (tri.sum(1) / width.view(-1, 1)).t()  # (N, F)
        return dx, None, None


class Thermometer(nn.Module):
    """Per-feature thermometer code: bit (f, t) = [x_f > thresholds[f, t]], at position f*bits + t.

    kind: "uniform" (evenly spaced between the feature's min and max), "gaussian" (mean +
    std * Phi^-1((t+1)/(T+1))) or "distributive" (quantiles: sorted[(N*(t+1)) // (T+1)]),
    the three encodings of DWN. Thresholds are kept strictly increasing per feature: after
    fitting, a tie is pushed up by a gap of 1e-3 * (feature range), at least 1e-5 * max(1, |theta|).

    Surrogate gradient: d bit(f,t) / d x_f = max(0, 1 - |x_f - theta_ft| / w_f) / w_f, a
    triangle of unit area (the step's height) centred on the threshold, with w_f = the mean
    threshold spacing of feature f (1 for a single threshold), at least `min_width`. Summed
    over t this is a smoothed derivative of the count of bits set, so layers before the
    encoder keep learning.
    """

    def __init__(self, num_features: int, bits: int, kind: str = "distributive", min_width: float = 0.0):
        super().__init__()
        self.num_features = _check_int("num_features", num_features, 1)
        self.bits = _check_int("bits", bits, 1)
        self.kind = _check_choice("kind", kind, THERMOMETER_KINDS)
        if not min_width >= 0:
            raise ValueError(f"min_width must be >= 0, got {min_width!r}")
        self.min_width = float(min_width)
        # unfitted default: spacing 1 around zero, so an unfitted encoder still works
        init = torch.arange(self.bits, dtype=torch.float32) - (self.bits - 1) / 2
        self.register_buffer("thresholds", init.repeat(self.num_features, 1))  # (F, T)

    def fit(self, x: Tensor) -> "Thermometer":
        """Fit the thresholds to samples x (N, num_features); returns self."""
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"fit expects x of shape (N, {self.num_features}), got {tuple(x.shape)!r}")
        x = x.detach().to(self.thresholds.device, torch.float64)
        n_samples, t = x.shape[0], torch.arange(1, self.bits + 1, dtype=torch.float64, device=x.device)
        if n_samples < 2:
            raise ValueError(f"fit needs at least 2 samples, got {n_samples!r}")
        lo, hi = x.min(0).values, x.max(0).values
        if self.kind == "uniform":
            theta = lo[:, None] + t[None, :] * ((hi - lo) / (self.bits + 1))[:, None]
        elif self.kind == "gaussian":
            z = torch.special.ndtri(t / (self.bits + 1))
            theta = x.mean(0)[:, None] + z[None, :] * x.std(0)[:, None]
        else:
            rank = [(n_samples * i) // (self.bits + 1) for i in range(1, self.bits + 1)]
            theta = x.sort(0).values[rank].t()
        gap = torch.maximum(1e-3 * (hi - lo), torch.full_like(lo, 1e-5))
        theta = theta.clone()
        for i in range(1, self.bits):  # loop over thresholds only: T is small
            floor = theta[:, i - 1] + torch.maximum(gap, 1e-5 * theta[:, i - 1].abs())
            theta[:, i] = torch.maximum(theta[:, i], floor)
        self.set_thresholds(theta)
        return self

    def set_thresholds(self, thresholds: Tensor) -> None:
        """Replace the thresholds; they must be finite, (num_features, bits), strictly increasing per row."""
        theta = torch.as_tensor(thresholds)
        if tuple(theta.shape) != (self.num_features, self.bits):
            raise ValueError(
                f"thresholds must have shape {(self.num_features, self.bits)!r}, got {tuple(theta.shape)!r}"
            )
        if not torch.isfinite(theta).all():
            raise ValueError(f"thresholds must be finite, got {theta[~torch.isfinite(theta)][0].item()!r}")
        steps = theta[:, 1:] - theta[:, :-1]
        if (steps <= 0).any():
            f, t = (steps <= 0).nonzero()[0].tolist()
            raise ValueError(
                f"thresholds must be strictly increasing, feature {f} has {theta[f, t].item()!r} "
                f"then {theta[f, t + 1].item()!r}"
            )
        self.thresholds.copy_(theta.to(self.thresholds))
        # float32 rounding of the copy can merge two very close thresholds
        if (self.thresholds[:, 1:] <= self.thresholds[:, :-1]).any():
            raise ValueError("thresholds are too close to stay strictly increasing in float32")

    def surrogate_width(self) -> Tensor:
        """(num_features,) width w_f of the triangular surrogate gradient (see the class docstring)."""
        theta = self.thresholds
        if self.bits == 1:
            w = torch.ones_like(theta[:, 0])
        else:
            w = (theta[:, -1] - theta[:, 0]) / (self.bits - 1)
        return w.clamp(min=max(self.min_width, 1e-12))

    def integer_thresholds(self, scale: float = 1.0, bits: int = 8) -> Tensor:
        """(F, T) int64 thresholds for inputs x = q * scale, q a signed `bits`-bit integer.

        For every representable q: (q > result[f, t]) == (q * scale > thresholds[f, t]), the
        product evaluated in the thresholds' dtype. The result is the largest q with
        q * scale <= theta, clamped to [-2**(bits-1) - 1, 2**(bits-1) - 1] (a clamped
        threshold is always or never exceeded, like the float one). Rounded thresholds may
        repeat: they are nondecreasing, not strictly increasing.
        """
        bits = _check_int("bits", bits, 1, 24)  # q * scale exact in float32
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        theta = self.thresholds
        qlo, qhi = -(2 ** (bits - 1)) - 1, 2 ** (bits - 1) - 1
        # floor(theta/scale) can be one off from the float product's verdict; correct it
        # with the very comparison it must reproduce (multiplication by scale > 0 is monotone)
        q = torch.floor(theta.double() / scale).clamp(qlo - 2, qhi + 2).to(theta.dtype)
        for _ in range(2):
            q = torch.where((q + 1) * scale <= theta, q + 1, q)
            q = torch.where(q * scale > theta, q - 1, q)
        return q.clamp(qlo, qhi).long()

    def encode_rows(self, x: Tensor) -> Tensor:
        """x (N, F) -> bits as rows (F*T, N), feature-major, with the surrogate gradient."""
        return _ThermometerFunction.apply(x, self.thresholds.to(x.dtype), self.surrogate_width().to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., F) -> float 0/1 bits (..., F*T), bit (f, t) at position f*T + t."""
        if x.shape[-1] != self.num_features:
            raise ValueError(f"expected last dimension {self.num_features}, got shape {tuple(x.shape)!r}")
        lead = x.shape[:-1]
        rows = self.encode_rows(x.reshape(-1, self.num_features))
        return rows.t().reshape(*lead, self.num_features * self.bits)


# ----------------------------------------------------------------------------- EFD


def efd_parts(n: int, efd: str = "exp", alpha: Optional[float] = None, beta: Optional[float] = None):
    """The EFD formula as two (n, 2**n) float64 tables: sign[l, k] and weight[l, z].

    d out / d x_l at address a = sum_k sign[l, k] * weight[l, a ^ k] * L[k], where
    sign[l, k] = +1 if bit l of k is set else -1 and weight[l, z] = w(H) with H the
    popcount of z ignoring bit l: w(H) = alpha * beta**H ("exp", DWN reference code,
    alpha = 0.5 * 0.75**(n-1), beta = 1/3) or 1 / (H + 1) ("linear", the DWN paper).
    """
    n = _check_int("n", n, 1, MAX_FAN_IN)
    _check_choice("efd", efd, EFD_VARIANTS)
    alpha = 0.5 * 0.75 ** (n - 1) if alpha is None else float(alpha)
    beta = 0.25 / 0.75 if beta is None else float(beta)
    k = torch.arange(2**n)
    bit = torch.arange(n)
    sign = (((k[None, :] >> bit[:, None]) & 1) * 2 - 1).double()  # (n, 2**n)
    ones = ((k[:, None] >> bit[None, :]) & 1).sum(1)  # popcount of z
    hamming = ones[None, :] - ((k[None, :] >> bit[:, None]) & 1)  # bit l ignored
    if efd == "exp":
        weight = alpha * beta ** hamming.double()
    else:
        weight = 1.0 / (hamming.double() + 1)
    return sign, weight


def _walsh_hadamard(x: Tensor, n: int) -> Tensor:
    """Unnormalised Walsh-Hadamard transform along the last axis (length 2**n)."""
    shape = x.shape
    x = x.reshape(-1, *([2] * n))
    for axis in range(1, n + 1):
        a, b = x.unbind(axis)
        x = torch.stack((a + b, a - b), dim=axis)
    return x.reshape(shape)


class _EFDKernel:
    """Forms E[j, l, a] = EFD gradient of LUT j w.r.t. input bit l at address a, for all j at once.

    E is linear in the table: E[j, l] = G[l] @ L[j], G[l, a, k] = sign[l, k] * weight[l, a ^ k].
    Up to DENSE_EFD_MAX_N, one matmul with the stacked G; above, the same sum as an XOR
    convolution, E_l = WHT(WHT(sign_l * L) * WHT(weight_l)) / 2**n.
    """

    def __init__(self, n: int, efd: str, alpha: Optional[float], beta: Optional[float]):
        self.n = n
        self.sign, self.weight = efd_parts(n, efd, alpha, beta)
        self._cache: dict = {}

    def _constants(self, dtype, device):
        key = (dtype, str(device))
        if key not in self._cache:
            n, size = self.n, 2**self.n
            if n <= DENSE_EFD_MAX_N:
                a = torch.arange(size)
                g = self.sign[:, None, :] * self.weight[:, a[:, None] ^ a[None, :]]  # (n, a, k)
                self._cache[key] = g.reshape(n * size, size).t().contiguous().to(device, dtype)
            else:
                self._cache[key] = (self.sign.to(device, dtype), _walsh_hadamard(self.weight, n).to(device, dtype))
        return self._cache[key]

    def table(self, luts: Tensor) -> Tensor:
        """luts (out, 2**n) -> E (out, n, 2**n)."""
        n, size = self.n, 2**self.n
        consts = self._constants(luts.dtype, luts.device)
        if n <= DENSE_EFD_MAX_N:
            return (luts @ consts).view(-1, n, size)
        sign, weight_hat = consts
        f_hat = _walsh_hadamard(luts[:, None, :] * sign[None], n)
        return _walsh_hadamard(f_hat * weight_hat[None], n) / size


def _sparse_pair(mapping_flat: Tensor, out: int, n: int, in_rows: int, dtype, spread: bool = True):
    """The two sparse matrices of a mapping: `address` (out, in) with entries 2**l at
    (j, mapping[j, l]), so address @ x is every LUT's address; `spread` (in, out*n) with ones at
    (mapping[c], c), so spread @ rows sums each input's gradient contributions (None unless `spread`)."""
    dev = mapping_flat.device
    lut = torch.arange(out, device=dev).repeat_interleave(n)
    weight = (2.0 ** torch.arange(n, device=dev, dtype=dtype)).repeat(out)
    pos = torch.arange(out * n, device=dev)
    return (
        _csr(lut, mapping_flat, weight, (out, in_rows)),
        _csr(mapping_flat, pos, torch.ones(out * n, device=dev, dtype=dtype), (in_rows, out * n)) if spread else None,
    )


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape) -> Tensor:
    """Sparse CSR matrix from COO triplets (duplicates summed). CSR @ dense is the fastest way
    torch offers to gather-and-sum rows on CPU (several times index_add_) and runs on CUDA."""
    coo = torch.sparse_coo_tensor(torch.stack((rows, cols)), values, shape, check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "CSR support is in beta": it is the fast path we want
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


class _LUTFunction(torch.autograd.Function):
    """Rows x (in, B) -> rows y (out, B) = [luts[j, addr] > 0]; EFD to x, straight-through to luts.

    Fixed mapping: `mapping_flat` (out*n,) are the input rows read. Learnable mapping
    (`weights` given, DWN): the rows read are (col_start + argmax(weights, 0)) % in, and the
    EFD gradient g_sel (out*n, B) of the selected rows flows on as dW = (2x-1)^T g_sel and
    dx = g_sel softmax(W/tau)^T. The candidates of column c are the rows
    (col_start[c] + p) % in, p < w; LUTs are grouped into blocks whose windows share
    `band_cols` (nb, span) rows, so both products are one batched matmul over the blocks;
    `band_index` (nb, w, m*n) is the row within a block's span of (p, column).
    """

    @staticmethod
    def forward(ctx, x, luts, weights, mapping_flat, kernel, learn, sparse):
        out, n = luts.shape[0], kernel.n
        if weights is not None:
            mapping_flat = (learn[1] + weights.argmax(0)) % x.shape[0]
        if kernels.use_compiled(x, luts):  # compiled-kernel dispatch
            return kernels.lut_forward(ctx, x, luts, weights, mapping_flat, kernel, learn)
        # addr[j] = sum_l x[mapping[j, l]] << l as one sparse (out, in) @ (in, B) product with
        # entries 2**l: exact in float (< 2**n <= 2**16) and no (out, n, B) temporary
        if sparse is None:
            sparse = _sparse_pair(mapping_flat, out, n, x.shape[0], x.dtype, spread=weights is None)
        addr = (sparse[0] @ x).long()  # (out, B)
        ctx.save_for_backward(luts, addr, x if weights is not None else None, weights)
        ctx.kernel, ctx.learn, ctx.spread = kernel, learn, sparse[1]
        return (luts.gather(1, addr) > 0).to(luts.dtype)  # (out, B)

    @staticmethod
    def backward(ctx, g):
        if getattr(ctx, "compiled", False):  # compiled-kernel dispatch
            return kernels.lut_backward(ctx, g)
        luts, addr, x, weights = ctx.saved_tensors
        (out, batch), n = addr.shape, ctx.kernel.n
        g = g.contiguous()
        dx = dluts = dw = None
        if ctx.needs_input_grad[1]:
            dluts = torch.zeros_like(luts).scatter_add_(1, addr, g)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[2]):
            return dx, dluts, dw, None, None, None, None
        e = ctx.kernel.table(luts)  # (out, n, 2**n)
        gsel = torch.gather(e, 2, addr.unsqueeze(1).expand(out, n, batch)).mul_(g.unsqueeze(1))
        gsel = gsel.view(out * n, batch)
        if weights is None:
            return ctx.spread @ gsel, dluts, None, None, None, None, None
        tau, _, cols, index = ctx.learn
        (nb, span), (w, used), mn = cols.shape, weights.shape, index.shape[2]
        gb = gsel.new_zeros(nb * mn, batch)
        gb[:used] = gsel
        gb = gb.view(nb, mn, batch)
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
        return dx, dluts, dw, None, None, None, None


# ----------------------------------------------------------------------------- LUT layer


class LUTLayer(nn.Module):
    """A layer of `out_features` n-input LUTs (DWN), trained with the Extended Finite Difference.

    Input (batch, in_features) float 0/1, output (batch, out_features) float 0/1. LUT j reads
    the inputs mapping_indices()[j] (column 0 is the address LSB) and outputs
    [luts[j, addr] > 0]. Backward: straight-through to luts[j, addr]; EFD to the inputs
    (see `efd_parts`). `luts` (out, 2**n) starts U(-1, 1) and is clamped to [-1, 1] in
    place at the start of every training-mode forward (as DWN does), so it stays there
    whatever the optimiser did in the last step.

    mapping:
      "random"     fixed; concatenated random permutations of the inputs (every input read
                   about equally often).
      "arange"     fixed; LUT j reads inputs (j*n + l) % in_features.
      "local"      fixed; n distinct inputs drawn from a window of `window` positions
                   centred on the middle of LUT j's share, (2j+1)*in // (2*out), wrapping.
      "learnable"  DWN: weights (w, out*n), forward argmax over each column, backward
                   dW = (2x-1)^T g and dx = g softmax(W/tau)^T. With window < in_features the
                   candidates of LUT j are its local window (w = window), else all inputs.
    window=None means the whole input. Random draws use `generator` (default: torch's global RNG).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n: int = 6,
        mapping: str = "random",
        efd: str = "exp",
        window: Optional[int] = None,
        tau: float = 1e-3,
        alpha: Optional[float] = None,
        beta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.in_features = _check_int("in_features", in_features, 1)
        self.out_features = _check_int("out_features", out_features, 1)
        self.n = _check_int("n", n, 1, MAX_FAN_IN)
        self.mapping_kind = _check_choice("mapping", mapping, MAPPINGS)
        self.efd = _check_choice("efd", efd, EFD_VARIANTS)
        if window is not None:
            _check_int("window", window, 1)
        self.window = min(window or in_features, in_features)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.tau = float(tau)
        self.check_binary = True
        self._sparse, self._sparse_key = None, None
        self._kernel = _EFDKernel(self.n, efd, alpha, beta)
        rng = dict(generator=generator)
        nin, nout, w = self.in_features, self.out_features, self.window
        if mapping in ("local", "learnable") and w < nin:
            centre = ((2 * torch.arange(nout) + 1) * nin) // (2 * nout)
            starts = centre - w // 2  # (out,) unwrapped, nondecreasing in j
        else:
            starts = torch.zeros(nout, dtype=torch.int64)
        if mapping == "learnable":
            self.weights = nn.Parameter(torch.rand(w, nout * self.n, **rng))
            self._init_band(starts)
        else:
            if mapping == "random":
                reps = -(-nout * self.n // nin)
                idx = torch.rand(reps, nin, **rng).argsort(1).flatten()[: nout * self.n]
            elif mapping == "arange":
                idx = torch.arange(nout * self.n) % nin
            else:
                if w < self.n:
                    raise ValueError(f"local mapping needs window >= n = {self.n}, got window {w!r}")
                offsets = torch.rand(nout, w, **rng).argsort(1)[:, : self.n]
                idx = (starts[:, None] + offsets) % nin
            self.register_buffer("mapping", idx.reshape(nout, self.n).contiguous())
        self.luts = nn.Parameter(torch.rand(nout, 2**self.n, **rng) * 2 - 1)

    def _init_band(self, starts: Tensor) -> None:
        """Index tensors of the banded learnable-mapping backward (see _LUTFunction)."""
        nout, n, w = self.out_features, self.n, self.window
        if w >= self.in_features:
            m = nout  # every LUT sees the whole input: one block, one plain matmul
        else:
            # blocks of m LUTs whose windows drift by about w/4: span ~1.25 w keeps the
            # wasted products small while the batched matmul stays large enough to be fast
            m = max(1, min(nout, round(w * nout / (4 * self.in_features))))
        nb = -(-nout // m)
        padded = torch.cat([starts, starts[-1:].expand(nb * m - nout)])
        block_start = padded[::m]  # (nb,)
        offset = padded - block_start.repeat_interleave(m)  # (nb*m,)
        span = int(offset.max()) + w
        cols = (block_start[:, None] + torch.arange(span)[None, :]) % self.in_features
        col_offset = offset.repeat_interleave(n).view(nb, 1, m * n)
        index = col_offset + torch.arange(w).view(1, w, 1)  # (nb, w, m*n)
        self.register_buffer("col_start", starts.repeat_interleave(n), persistent=False)
        self.register_buffer("band_cols", cols.contiguous(), persistent=False)
        self.register_buffer("band_index", index.contiguous(), persistent=False)

    def __getstate__(self):
        # the cached sparse matrices cannot be copied or pickled; they are rebuilt on demand
        state = self.__dict__.copy()
        state["_sparse"] = state["_sparse_key"] = None
        return state

    def mapping_indices(self) -> Tensor:
        """(out_features, n) int64 input indices read now (argmax for learnable); column 0 = address LSB."""
        if self.mapping_kind != "learnable":
            return self.mapping
        idx = (self.col_start + self.weights.detach().argmax(0)) % self.in_features
        return idx.view(self.out_features, self.n)

    def forward_rows(self, x: Tensor) -> Tensor:
        """Rows layout: x (in_features, B) -> (out_features, B). No input checks (internal fast path)."""
        if self.training:
            with torch.no_grad():
                self.luts.clamp_(-1, 1)
        if self.mapping_kind == "learnable":
            learn = (self.tau, self.col_start, self.band_cols, self.band_index)
            return _LUTFunction.apply(x, self.luts, self.weights, None, self._kernel, learn, None)
        # the sparse matrices of a fixed mapping are built once per (mapping, dtype, device)
        key = (self.mapping.data_ptr(), self.mapping._version, x.dtype, x.device)
        if self._sparse_key != key:
            self._sparse = _sparse_pair(self.mapping.flatten(), self.out_features, self.n, self.in_features, x.dtype)
            self._sparse_key = key
        return _LUTFunction.apply(x, self.luts, None, self.mapping.flatten(), self._kernel, None, self._sparse)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, in_features) float 0/1 -> (batch, out_features) float 0/1."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input of shape (batch, {self.in_features}), got {tuple(x.shape)!r}")
        if self.check_binary and not ((x == 0) | (x == 1)).all():
            bad = x[(x != 0) & (x != 1)][0].item()
            raise ValueError(f"LUTLayer input must be 0/1, got {bad!r}")
        return self.forward_rows(x.t().contiguous()).t()

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, n={self.n}, mapping={self.mapping_kind!r}, "
            f"efd={self.efd!r}, window={self.window}"
        )


class GroupSum(nn.Module):
    """(batch, C*k) -> (batch, C): sum of each group of k consecutive inputs, divided by tau."""

    def __init__(self, k: int, tau: float = 1.0):
        super().__init__()
        self.k = _check_int("k", k, 1)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.tau = float(tau)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.k:
            raise ValueError(f"last dimension must be a multiple of k = {self.k}, got shape {tuple(x.shape)!r}")
        if x.dim() == 2 and x.t().is_contiguous() and kernels.use_compiled(x):  # compiled-kernel dispatch
            s = kernels.group_sum_rows(x.t(), self.k)  # (the LUT path's rows layout, seen transposed)
        else:
            s = x.reshape(*x.shape[:-1], x.shape[-1] // self.k, self.k).sum(-1)
        return s if self.tau == 1.0 else s / self.tau


# ----------------------------------------------------------------------------- LUT-MLP block


@dataclass(frozen=True)
class LUTMLPConfig:
    """The QuWeiT LUT-MLP block (DESIGN.md). `window` applies to local mappings and restricts a
    learnable first-layer mapping to LUT j's local window; a window >= d*thresholds makes the
    learnable mapping unrestricted (plain DWN)."""

    d: int
    bits: int = 8
    thresholds: int = 16
    thermometer: str = "distributive"
    n: int = 6
    hidden: tuple[int, ...] = (2048,)
    group_size: int = 16
    mapping: str = "local"
    deep_mapping: str = "local"
    window: int = 32
    bit_order: str = "feature"
    efd: str = "exp"

    def __post_init__(self):
        _check_int("d", self.d, 1)
        _check_int("bits", self.bits, 2, 16)
        _check_int("thresholds", self.thresholds, 1, 2**self.bits)
        _check_choice("thermometer", self.thermometer, THERMOMETER_KINDS)
        _check_int("n", self.n, 1, MAX_FAN_IN)
        if not isinstance(self.hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for width in self.hidden:
            _check_int("hidden width", width, 1)
        _check_int("group_size", self.group_size, 1)
        _check_choice("mapping", self.mapping, MAPPINGS)
        _check_choice("deep_mapping", self.deep_mapping, DEEP_MAPPINGS)
        _check_int("window", self.window, self.n)
        _check_choice("bit_order", self.bit_order, BIT_ORDERS)
        _check_choice("efd", self.efd, EFD_VARIANTS)

    @property
    def widths(self) -> tuple[int, ...]:
        """Output widths of the LUT layers; the last is d * group_size."""
        return self.hidden + (self.d * self.group_size,)


class LUTMLP(nn.Module):
    """QuWeiT LUT-MLP block: quantize -> thermometer -> LUT layers -> group popcount -> y = a*c + b.

    h (..., d) -> y (..., d). The thermometer works on q, the quantized input in integer
    units, so its thresholds live in the q domain and `export_arrays` reproduces eval
    mode exactly. Random parts (mappings, tables) come from torch's global RNG.
    """

    def __init__(self, config: LUTMLPConfig):
        super().__init__()
        if not isinstance(config, LUTMLPConfig):
            raise TypeError(f"config must be a LUTMLPConfig, got {config!r}")
        self.config = c = config
        # one quantisation step is the finest spacing that matters on integer q
        self.thermometer = Thermometer(c.d, c.thresholds, c.thermometer, min_width=1.0)
        ins = (c.d * c.thresholds,) + c.widths[:-1]
        self.layers = nn.ModuleList(
            LUTLayer(i, o, c.n, c.mapping if k == 0 else c.deep_mapping, c.efd, c.window)
            for k, (i, o) in enumerate(zip(ins, c.widths))
        )
        self.group_sum = GroupSum(c.group_size)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.affine_a = nn.Parameter(torch.full((c.d,), AFFINE_A_INIT))
        self.affine_b = nn.Parameter(torch.full((c.d,), -AFFINE_A_INIT * c.group_size / 2))
        self.backend: Optional[Callable[[Tensor], Tensor]] = None

    @property
    def qmax(self) -> int:
        return 2 ** (self.config.bits - 1) - 1

    @torch.no_grad()
    def calibrate(self, h: Tensor) -> None:
        """Fit s_in and the thermometer from calibration activations h (N, d).

        s_in = the CALIBRATION_QUANTILE quantile of |h| / (2**(b-1) - 1) (falling back to
        max |h|, then 1, when that is zero). The thresholds are fitted on h / s_in clamped
        to the code range but not rounded, so quantiles do not pile up on integer ties.
        """
        d = self.config.d
        if h.dim() < 2 or h.shape[-1] != d:
            raise ValueError(f"calibrate expects h of shape (N, {d}), got {tuple(h.shape)!r}")
        h = h.detach().reshape(-1, d).to(self.input_scale.device, torch.float32)
        mag = h.abs().flatten()
        rank = max(1, min(mag.numel(), math.ceil(CALIBRATION_QUANTILE * mag.numel())))
        top = mag.kthvalue(rank).values
        if top <= 0:
            top = mag.max()
        scale = top.item() / self.qmax if top > 0 else 1.0
        self.input_scale.fill_(scale)
        self.thermometer.fit((h / scale).clamp(-self.qmax - 1, self.qmax))

    def quantize(self, h: Tensor) -> Tensor:
        """q = clamp(round(h / s_in), -2**(b-1), 2**(b-1)-1): float, exact integers (round half to
        even); straight-through gradient 1/s_in inside the range, 0 where clamped."""
        x = h / self.input_scale
        q = x + (torch.round(x) - x).detach()
        return q.clamp(-self.qmax - 1, self.qmax)

    def counts(self, q: Tensor) -> Tensor:
        """q (N, d) -> (N, d) group popcounts in [0, group_size] (float, exact integers), differentiable."""
        c = self.config
        if q.dim() != 2 or q.shape[1] != c.d:
            raise ValueError(f"counts expects q of shape (N, {c.d}), got {tuple(q.shape)!r}")
        rows = self.thermometer.encode_rows(q)  # (d*T, N) feature-major
        if c.bit_order == "threshold":
            rows = rows.view(c.d, c.thresholds, -1).transpose(0, 1).reshape(c.d * c.thresholds, -1)
        for layer in self.layers:
            rows = layer.forward_rows(rows)
        return self.group_sum(rows.t())

    def forward(self, h: Tensor) -> Tensor:
        """h (..., d) -> y (..., d) = a * c + b; in eval mode with `backend` set, c = backend(q)."""
        d = self.config.d
        if h.shape[-1] != d:
            raise ValueError(f"expected last dimension {d}, got shape {tuple(h.shape)!r}")
        q = self.quantize(h.reshape(-1, d))  # (N, d)
        if self.backend is not None and not self.training:
            c = torch.as_tensor(self.backend(q.detach().long())).to(h.device, h.dtype)
        else:
            c = self.counts(q)
        return (c * self.affine_a + self.affine_b).reshape(h.shape)

    @torch.no_grad()
    def export_arrays(self) -> dict:
        """The block as integer arrays (the bundle's Block fields); see CONTRACTS.md."""
        c = self.config
        layers = []
        for k, layer in enumerate(self.layers):
            m = layer.mapping_indices()
            if k == 0 and c.bit_order == "threshold":
                m = (m % c.d) * c.thresholds + m // c.d  # threshold-major t*d + f -> f*T + t
            layers.append(
                {
                    "mapping": m.cpu().numpy().astype(np.int32),
                    "table": (layer.luts > 0).cpu().numpy().astype(np.uint8),
                }
            )
        return {
            "thresholds": self.thermometer.integer_thresholds(1.0, c.bits).cpu().numpy().astype(np.int32),
            "layers": layers,
            "input_scale": float(self.input_scale),
            "affine_a": self.affine_a.detach().cpu().numpy().astype(np.float32),
            "affine_b": self.affine_b.detach().cpu().numpy().astype(np.float32),
            "bits": c.bits,
            "group_size": c.group_size,
        }
