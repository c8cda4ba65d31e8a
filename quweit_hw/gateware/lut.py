"""LUT layers in hardware: truth tables as fabric constants (`LUTLayer`) or in ROM (`ROMLUTLayer`)."""

import math

import numpy as np
from amaranth.hdl import Array, Cat, Const, Instance, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dont_care import INNER, full_node
from .wide import assign_chunked


class PortableSynthesis:
    """The `platform` to elaborate an engine with for the RTL users take to any tool: the synthesis
    form (comparators as AND/OR logic, each node a case over its address) without vendor cells,
    so a two-level node's inner table is logic, not an ECP5 LUT4 (`lut4_cells`)."""
    lut4_cells = False


def table_int(row):
    """A LUT's 2**n-entry 0/1 table as an integer: entry k is bit k (the address selects the bit)."""
    return int.from_bytes(np.packbits(np.asarray(row, np.uint8), bitorder="little").tobytes(), "little")


def _check_layer(mapping, table, in_features):
    if mapping.ndim != 2 or table.shape != (mapping.shape[0], 2 ** mapping.shape[1]):
        raise ValueError(f"mapping {mapping.shape} and table {table.shape} do not describe one LUT layer")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= in_features):
        raise ValueError(f"mapping reads bits [{mapping.min()}, {mapping.max()}] of a {in_features}-bit input")


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

    `nodes`: the layer's nodes as `dont_care.Node`s (fewer inputs, or a two-level form,
    equal to the table on every reachable address) instead of (mapping, table) as they are.
    Each table becomes its own smaller `Array`/constant, so Yosys sees only the inputs a
    node reads.
    """

    def __init__(self, mapping, table, in_features, *, nodes=None):
        self.mapping = np.asarray(mapping, np.int64)
        self.table = np.asarray(table, np.uint8)
        _check_layer(self.mapping, self.table, in_features)
        if nodes is None:
            nodes = [full_node(row, tab) for row, tab in zip(self.mapping, self.table)]
        if len(nodes) != len(self.mapping) or any(x >= in_features for node in nodes for x in node.sources()):
            raise ValueError(f"nodes do not describe this layer of {len(self.mapping)} nodes on {in_features} bits")
        self.nodes = list(nodes)
        super().__init__({"i": In(in_features), "o": Out(len(self.mapping))})

    @property
    def lut4(self):
        """The ECP5 LUT4 estimate of the layer's nodes (dont_care.Node.lut4)."""
        return sum(node.lut4 for node in self.nodes)

    def _node_value(self, m, node, platform):
        inner = None
        if node.inner is not None:
            inner = Signal(name="g")
            if getattr(platform, "lut4_cells", platform is not None):  # an ECP5 cell, for the board flow
                m.submodules += _lut4_instance(node.inner, [self.i[x] for x in node.inner.inputs], inner)
            else:
                m.d.comb += inner.eq(self._node_value(m, node.inner, platform))
        if not node.inputs:
            return Const(int(node.table[0]), 1)
        address = Cat(*(inner if x == INNER else self.i[x] for x in node.inputs))  # column 0 is the LSB
        if platform is not None:
            return Array(Const(int(bit), 1) for bit in node.table)[address]
        return Const(table_int(node.table), len(node.table)).bit_select(address, 1)

    def elaborate(self, platform):
        m = Module()
        assign_chunked(m, self.o, [self._node_value(m, node, platform) for node in self.nodes])
        return m


def _lut4_instance(node, bits, out):
    """An ECP5 LUT4 computing `node` (at most 4 inputs, none INNER) of `bits` into `out`.

    Why an instance: Yosys' abc9 maps for delay first, and flattens a two-level node
    h(g(...), ...) back into one six-input LUT (4 LUT4) unless g is a cell it cannot see
    through. Unused inputs are tied low and the INIT repeats the table, so it is
    independent of them either way."""
    k = len(node.inputs)
    assert k <= 4 and INNER not in node.inputs
    init = sum(int(node.table[a % 2 ** k]) << a for a in range(16))
    ports = dict(zip("ABCD", [*bits, *([Const(0, 1)] * (4 - k))]))
    return Instance("LUT4", p_INIT=Const(init, 16), **{f"i_{p}": v for p, v in ports.items()}, o_Z=out)


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
            init = [table_int(self.table[j]) if j < out else 0 for j in nodes]
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
