# amaranth: UnusedElaboratable=no
"""The group popcount: one pipelined adder tree per output channel.

(The first line is Amaranth's linter option: a `Popcount` builds its `AdderStage`s in
`__init__`; when its engine is dropped unelaborated, only the engine should warn.)
"""

import math

import numpy as np
from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .wide import assign_chunked


def _merge_levels(maxima, levels):
    """Adder-tree bookkeeping: partial sums with the given maxima after `levels` pairwise levels.
    Returns (new maxima, for each new term the indices of the input terms it adds)."""
    groups = [[t] for t in range(len(maxima))]
    for _ in range(levels):
        groups = [groups[a] + groups[a + 1] if a + 1 < len(groups) else groups[a]
                  for a in range(0, len(groups), 2)]
    return [sum(maxima[t] for t in g) for g in groups], groups


class AdderStage(wiring.Component):
    """`levels` levels of the group adder trees, combinational: every group's partial sums
    (term t of a group holds values up to maxima[t]) in, the pairwise sums out. Terms are
    packed group-major, each in max.bit_length() bits."""

    def __init__(self, groups, maxima, levels):
        self.groups, self.maxima, self.levels = groups, list(maxima), levels
        self.out_maxima, self.sources = _merge_levels(self.maxima, levels)
        self.in_widths = [mx.bit_length() for mx in self.maxima]
        self.out_widths = [mx.bit_length() for mx in self.out_maxima]
        super().__init__({"i": In(groups * sum(self.in_widths)), "o": Out(groups * sum(self.out_widths))})

    def _terms(self, vector, widths, g):
        base = g * sum(widths)
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        return [vector[base + offsets[t]:base + offsets[t + 1]] for t in range(len(widths))]

    def elaborate(self, platform):
        m = Module()
        outputs = []
        for g in range(self.groups):
            terms = self._terms(self.i, self.in_widths, g)
            for sources, width in zip(self.sources, self.out_widths):
                # the same pairwise tree as _merge_levels, so Yosys sees balanced adders
                level = [terms[t] for t in sources]
                while len(level) > 1:
                    level = [level[a] + level[a + 1] if a + 1 < len(level) else level[a]
                             for a in range(0, len(level), 2)]
                outputs.append(level[0][:width] if len(level[0]) >= width else level[0])
        bits = [v[b] if b < len(v) else Const(0, 1) for v, w in zip(outputs, self.out_widths * self.groups)
                for b in range(w)]
        assign_chunked(m, self.o, bits)
        return m


class Popcount(wiring.Component):
    """Group popcount: count j = number of ones in i[j*k : (j+1)*k], an adder tree per group.

    The tree is cut into `AdderStage`s of `register_every` levels, each ending in a
    register, the last one too: the counts leave from flip-flops, so the route to the
    output FIFO's storage carries no adder (register_every=0: one stage, no register).
    `o_valid` follows `i_valid` through the same registers. `latency` counts them.
    """

    def __init__(self, groups, group_size, register_every=0):
        if groups < 1 or group_size < 1:
            raise ValueError(f"groups and group_size must be >= 1, got {groups!r}, {group_size!r}")
        self.groups, self.group_size, self.register_every = groups, group_size, register_every
        self.width = group_size.bit_length()
        self.levels = max(0, math.ceil(math.log2(group_size))) if group_size > 1 else 0
        per_stage = register_every or max(1, self.levels)
        self.stage_levels = [min(per_stage, self.levels - a) for a in range(0, self.levels, per_stage)] or [0]
        self.latency = len(self.stage_levels) if register_every else 0
        self.stages = []
        maxima = [1] * group_size
        for levels in self.stage_levels:
            self.stages.append(AdderStage(groups, maxima, levels))
            maxima = self.stages[-1].out_maxima
        assert maxima == [group_size]
        super().__init__({
            "i": In(groups * group_size), "i_valid": In(1),
            "o": Out(data.ArrayLayout(unsigned(self.width), groups)), "o_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        value, valid = self.i, self.i_valid
        for index, stage in enumerate(self.stages):
            m.submodules[f"stage{index}"] = stage
            m.d.comb += stage.i.eq(value)
            value = stage.o
            if self.register_every:
                reg = Signal(len(value), name=f"sums{index}", reset_less=True)
                reg_valid = Signal(name=f"sums{index}_valid")
                m.d.sync += [reg.eq(value), reg_valid.eq(valid)]
                value, valid = reg, reg_valid
        m.d.comb += [self.o.eq(value), self.o_valid.eq(valid)]
        return m
