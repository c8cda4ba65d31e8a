"""The LUT-MLP's option names and ranges, and the checks every torch-side layer applies to them."""

from __future__ import annotations

from typing import Optional

import numpy as np

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


def check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
