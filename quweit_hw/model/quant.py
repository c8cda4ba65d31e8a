"""Quantization in torch: fake quantization for training, and the integer ops on int64 tensors.

Train mode (float, differentiable): `fake_quant` rounds to a grid with a straight-through
estimator, as in I-ViT's quantization-aware training (Li and Gu, ICCV 2023); `ActQuant` keeps
an activation's scale as an EMA of its max |x|; `weight_int` gives int8 weights with one
scale per output channel.

Eval mode (integers only): `requantize`, `add_aligned`, `isqrt`, `layernorm`, `softmax`,
`lookup`, `patches`, `linear` compute exactly what `quweit_hw.contract.integer` states (the
rounding and tie rules are written there), on int64 tensors; tests hold the two bit-exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contract import integer as spec

_EXP2 = torch.from_numpy(spec.EXP2_TABLE)


# --- fake quantization (train mode) ------------------------------------------------------------


def round_half_up(x: Tensor) -> Tensor:
    """floor(x + 0.5): the integer ops' tie rule, so train and eval round alike."""
    return torch.floor(x + 0.5)


def fake_quant(x: Tensor, scale, lo: int, hi: int) -> Tensor:
    """clamp(round_half_up(x / scale), lo, hi) * scale; gradient 1 inside the range, 0 where clamped."""
    y = x / scale
    q = y + (round_half_up(y) - y).detach()
    return q.clamp(lo, hi) * scale


def weight_int(w: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel weights: (w_int, scale) with scale (out,) = max |w[o]| / 127
    (at least 1e-12) and w_int = clamp(round_half_up(w / scale), -127, 127), float exact integers."""
    hi = (1 << (bits - 1)) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.detach().abs().amax(1) / hi).clamp(min=1e-12)  # (out,)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return round_half_up(w.detach() / scale.view(shape)).clamp(-hi, hi), scale


def fake_weight(w: Tensor, bits: int = 8) -> Tensor:
    """w on its per-output-channel int8 grid, straight-through to w."""
    hi = (1 << (bits - 1)) - 1
    _, scale = weight_int(w, bits)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return fake_quant(w, scale.view(shape), -hi, hi)


class ActQuant(nn.Module):
    """A signed `bits`-bit activation quantizer with scale = amax / (2**(bits-1) - 1).

    `amax` is an EMA (momentum 0.9) of `headroom` times the batch max |x| in train mode, set
    outright on the first batch; amax = 0 means not calibrated yet, and then the quantizer is
    the identity. headroom > 1 leaves room above the batches seen for inputs that exceed them
    (a wide grid, such as the int16 residual stream, can spare the bits).
    """

    def __init__(self, bits: int = 8, momentum: float = 0.9, headroom: float = 1.0):
        super().__init__()
        if not headroom >= 1.0:
            raise ValueError(f"headroom must be >= 1, not {headroom!r}")
        self.bits = bits
        self.momentum = momentum
        self.headroom = headroom
        self.register_buffer("amax", torch.tensor(0.0))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def calibrated(self) -> bool:
        return bool(self.amax > 0)

    def scale(self) -> float:
        """The frozen scale (float) the integer export uses."""
        return float(self.amax.clamp(min=1e-12)) / self.qmax

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                batch = x.detach().abs().max().to(self.amax) * self.headroom
                if self.amax > 0:
                    self.amax.mul_(self.momentum).add_((1 - self.momentum) * batch)
                else:
                    self.amax.copy_(batch)
        if not self.amax > 0:
            return x
        s = self.amax.clamp(min=1e-12) / self.qmax
        return fake_quant(x, s, -self.qmax - 1, self.qmax)


# --- integer ops (eval mode), exactly quweit_hw.contract.integer ---------------------------------


def saturate(x: Tensor, bits: int) -> Tensor:
    lo, hi = spec.signed_limits(bits)
    return x.clamp(lo, hi)


def rshift_round(x: Tensor, s) -> Tensor:
    """(x + 2**(s-1)) >> s for s >= 1, x for s = 0 (round half up); int64."""
    s = torch.as_tensor(s, dtype=torch.int64, device=x.device)
    half = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))
    return (x + half) >> s


def requantize(acc: Tensor, m, s, bits: int = 8) -> Tensor:
    """saturate(round_half_up(acc * m / 2**s), bits); m, s per output channel (last axis)."""
    m = torch.as_tensor(m, dtype=torch.int64, device=acc.device)
    return saturate(rshift_round(acc * m, s), bits)


def add_aligned(x: Tensor, acc: Tensor, m, s, bits: int = 16) -> Tensor:
    """saturate(x + round_half_up(acc * m / 2**s), bits): the residual add, branch aligned to x's scale."""
    m = torch.as_tensor(m, dtype=torch.int64, device=acc.device)
    return saturate(x + rshift_round(acc * m, s), bits)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (..., K) @ w (C, K)^T + b: int64 accumulators (..., C)."""
    acc = torch.matmul(x, w.t())
    return acc if b is None else acc + b


def _bit_length(n: Tensor) -> Tensor:
    length = torch.zeros_like(n)
    for step in (32, 16, 8, 4, 2, 1):
        big = n >= (1 << step)
        n = torch.where(big, n >> step, n)
        length = length + torch.where(big, step, 0)
    return length + (n > 0).long()


def isqrt(n: Tensor) -> Tensor:
    """floor(sqrt(n)) for 0 <= n < 2**62: Newton from 2**ceil(bitlen/2), ISQRT_ITERATIONS steps, x <- min(x, step)."""
    x = torch.ones_like(n) << ((_bit_length(n) + 1) >> 1)
    for _ in range(spec.ISQRT_ITERATIONS):
        x = torch.minimum(x, (x + torch.div(n, x.clamp(min=1), rounding_mode="floor")) >> 1)
    return x


def layernorm(x: Tensor, g: Tensor, b: Tensor, m, s, bits: int = 8) -> Tensor:
    """Integer LayerNorm over the last axis (contract.integer.layernorm): one division per token."""
    C = x.shape[-1]
    d = C * x - x.sum(-1, keepdim=True)  # (..., C)
    V = (d * d).sum(-1, keepdim=True)  # (..., 1)
    sigma = isqrt(torch.div(V, C, rounding_mode="floor")).clamp(min=1)
    r = torch.div(torch.full_like(sigma, 1 << spec.LN_RECIP_BITS), sigma, rounding_mode="floor")
    z = rshift_round(d * r, spec.LN_RECIP_BITS - spec.LN_FRAC_BITS)  # (..., C)
    return requantize(z * g + b, m, s, bits)


def softmax(scores: Tensor, m, s) -> Tensor:
    """Integer softmax over the last axis (contract.integer.softmax): probabilities in [0, 255]."""
    delta = (scores.amax(-1, keepdim=True) - scores).clamp(max=spec.DELTA_MAX)
    m = torch.as_tensor(m, dtype=torch.int64, device=scores.device)
    u = rshift_round(delta * m, s).clamp(max=spec.EXP_U_MAX)
    table = _EXP2.to(scores.device)
    e = table[u & (2**spec.EXP_FRAC_BITS - 1)] >> (u >> spec.EXP_FRAC_BITS)
    Z = e.sum(-1, keepdim=True)
    R = torch.div(torch.full_like(Z, spec.PROB_MAX << spec.PROB_RECIP_BITS), Z, rounding_mode="floor")
    return rshift_round(e * R, spec.PROB_RECIP_BITS)


def lookup(x: Tensor, table: Tensor, lo: int = -128) -> Tensor:
    return table[x - lo]


def patches(pixels: Tensor, patch: int) -> Tensor:
    """uint8 (B, C, H, W) -> int64 (B, N, C*p*p) of pixel - 128, Conv2d weight order within a patch."""
    x = pixels.long() - 128
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // patch) * (W // patch), C * patch * patch)
