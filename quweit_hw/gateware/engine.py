# amaranth: UnusedElaboratable=no
"""The MLP engine: one bundle block as a pipelined, streaming Amaranth component.

(The first line is Amaranth's linter option: an engine builds its parts in `__init__`, so
that `summary()` can describe them; an engine dropped unelaborated drops its parts too, and
only the engine itself should warn, in its caller's file.)

Stages (docs/design.md, "The hardware"): a comparator bank (the thermometer; only the
thresholds some layer-0 LUT reads), LUT layers (truth tables as constants in
fabric, or in a `Memory` ROM evaluated a few nodes per clock), and the group
popcount. The engine is bit-exact with `quweit_hw.contract.golden.counts`.

Flow control. The pipeline itself never stalls: its data registers have no
enable (a stall enable would be a net fanning out to every flip-flop of the
engine, which costs Fmax on a big design). Every stage carries a valid bit, the
results land in an output FIFO, and the input accepts a token only while the
tokens already inside (pipeline + FIFO) leave room in that FIFO (a credit
counter). So a stall on `o.ready` holds every token in flight (in the FIFO),
loses and repeats none, and `i.ready` and `o.valid` come from registers, never
combinationally from the other port. Imports amaranth and numpy, no torch.
"""

from dataclasses import asdict, dataclass

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..errors import UserError
from .comparators import ComparatorBank
from .dont_care import minimise_block
from .estimate import estimate_lut4
from .lut import LUTLayer, ROMLUTLayer
from .popcount import Popcount

TOP = "mlp_engine"  # name of the top-level Verilog module
# Fabric LUT nodes above 8 inputs become 2**(n-4) LUT4s each and a mux tree; the
# ROM form stores 2**n bits per word: both stop being sensible there.
MAX_FABRIC_FAN_IN = 8
MAX_ROM_FAN_IN = 10
FIFO_LATENCY = 2  # ResultFIFO: a word written in cycle c is on its output in cycle c + 2


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

    PRESETS = ("all", "fmax", "layers", "ports")

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
        """'all': after comparators, every layer and every 2 popcount levels; 'fmax' (the
        highest clock): after every popcount level too, so no path between registers is more
        than two LUT levels or one adder; 'layers': no register inside the popcount tree;
        'ports': only the port registers and the output FIFO."""
        if name == "all":
            return cls(True, True, 2)
        if name == "fmax":
            return cls(True, True, 1)
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


def engine_options(block, registers="all", rom=None):
    """(Registers, {layer: nodes per clock}) for an engine of `block`, checked: TypeError or
    ValueError for a malformed option, UserError for a block the asked-for forms cannot hold.
    Callers that take options from a user check them here before building anything."""
    if isinstance(registers, str):
        registers = Registers.preset(registers)
    if not isinstance(registers, Registers):
        raise TypeError(f"registers must be a Registers or a preset name, got {registers!r}")
    for index in range(len(block.layers)):
        registers.after_layer(index, len(block.layers))
    rom = _check_rom(rom, len(block.layers))
    for index, layer in enumerate(block.layers):
        limit = MAX_ROM_FAN_IN if index in rom else MAX_FABRIC_FAN_IN
        if layer.n > limit:
            form = "ROM" if index in rom else "fabric"
            raise UserError(f"layer {index} of block {block.name!r} has fan-in n={layer.n}; "
                            f"the {form} form supports n <= {limit}")
    return registers, rom


class MLPEngine(wiring.Component):
    """The LUT-MLP block of one bundle block as a streaming engine, bit-exact with golden.counts.

    Ports: `i` a stream of tokens (d signed b-bit features), `o` a stream of d
    unsigned counts of `block.count_width` bits. One token per clock while `o.ready`
    (1/fold per clock with ROM layers); a stall loses and repeats nothing.

    registers: a `Registers` or a preset name ('all', 'layers', 'ports').
    rom: {layer index: nodes per clock} for the layers whose tables live in ROM.
    minimise: fabric LUT nodes with their don't-cares filled for fewer LUT4
        (`dont_care.minimise_block`): the same counts for every token, the bundle unchanged.
    """

    def __init__(self, block, *, registers="all", rom=None, minimise=True):
        self.block = block
        registers, self.rom = engine_options(block, registers, rom)
        self.registers = registers
        self.minimise = bool(minimise)
        minimised = minimise_block(block, skip=tuple(self.rom)) if minimise else [None] * len(block.layers)
        used = None
        if minimised[0] is not None:  # only the thermometer bits a minimised node still reads
            used = np.zeros(block.d * block.T, bool)
            used[sorted(set().union(*(node.sources() for node in minimised[0])))] = True
            used = used.reshape(block.d, block.T)
        self.comparator_bank = ComparatorBank(block, used)
        self.layer_units = []
        in_features = len(self.comparator_bank.comparators)
        for index, (layer, nodes) in enumerate(zip(block.layers, minimised)):
            mapping = layer.mapping
            if index == 0:  # thermometer bit f*T + t -> its comparator
                mapping = self.comparator_bank.bit_index[mapping]
                if nodes is None:
                    assert (mapping >= 0).all()
                else:
                    nodes = [node.remap(self.comparator_bank.bit_index) for node in nodes]
                    # a bit no minimised node reads has no comparator: the unit's full mapping
                    # (not built, only checked) reads comparator 0 there instead
                    mapping = np.maximum(mapping, 0)
            if index in self.rom:
                unit = ROMLUTLayer(mapping, layer.table, in_features, self.rom[index])
            else:
                unit = LUTLayer(mapping, layer.table, in_features, nodes=nodes)
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
                fan_in = np.bincount([node.fan_in for node in unit.nodes], minlength=layer.n + 1)
                entry.update(form="fabric", minimised=self.minimise, lut4_estimate=unit.lut4,
                             fan_in_histogram={str(k): int(c) for k, c in enumerate(fan_in)},
                             two_level_nodes=sum(1 for node in unit.nodes if node.inner is not None),
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
