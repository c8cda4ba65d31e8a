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

import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from . import kernels  # compiled CPU kernels; the code here is their reference
from .options import DENSE_EFD_MAX_N, EFD_VARIANTS, MAPPINGS, MAX_FAN_IN, check_choice, check_int


def efd_parts(n: int, efd: str = "exp", alpha: Optional[float] = None, beta: Optional[float] = None):
    """The EFD formula as two (n, 2**n) float64 tables: sign[l, k] and weight[l, z].

    d out / d x_l at address a = sum_k sign[l, k] * weight[l, a ^ k] * L[k], where
    sign[l, k] = +1 if bit l of k is set else -1 and weight[l, z] = w(H) with H the
    popcount of z ignoring bit l: w(H) = alpha * beta**H ("exp", DWN reference code,
    alpha = 0.5 * 0.75**(n-1), beta = 1/3) or 1 / (H + 1) ("linear", the DWN paper).
    """
    n = check_int("n", n, 1, MAX_FAN_IN)
    check_choice("efd", efd, EFD_VARIANTS)
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
        self.n, self.efd = n, efd
        self.sign, self.weight = efd_parts(n, efd, alpha, beta)
        # "exp": weight[l, z] = alpha * beta**H is a product over bits (the compiled kernels use it)
        self.alpha = float(self.weight[0, 0])
        self.beta = float(self.weight[0, 2] / self.weight[0, 0]) if n >= 2 else 0.0
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
        # plain torch (batched matmuls), the same code on both paths: kernels.lut.learnable_grads
        dx, dw = kernels.lut.learnable_grads(ctx, gsel, x, weights)
        return dx, dluts, dw, None, None, None, None


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
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.n = check_int("n", n, 1, MAX_FAN_IN)
        self.mapping_kind = check_choice("mapping", mapping, MAPPINGS)
        self.efd = check_choice("efd", efd, EFD_VARIANTS)
        if window is not None:
            check_int("window", window, 1)
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

    def clamp_tables(self) -> None:
        """In training mode, clamp the tables to [-1, 1] in place (done before every forward)."""
        if self.training:
            with torch.no_grad():
                self.luts.clamp_(-1, 1)

    def forward_rows(self, x: Tensor) -> Tensor:
        """Rows layout: x (in_features, B) -> (out_features, B). No input checks (internal fast path)."""
        self.clamp_tables()
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
