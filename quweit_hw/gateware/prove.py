# amaranth: UnusedElaboratable=no
"""Formal equivalence of a block's synthesised ECP5 netlist with the bundle (`prove_block`).

(The first line is Amaranth's linter option: the engine is built for its units only.)

Gate: the engine's combinational pieces as the board flow builds them (for a platform:
AND/OR comparators, `Array` nodes, LUT4 instances for the inner tables of minimised
nodes), one piece per LUT layer: piece 0 is the comparator bank and LUT layer 0 (the
token's d signed b-bit features in, layer 0's bits out), piece L > 0 is LUT layer L (its
input bits in). In the engine a pipeline register ends every piece (`Registers` 'all'),
so no synthesis optimises across the cut either way. Each piece runs through Yosys'
`synth_ecp5` on its own and its ECP5 cells are read back with Yosys' simulation models.
Gold: per piece, a netlist written straight from the bundle by a separate, deliberately
simple path (`reference_verilog`: every thermometer bit a signed `>`, every node a
`case` over its table), which shares no code with the generator. Yosys' `equiv_make` /
`equiv_simple` then prove every output bit of the gate piece equal to the gold one,
node by node (each bit's SAT problem is its own input cone).

Why proving the pieces one by one proves the whole core, for every token:

- piece 0's inputs are the token itself (all d*b bits free): it proves G0(q) = R0(q) for
  every token q, so the don't-care fills of layer 0 (`dont_care`) are proven on exactly
  the addresses tokens produce;
- piece L > 0 reads the bits of layer L-1; they are left free, except the nodes of layer
  L-1 that the engine built as constants (the minimiser's claim that no token moves them,
  on which the fills of layer L may rely): those are tied to their constant. Piece L
  proves G_L(x) = R_L(x) for every such x, and, for each constant node of its own layer,
  R_L(x)[k] = c_k (the claim piece L+1 relies on);
- by induction, on any token the bits entering piece L are R_{L-1}(...R_0(q)) = G_{L-1}
  (...G_0(q)) (the pieces before are proven equal on every input they can see) and obey
  the proven constants, so they are one of the x of piece L's proof: G = R on every token.
  Free bits are a superset of what the layer before can produce, so a passing proof is
  sound; a failing one may be an input no token makes. A failure is therefore settled on
  tokens: a SAT search over the token for the one failing node (gold layers before it,
  then the gate and gold node) either finds a token that shows it, which the error
  names, or finds none, and the block is reported as not proven.
"""

import re
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from tqdm import tqdm

from ..contract import golden
from ..errors import UserError
from .engine import MLPEngine
from .toolchain import toolchain_env

MODELS = "+/ecp5/cells_sim.v"  # Yosys' simulation models of the ECP5 cells


class LayerPiece(wiring.Component):
    """Piece `index` of an engine's combinational core, with no register: for index 0 the
    comparator bank and LUT layer 0 (`q`: a token), otherwise LUT layer `index` (`i`: the
    bits of the layer before); `o`: the layer's output bits."""

    def __init__(self, engine, index):
        if engine.rom:
            raise UserError("prove covers fabric LUT layers only; this engine keeps layers in ROM")
        self.index, self.unit = index, engine.layer_units[index]
        self.bank = engine.comparator_bank if index == 0 else None
        if index == 0:
            ports = {"q": In(data.ArrayLayout(signed(engine.block.bits), engine.block.d))}
        else:
            ports = {"i": In(len(self.unit.i))}
        super().__init__({**ports, "o": Out(len(self.unit.o))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.layer = self.unit
        if self.bank is not None:
            m.submodules.comparators = self.bank
            m.d.comb += [self.bank.q.eq(self.q), self.unit.i.eq(self.bank.o)]
        else:
            m.d.comb += self.unit.i.eq(self.i)
        m.d.comb += self.o.eq(self.unit.o)
        return m


def constant_nodes(engine, index):
    """{node: value} of the nodes of layer `index` that `engine` builds as constants."""
    return {j: int(node.table[0]) for j, node in enumerate(engine.layer_units[index].nodes) if not node.inputs}


# ---- gold: written from the bundle arrays alone ----

def _case_nodes(layer, source):
    lines = []
    for j, (row, table) in enumerate(zip(layer.mapping, layer.table)):
        address = ", ".join(f"{source}[{int(x)}]" for x in row[::-1])
        lines += [f"  reg n{j};", f"  always @* case ({{{address}}})"]
        lines += [f"    {layer.n}'d{a}: n{j} = 1'b{int(v)};" for a, v in enumerate(table)]
        lines += ["  endcase", f"  assign o[{j}] = n{j};"]
    return lines


def reference_verilog(block, index=None):
    """Verilog of `block`'s thermometer and LUT layers written from the bundle arrays alone,
    one module per piece (all of them, or only piece `index`): `gold0(q, o)` with
    t[f*T + t] = $signed(q_f) > theta(f, t) and layer 0, `goldL(i, o)` layer L; node j a
    `case` over its address {inputs MSB first} with one line per table entry."""
    b, T = block.bits, block.T
    modules = []
    for L, layer in enumerate(block.layers):
        if index is not None and L != index:
            continue
        if L == 0:
            lines = [f"module gold0(input [{block.d * b - 1}:0] q, output [{layer.out_features - 1}:0] o);",
                     f"  wire [{block.d * T - 1}:0] t;"]
            for f in range(block.d):
                for k in range(T):
                    lines.append(f"  assign t[{f * T + k}] = $signed(q[{f * b + b - 1}:{f * b}]) > "
                                 f"{int(block.thresholds[f, k])};")
            lines += _case_nodes(layer, "t")
        else:
            lines = [f"module gold{L}(input [{layer.in_features - 1}:0] i, output [{layer.out_features - 1}:0] o);"]
            lines += _case_nodes(layer, "i")
        modules.append("\n".join(lines + ["endmodule"]))
    return "\n".join(modules) + "\n"


def _sides(block, index, tied, claims):
    """Verilog of the two sides `equiv_make` matches by port name: `gold_side` and
    `gate_side` feed gold{index} / gate{index} the same input (the `tied` {bit: value}
    constant, the rest free) and put the `claims` {node: value} on `k`: gold's node
    values there, the claimed constants on the gate side."""
    if index == 0:
        width, port = block.d * block.bits, "q"
        feed = "q"
    else:
        width, port = block.layers[index].in_features, "i"
        feed = "{" + ", ".join(f"1'b{tied[x]}" if x in tied else f"i[{x}]" for x in reversed(range(width))) + "}"
    out = block.layers[index].out_features
    keys = sorted(claims)
    text = []
    for side in ("gold", "gate"):
        ports = [f"input [{width - 1}:0] {port}", f"output [{out - 1}:0] o"] + ([f"output [{len(keys) - 1}:0] k"] if keys else [])
        text += [f"module {side}_side({', '.join(ports)});",
                 f"  {side}{index} {side}_core(.{port}({feed}), .o(o));"]
        if keys:
            values = [f"o[{j}]" if side == "gold" else f"1'b{claims[j]}" for j in reversed(keys)]
            text.append(f"  assign k = {{{', '.join(values)}}};")
        text.append("endmodule")
    return "\n".join(text) + "\n"


# ---- Yosys ----

def _yosys(script, cwd, on_line=None):
    """Run Yosys on `script` in `cwd` (YoWASP's Yosys sees only its working folder);
    `on_line` sees every line of its log as it comes. Returns (exit status, log tail)."""
    proc = subprocess.Popen([toolchain_env()["YOSYS"], "-p", script], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tail = deque(maxlen=400)
    for line in proc.stdout:
        tail.append(line)
        if on_line is not None:
            on_line(line)
    return proc.wait(), "".join(tail)


def synthesise_piece(engine, index, workdir):
    """Write piece `index` of `engine` as `gate{index}.il` and its `synth_ecp5` netlist as
    `gate{index}_ecp5.il` in `workdir`; returns {cell type: count} of the netlist."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    name = f"gate{index}"
    (Path(workdir) / f"{name}.il").write_text(rtlil.convert(LayerPiece(engine, index), name=name,
                                                           platform=ULX3S_85F_Platform()))
    rc, log = _yosys(f"read_rtlil {name}.il; synth_ecp5 -top {name}; tee -o {name}.stat stat; "
                     f"select {name}; write_rtlil -selected {name}_ecp5.il", workdir)
    if rc:
        raise RuntimeError(f"synth_ecp5 of piece {index} failed: {log[-1500:]}")
    stat = (Path(workdir) / f"{name}.stat").read_text()
    return {cell: int(count) for cell, count in re.findall(r"^\s+([A-Z][A-Z0-9_]*)\s+(\d+)\s*$", stat, re.M)}


EQUIV = ("read_verilog {models}; read_rtlil gate{i}_ecp5.il; read_verilog gold{i}.v; "
         "hierarchy -top both; proc -norom; flatten gold_side gate_side; "  # derives each cell's INIT first
         "equiv_make gold_side gate_side equiv; hierarchy -top equiv; equiv_simple; equiv_status")
PROVEN = re.compile(r"Trying to prove \$equiv for \\(o|k)(?: \[(\d+)\])?: (success|failed)")  # 1-bit: no index


def prove_piece(block, index, tied, claims, workdir, bar=None):
    """Prove piece `index` (gate{index}_ecp5.il in `workdir`) equal to gold on every input
    (the `tied` bits constant), and gold's `claims` {node: constant}. Returns the failing
    outputs as [("o" or "k", position)], empty when proven; `bar` counts the proven bits."""
    width = block.d * block.bits if index == 0 else block.layers[index].in_features
    port = "q" if index == 0 else "i"
    both = (f"module both(input [{width - 1}:0] {port});\n  gold_side a(.{port}({port}));\n"
            f"  gate_side b(.{port}({port}));\nendmodule\n")  # a top that keeps both sides through `hierarchy`
    (Path(workdir) / f"gold{index}.v").write_text(reference_verilog(block, index) + _sides(block, index, tied, claims)
                                                  + both)
    failed, seen = [], set()

    def on_line(line):
        found = PROVEN.search(line)
        key = found and (found[1], int(found[2] or 0))
        if found and key not in seen:
            seen.add(key)
            if found[3] == "failed":
                failed.append(key)
            if bar is not None:
                bar.update(1)
    rc, log = _yosys(EQUIV.format(models=MODELS, i=index), workdir, on_line)
    if rc or "Found " not in log:
        raise RuntimeError(f"the Yosys equivalence of piece {index} did not run: {log[-1500:]}")
    if not failed and "Equivalence successfully proven!" not in log:
        raise RuntimeError(f"Yosys did not prove piece {index} and named no failing bit: {log[-1500:]}")
    expected = {("o", j) for j in range(block.layers[index].out_features)} | {("k", m) for m in range(len(claims))}
    if seen != expected:  # every output bit and every claim had its own proof, none left out
        raise RuntimeError(f"Yosys proved {len(seen)} bits of piece {index}, expected {len(expected)}")
    return sorted(failed, key=lambda x: (x[0] != "o", x[1]))


# ---- a failing node, settled on tokens ----

def _port_bits(log, name):
    """The binary value of port `name` in a `sat -show` table of `log` (MSB first), or None."""
    found = re.findall(rf"^\s+\\{re.escape(name)}\s+\S+\s+\S+\s+([01x]+)\s*$", log, re.M)
    return found[-1] if found else None


def _token(bits_msb_first, block):
    value = int(bits_msb_first.replace("x", "0"), 2)
    b = block.bits
    fields = [(value >> (f * b)) & ((1 << b) - 1) for f in range(block.d)]
    return np.array([x - (1 << b) if x >> (b - 1) else x for x in fields], np.int64)


def _focus(block, index, node, claimed):
    """Verilog of `focus(q) -> d`: gold layers 0 .. index-1 from the token, then gate and gold
    piece `index`; d = 1 where node `node` differs (or, `claimed` a constant, where gold's
    node is not that constant)."""
    lines = [f"module focus(input [{block.d * block.bits - 1}:0] q, output a, output r, output d);"]
    feed = "q"
    for L in range(index):
        lines += [f"  wire [{block.layers[L].out_features - 1}:0] x{L};",
                  f"  gold{L} p{L}(.{'q' if L == 0 else 'i'}({feed}), .o(x{L}));"]
        feed = f"x{L}"
    port, out = "q" if index == 0 else "i", block.layers[index].out_features
    lines += [f"  wire [{out - 1}:0] g, h;", f"  gold{index} gold_core(.{port}({feed}), .o(h));"]
    if claimed is None:
        lines += [f"  gate{index} gate_core(.{port}({feed}), .o(g));", f"  assign a = g[{node}];"]
    else:
        lines.append(f"  assign a = 1'b{claimed};")
    lines += [f"  assign r = h[{node}];", "  assign d = a ^ r;", "endmodule"]
    gold = "".join(reference_verilog(block, L) for L in range(index + 1))
    return gold + "\n".join(lines) + "\n"


def token_witness(block, index, node, claimed, workdir):
    """A token on which node `node` of layer `index` of the netlist in `workdir` (or, with
    `claimed`, that constant) differs from the bundle, as (token, netlist value), or None
    when no token does (the node is then proven over every token). The layers before
    `index` come from gold: they are proven equal to the netlist on every token already."""
    (Path(workdir) / "focus.v").write_text(_focus(block, index, node, claimed))
    rc, log = _yosys(f"read_verilog {MODELS}; read_rtlil gate{index}_ecp5.il; read_verilog focus.v; "
                     "hierarchy -top focus; proc -norom; flatten; opt_clean; "  # only the node's cone is left
                     "sat -prove d 0 -show q,a,r focus", workdir)
    if rc == 0 and "SAT proof finished - no model found: SUCCESS" in log:
        return None
    bits, got = _port_bits(log, "q"), _port_bits(log, "a")
    if rc or "model found: FAIL" not in log or bits is None or got is None:
        raise RuntimeError(f"the Yosys token search for layer {index} node {node} did not run: {log[-1500:]}")
    return _token(bits, block), int(got)


def prove_block(block, *, engine=None, minimise=True, workdir=None, progress=False):
    """Prove with Yosys that the synthesised ECP5 netlist of `block`'s engine core (or of
    `engine`'s, built from whatever block) computes, for every token, the bundle's LUT layer
    outputs, layer by layer (the module docstring says why that covers the whole core).
    Returns {"cells", "seconds", "pieces", ...} on success; UserError naming the layer and
    node that differ and a token that shows it otherwise. `progress`: a tqdm bar per layer."""
    engine = engine if engine is not None else MLPEngine(block, minimise=minimise)
    start, cells, pieces, tied = time.perf_counter(), {}, [], {}
    with tempfile.TemporaryDirectory(prefix="quweit-prove-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for index, layer in enumerate(block.layers):
            claims = constant_nodes(engine, index)
            with tqdm(total=layer.out_features + len(claims), desc=f"{block.name} layer {index}", unit="node",
                      disable=not progress, leave=False) as bar:
                bar.set_postfix_str("synth_ecp5")
                t0 = time.perf_counter()
                piece_cells = synthesise_piece(engine, index, work)
                t1 = time.perf_counter()
                bar.set_postfix_str("equiv_simple")
                failed = prove_piece(block, index, tied, claims, work, bar)
                bar.set_postfix_str("tokens")
                for kind, position in failed:
                    node = position if kind == "o" else sorted(claims)[position]
                    found = token_witness(block, index, node, claims[node] if kind == "k" else None, work)
                    if found is not None:
                        _raise_difference(block, index, node, *found, claimed=kind == "k")
            for cell, count in piece_cells.items():
                cells[cell] = cells.get(cell, 0) + count
            pieces.append({"layer": index, "cells": piece_cells, "synth_seconds": round(t1 - t0, 1),
                           "prove_seconds": round(time.perf_counter() - t1, 1), "constant_nodes": len(claims),
                           "proven_on_tokens": len(failed)})
            tied = claims
    return {"block": block.name, "proven": True, "lut_nodes": block.lut_nodes, "cells": cells, "pieces": pieces,
            "synth_seconds": round(sum(p["synth_seconds"] for p in pieces), 1),
            "seconds": round(time.perf_counter() - start, 1)}


def _raise_difference(block, index, node, q, got, claimed):
    want = int(golden.stages(block, q[None, :])[index + 1][0, node])
    token = "[" + ", ".join(str(int(v)) for v in q) + "]"
    if claimed:
        raise UserError(f"the engine of block {block.name!r} builds layer {index} node {node} as the constant "
                        f"{got}, but on token {token} the bundle gives {want}")
    raise UserError(f"the netlist of block {block.name!r} differs from the bundle at layer {index} node {node} "
                    f"on token {token}: the bundle gives {want}, the netlist {got}")
