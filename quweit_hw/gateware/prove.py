# amaranth: UnusedElaboratable=no
"""Formal equivalence of a block's synthesised ECP5 netlist with the bundle (`prove_block`).

(The first line is Amaranth's linter option: the engine is built for its units only.)

Gate: the engine's comparator bank and fabric LUT layers, as the board flow builds them
(for a platform: AND/OR comparators, `Array` nodes, LUT4 instances for the inner tables of
minimised nodes), put together with no register between them and run through Yosys'
`synth_ecp5`; its ECP5 cells are read back with Yosys' own simulation models. Gold: a
netlist written straight from the bundle by a separate, deliberately simple path
(`reference_verilog`: every thermometer bit a signed `>`, every node a `case` over its
table), which shares no code with the generator. Yosys' SAT miter then proves that every
LUT layer's output is equal in both for every token (d signed b-bit features), so the
don't-care fills of `dont_care` are proven too. The whole core is one miter: no piece
is proven on inputs it cannot see. A failed proof names the first layer and node that
differ and a token that shows it.
"""

import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..contract import golden
from ..errors import UserError
from .engine import MLPEngine
from .toolchain import toolchain_env

MODELS = "+/ecp5/cells_sim.v"  # Yosys' simulation models of the ECP5 cells


class CombinationalCore(wiring.Component):
    """An engine's comparator bank and LUT layers with no register: `q` in, layer L's bits on `oL`."""

    def __init__(self, engine):
        if engine.rom:
            raise UserError("prove covers fabric LUT layers only; this engine keeps layers in ROM")
        self.bank, self.units = engine.comparator_bank, engine.layer_units
        block = engine.block
        ports = {"q": In(data.ArrayLayout(signed(block.bits), block.d))}
        ports.update({f"o{index}": Out(len(unit.o)) for index, unit in enumerate(self.units)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.comparators = self.bank
        m.d.comb += self.bank.q.eq(self.q)
        bits = self.bank.o
        for index, unit in enumerate(self.units):
            m.submodules[f"layer{index}"] = unit
            m.d.comb += [unit.i.eq(bits), getattr(self, f"o{index}").eq(unit.o)]
            bits = unit.o
        return m


def reference_verilog(block, name="gold"):
    """Verilog of `block`'s thermometer and LUT layers written from the bundle arrays alone:
    t[f*T + t] = $signed(q_f) > theta(f, t); node j of layer L a `case` over its address
    {inputs MSB first} with one line per table entry; ports q, o0 .. o{L-1}."""
    b, T = block.bits, block.T
    widths = [layer.out_features for layer in block.layers]
    ports = ", ".join([f"input [{block.d * b - 1}:0] q"] + [f"output [{w - 1}:0] o{i}" for i, w in enumerate(widths)])
    lines = [f"module {name}({ports});", f"  wire [{block.d * T - 1}:0] t;"]
    for f in range(block.d):
        for k in range(T):
            theta = int(block.thresholds[f, k])
            lines.append(f"  assign t[{f * T + k}] = $signed(q[{f * b + b - 1}:{f * b}]) > {theta};")
    source = "t"
    for index, layer in enumerate(block.layers):
        n = layer.n
        for j, (row, table) in enumerate(zip(layer.mapping, layer.table)):
            node = f"n{index}_{j}"
            address = ", ".join(f"{source}[{int(x)}]" for x in row[::-1])
            lines += [f"  reg {node};", f"  always @* case ({{{address}}})"]
            lines += [f"    {n}'d{a}: {node} = 1'b{int(v)};" for a, v in enumerate(table)]
            lines += ["  endcase", f"  assign o{index}[{j}] = {node};"]
        source = f"o{index}"
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _yosys(script, cwd):
    run = subprocess.run([toolchain_env()["YOSYS"], "-p", script], cwd=cwd, capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


def synthesise_core(engine, workdir):
    """Write the engine's core as `gate.il` and its `synth_ecp5` netlist as `gate_ecp5.il` in
    `workdir`; returns {cell type: count} of the netlist."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    workdir = Path(workdir)
    (workdir / "gate.il").write_text(rtlil.convert(CombinationalCore(engine), name="gate",
                                                   platform=ULX3S_85F_Platform()))
    rc, log = _yosys("read_rtlil gate.il; synth_ecp5 -top gate; tee -o gate.stat stat; select gate; write_rtlil -selected gate_ecp5.il",
                     workdir)  # YoWASP's Yosys sees only its working folder
    if rc:
        raise RuntimeError(f"synth_ecp5 of the core failed: {log[-1500:]}")
    stat = (workdir / "gate.stat").read_text()
    return {cell: int(count) for cell, count in re.findall(r"^\s+([A-Z][A-Z0-9_]*)\s+(\d+)\s*$", stat, re.M)}


MITER = ("read_verilog {models}; read_rtlil gate_ecp5.il; hierarchy -top gate; read_verilog gold.v; proc -norom; "
         "miter -equiv -flatten -make_assert gold gate miter; hierarchy -top miter; "
         "sat -prove-asserts -show-ports miter")  # no -verify: it would stop before the counterexample


def _port_bits(log, name):
    """The binary value of port `name` in a `sat -show` table of `log` (MSB first), or None."""
    found = re.findall(rf"^\s+\\{re.escape(name)}\s+\S+\s+\S+\s+([01x]+)\s*$", log, re.M)
    return found[-1] if found else None


def _token(bits_msb_first, block):
    value = int(bits_msb_first.replace("x", "0"), 2)
    b = block.bits
    fields = [(value >> (f * b)) & ((1 << b) - 1) for f in range(block.d)]
    return np.array([x - (1 << b) if x >> (b - 1) else x for x in fields], np.int64)


def _first_difference(block, q, workdir):
    """(layer, node, bundle value, netlist value) of the first node where the netlist in
    `workdir` and the bundle (the golden model) differ on token q, or None."""
    b = block.bits
    value = sum((int(v) & ((1 << b) - 1)) << (f * b) for f, v in enumerate(q))
    shows = ",".join(f"o{i}" for i in range(len(block.layers)))
    rc, log = _yosys(f"read_verilog {MODELS}; read_rtlil gate_ecp5.il; hierarchy -top gate; flatten; "
                     f"sat -set q {block.d * b}'d{value} -show {shows}", workdir)
    expected = golden.stages(block, q[None, :])[1:-1]
    for index, bits in enumerate(expected):
        got = _port_bits(log, f"o{index}")
        if got is None:
            return None
        got = np.array([int(c) if c in "01" else -1 for c in got[::-1]])
        bad = np.flatnonzero(got != bits[0])
        if len(bad):
            return index, int(bad[0]), int(bits[0][bad[0]]), int(got[bad[0]])
    return None


def prove_block(block, *, engine=None, minimise=True, workdir=None):
    """Prove with Yosys that the synthesised ECP5 netlist of `block`'s engine core (or of
    `engine`'s, built from whatever block) computes, for every token, the bundle's LUT layer
    outputs. Returns {"cells", "seconds", ...} on success; UserError naming the first
    layer and node that differ and a token that shows it otherwise."""
    engine = engine if engine is not None else MLPEngine(block, minimise=minimise)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quweit-prove-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cells = synthesise_core(engine, work)
        (work / "gold.v").write_text(reference_verilog(block))
        synth_seconds = time.perf_counter() - start
        rc, log = _yosys(MITER.format(models=MODELS), work)
        if rc == 0 and "SAT proof finished - no model found: SUCCESS" in log:
            return {"block": block.name, "proven": True, "lut_nodes": block.lut_nodes, "cells": cells,
                    "synth_seconds": round(synth_seconds, 1),
                    "seconds": round(time.perf_counter() - start, 1)}
        if rc or "SAT proof finished - model found: FAIL" not in log:
            raise RuntimeError(f"the Yosys miter did not run: {log[-1500:]}")
        bits = _port_bits(log, "in_q")
        q = _token(bits, block) if bits else None
        where = _first_difference(block, q, work) if q is not None else None
    token = "[" + ", ".join(str(int(v)) for v in q) + "]" if q is not None else "(no counterexample shown)"
    if where is None:
        raise UserError(f"the netlist of block {block.name!r} differs from the bundle on token {token}")
    layer, node, want, got = where
    raise UserError(f"the netlist of block {block.name!r} differs from the bundle at layer {layer} node {node} "
                    f"on token {token}: the bundle gives {want}, the netlist {got}")
