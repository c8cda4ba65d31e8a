"""The comparator bank: the thermometer encoder in hardware, [q_f > theta] per kept comparator."""

import numpy as np
from amaranth.hdl import Const, Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..contract.bundle import signed_range
from .wide import assign_chunked


class ComparatorBank(wiring.Component):
    """The thermometer: bit k of `o` is [q_f > theta] for the k-th kept comparator.

    Kept: the (feature, threshold) pairs some layer-0 LUT reads, each distinct pair
    once (equal thresholds of a feature share one comparator). `bit_index[f*T + t]`
    is the output bit that carries thermometer bit (f, t), or -1 where no LUT reads it.
    A threshold below the input range is a constant 1, one at or above its top a
    constant 0: neither costs a comparator. `used`: the (d, T) bits to keep instead of
    those the bundle's layer 0 reads (a minimised layer 0 may read fewer).
    """

    def __init__(self, block, used=None):
        used = block.used_thresholds() if used is None else np.asarray(used, bool)
        self.bits = block.bits
        self.comparators = []  # [(feature, theta)], in feature-major order
        self.bit_index = np.full(block.d * block.T, -1, np.int64)
        index = {}
        for f in range(block.d):
            for t in range(block.T):
                if used[f, t]:
                    key = (f, int(block.thresholds[f, t]))
                    if key not in index:
                        index[key] = len(self.comparators)
                        self.comparators.append(key)
                    self.bit_index[f * block.T + t] = index[key]
        super().__init__({
            "q": In(data.ArrayLayout(signed(block.bits), block.d)),
            "o": Out(len(self.comparators)),
        })

    @property
    def constant(self):
        """Kept thermometer bits that are constants (threshold outside the input range)."""
        lo, hi = signed_range(self.bits)
        return sum(1 for _, theta in self.comparators if theta < lo or theta >= hi)

    def elaborate(self, platform):
        m = Module()
        lo, hi = signed_range(self.bits)
        bits = []
        for f, theta in self.comparators:
            if theta < lo or theta >= hi:
                bits.append(Const(int(theta < lo), 1))
            elif platform is not None:
                # for synthesis, AND/OR logic that Yosys maps to LUTs: a `>` becomes a carry
                # chain with two LUTs after it, the slower path (docs/results.md, build I)
                offset = self.q[f].as_unsigned() ^ (1 << (self.bits - 1))  # q - lo, unsigned
                bits.append(greater_than([offset[k] for k in range(self.bits)], theta - lo))
            else:
                bits.append(self.q[f] > theta)
        assign_chunked(m, self.o, bits)
        return m


def greater_than(bits, c):
    """[x > c] for the unsigned number whose bits (LSB first) are `bits` and a constant
    0 <= c < 2**len(bits), as AND/OR logic of the bits only: from the LSB up,
    x[:k+1] > c[:k+1] is x_k AND x[:k] > c[:k] where c_k = 1, x_k OR x[:k] > c[:k] where
    c_k = 0. Works on Amaranth values and on Python ints alike."""
    gt = 0
    for k, bit in enumerate(bits):
        gt = (bit & gt) if (c >> k) & 1 else (bit | gt)
    return gt
