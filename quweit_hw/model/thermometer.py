"""The thermometer encoder in torch: per-feature thresholds, bit(f, t) = [x_f > theta(f, t)],
with a surrogate gradient to x so the layers before a LUT-MLP keep learning."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..contract.bundle import signed_range
from . import kernels  # compiled CPU kernels; the code here is their reference
from .options import THERMOMETER_KINDS, check_choice, check_int


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
        self.num_features = check_int("num_features", num_features, 1)
        self.bits = check_int("bits", bits, 1)
        self.kind = check_choice("kind", kind, THERMOMETER_KINDS)
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
        bits = check_int("bits", bits, 1, 24)  # q * scale exact in float32
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        theta = self.thresholds
        qlo, qhi = signed_range(bits)
        qlo -= 1  # one below the range: a constant-1 bit, as the bundle allows
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
