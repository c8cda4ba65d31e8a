"""Compiled CPU kernels for the LUT layer and the thermometer (issue 15).

The plain-torch implementation in the autograd functions of the LUT layer and the
thermometer stays the reference and the fallback; those functions ask `use_compiled` and,
when it says yes, hand the call to `lut_forward`/`lut_backward` or
`thermometer_forward`/`thermometer_backward` here; GroupSum hands rows-layout input to
`group_sum_rows`; LUTMLP.quantize hands a quantizer that takes a gradient to `quantize`
(quantizer.py); LUTMLP.counts hands a block whose mappings are all fixed to `block_counts`
(block.py: the whole LUT path in one function, activations as bytes). See dispatch.py for QUWEIT_KERNELS
(auto / compiled / torch) and the fallback messages, build.py for the build and its cache.
"""

from . import block
from .block import block_counts
from .build import KernelBuildError, build_and_load, cache_root
from .dispatch import KernelFallbackWarning, mode, ops, use_compiled
from .group_sum import group_sum_rows
from .lut import compact_table, lut_backward, lut_forward
from .quantizer import quantize
from .thermometer import thermometer_backward, thermometer_forward

__all__ = [
    "KernelBuildError",
    "KernelFallbackWarning",
    "block",
    "block_counts",
    "build_and_load",
    "cache_root",
    "compact_table",
    "group_sum_rows",
    "lut_backward",
    "lut_forward",
    "mode",
    "ops",
    "quantize",
    "thermometer_backward",
    "thermometer_forward",
    "use_compiled",
]
