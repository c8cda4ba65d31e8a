"""The QuWeiT LUT-MLP block in torch: quantizer, thermometer, LUT layers, group sum, affine step."""

from __future__ import annotations

from dataclasses import dataclass

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..contract.bundle import signed_range
from . import kernels
from .lut import LUTLayer
from .options import (AFFINE_A_INIT, BIT_ORDERS, CALIBRATION_QUANTILE, DEEP_MAPPINGS, EFD_VARIANTS, MAPPINGS,
                      MAX_FAN_IN, THERMOMETER_KINDS, check_choice, check_int)
from .thermometer import Thermometer


class GroupSum(nn.Module):
    """(batch, C*k) -> (batch, C): sum of each group of k consecutive inputs, divided by tau."""

    def __init__(self, k: int, tau: float = 1.0):
        super().__init__()
        self.k = check_int("k", k, 1)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.tau = float(tau)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.k:
            raise ValueError(f"last dimension must be a multiple of k = {self.k}, got shape {tuple(x.shape)!r}")
        if x.dim() == 2 and x.t().is_contiguous() and kernels.use_compiled(x):
            s = kernels.group_sum_rows(x.t(), self.k)  # the LUT path's rows layout, without a transposing copy
        else:
            s = x.reshape(*x.shape[:-1], x.shape[-1] // self.k, self.k).sum(-1)
        return s if self.tau == 1.0 else s / self.tau


@dataclass(frozen=True)
class LUTMLPConfig:
    """The QuWeiT LUT-MLP block (docs/design.md). `window` applies to local mappings and restricts a
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
        check_int("d", self.d, 1)
        check_int("bits", self.bits, 2, 16)
        check_int("thresholds", self.thresholds, 1, 2**self.bits)
        check_choice("thermometer", self.thermometer, THERMOMETER_KINDS)
        check_int("n", self.n, 1, MAX_FAN_IN)
        if not isinstance(self.hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for width in self.hidden:
            check_int("hidden width", width, 1)
        check_int("group_size", self.group_size, 1)
        check_choice("mapping", self.mapping, MAPPINGS)
        check_choice("deep_mapping", self.deep_mapping, DEEP_MAPPINGS)
        check_int("window", self.window, self.n)
        check_choice("bit_order", self.bit_order, BIT_ORDERS)
        check_choice("efd", self.efd, EFD_VARIANTS)

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
        return signed_range(self.config.bits)[1]

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
        # with a gradient, one compiled pass each way, the same bits; without one the reference's
        # few ops are cheap, and an evaluation on an integer backend then never builds the kernels
        if h.requires_grad and torch.is_grad_enabled() and kernels.use_compiled(h, self.input_scale):
            return kernels.quantize(h, self.input_scale, -self.qmax - 1, self.qmax)
        x = h / self.input_scale
        q = x + (torch.round(x) - x).detach()
        return q.clamp(-self.qmax - 1, self.qmax)

    def counts(self, q: Tensor) -> Tensor:
        """q (N, d) -> (N, d) group popcounts in [0, group_size] (float, exact integers), differentiable."""
        c = self.config
        if q.dim() != 2 or q.shape[1] != c.d:
            raise ValueError(f"counts expects q of shape (N, {c.d}), got {tuple(q.shape)!r}")
        if kernels.block.supported(self, q):  # the whole LUT path in one compiled function
            for layer in self.layers:
                layer.clamp_tables()
            s = kernels.block_counts(self, q)
            return s if self.group_sum.tau == 1.0 else s / self.group_sum.tau
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
        """The block as integer arrays (the bundle's Block fields); see docs/bundle-format.md."""
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
