"""Which implementation a LUT-layer or thermometer call runs: the compiled CPU kernels or the
plain-torch reference, and the one-time messages when the choice is not the fast one.

QUWEIT_KERNELS (read at every call, so tests and scripts may switch it):
  "auto"      (default) compiled kernels for float32/float64 CPU tensors; the reference
              elsewhere (CUDA, other dtypes: one warning per case) and, with one warning
              naming the fallback, when the kernels fail to build;
  "compiled"  as auto, but a failed build raises KernelBuildError (CI uses this to make
              sure the kernels build);
  "torch"     always the plain-torch reference.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import build

MODES = ("auto", "compiled", "torch")
SUPPORTED_DTYPES = (torch.float32, torch.float64)


class KernelFallbackWarning(UserWarning):
    """The plain-torch reference runs where the compiled kernels were expected."""


_state: dict = {"ops": None, "error": None}
_warned: set = set()


def mode() -> str:
    """The QUWEIT_KERNELS setting; raises ValueError for an unknown value."""
    value = os.environ.get("QUWEIT_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"QUWEIT_KERNELS must be one of {MODES}, got {value!r}")
    return value


def warn_once(key, message: str) -> None:
    """Emit `message` as a KernelFallbackWarning the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, KernelFallbackWarning, stacklevel=3)


def ops():
    """torch.ops.quweit_lut after building/loading the kernels once; None if the build failed
    (after one warning) in auto mode. Raises KernelBuildError in compiled mode."""
    if _state["ops"] is None and _state["error"] is None:
        try:
            build.build_and_load(build.SOURCE)
            _state["ops"] = getattr(torch.ops, build.LIBRARY)
        except build.KernelBuildError as exc:
            _state["error"] = exc
    if _state["error"] is not None:
        if mode() == "compiled":
            raise build.KernelBuildError(f"QUWEIT_KERNELS=compiled but the LUT kernels did not build: {_state['error']}")
        warn_once(
            "build",
            "quweit_hw: the compiled LUT kernels did not build, so LUT layers and thermometers run on "
            "the plain-torch fallback (QUWEIT_KERNELS=torch), about 10-20x slower to train. Cause: "
            f"{_state['error']}. `make setup` installs g++ and ninja; set QUWEIT_KERNELS=torch to "
            "choose the fallback and silence this.",
        )
        return None
    return _state["ops"]


def use_compiled(*tensors: torch.Tensor) -> bool:
    """True when this call should run the compiled kernels on `tensors` (the float operands).

    False for QUWEIT_KERNELS=torch; for a non-CPU device, an unsupported dtype or operands
    of different dtypes (one warning per case); and when the build failed (one warning,
    see `ops`).
    """
    if mode() == "torch":
        return False
    for t in tensors:
        if t.device.type != "cpu":
            warn_once(
                ("device", t.device.type),
                f"quweit_hw: no compiled LUT kernels for device {t.device.type!r}; the plain-torch "
                "implementation runs there",
            )
            return False
        if t.dtype not in SUPPORTED_DTYPES:
            warn_once(
                ("dtype", t.dtype),
                f"quweit_hw: the compiled LUT kernels take float32 or float64, not {t.dtype}; the "
                "plain-torch fallback runs for this dtype (slower)",
            )
            return False
    if len({t.dtype for t in tensors}) > 1:
        warn_once(
            ("mixed", tuple(t.dtype for t in tensors)),
            f"quweit_hw: the compiled LUT kernels need one dtype for all operands, got "
            f"{[str(t.dtype) for t in tensors]}; the plain-torch fallback runs for this mix (slower)",
        )
        return False
    return ops() is not None


def reset() -> None:
    """Forget the build outcome and the warnings given (for tests)."""
    _state["ops"] = _state["error"] = None
    _warned.clear()
