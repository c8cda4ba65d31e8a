"""Verilog and RTLIL of an MLP engine (`generate`), and `write_rtl`, the folder users get."""

import json
import time
from pathlib import Path

import numpy as np

from ..contract.bundle import Block, Bundle, bundle_id
from ..contract.bundle_files import load_bundle
from ..contract.folders import atomic_folder, check_output_folder
from ..errors import UserError
from .engine import TOP, MLPEngine, engine_options
from .comparators import greater_than
from .dont_care import INNER
from .lut import LUTLayer, PortableSynthesis, table_int
from .toolchain import provenance_lines, rtlil_to_verilog


RTLIL_FORMS = ("synthesis", "simulation")


def generate(engine, provenance=None, rtlil_form="synthesis"):
    """(verilog_text, rtlil_text) of an engine; the top module is named TOP. Each text opens
    with `provenance` (a dict, see `provenance_lines`) as comments when it is given.

    rtlil_form "synthesis": the RTLIL in the form the board flow synthesises, without vendor
    cells (`lut.PortableSynthesis`: comparators as AND/OR logic, each node a case on its
    address), what users take to other tools; "simulation": Amaranth's form for its simulator
    (`q > theta`, `bit_select`), 4-5x quicker to elaborate, for the simulators' own folders.
    The Verilog is the same either way (its wide units are re-emitted below)."""
    from amaranth.back import rtlil
    if rtlil_form not in RTLIL_FORMS:
        raise ValueError(f"rtlil_form must be one of {RTLIL_FORMS}, not {rtlil_form!r}")
    platform = PortableSynthesis() if rtlil_form == "synthesis" else None
    il = rtlil.convert(engine, name=TOP, emit_src=False, platform=platform)
    v = _fast_verilog(engine, rtlil_to_verilog(il))
    return with_provenance(v, il, provenance)


def with_provenance(verilog_text, rtlil_text, provenance):
    """Both texts opening with the provenance comment (`provenance_lines`), or as they are for None."""
    if provenance is None:
        return verilog_text, rtlil_text
    lines = provenance_lines(provenance)
    return ("".join(f"// {line}\n" for line in lines) + verilog_text,
            "".join(f"# {line}\n" for line in lines) + rtlil_text)


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


def _mux_tree(table, bits):
    """The table (entry a at address a, `bits` the address bits' expressions, LSB first) as a tree
    of ?: on its address bits, MSB at the root, equal halves and constant subtrees folded."""
    if all(v == table[0] for v in table):
        return f"1'b{int(table[0])}"
    if len(table) == 2:
        return bits[0] if table[1] else f"~{bits[0]}"
    half = len(table) // 2
    lo, hi = table[:half], table[half:]
    if list(lo) == list(hi):
        return _mux_tree(lo, bits[:-1])
    return f"({bits[-1]} ? {_mux_tree(hi, bits[:-1])} : {_mux_tree(lo, bits[:-1])})"


def _node_expression(node, inner, synthesis):
    """A node's value. For synthesis a ?: tree on its address bits ($mux cells; a constant
    shifted by the address costs Yosys a techmap specialised per node, as Amaranth's bit_select
    does); for simulators that shift, `table >> {address}`, one machine shift (Verilator ran the
    ?: trees 10x slower, Icarus 3.5x: docs/results.md)."""
    if not node.inputs:
        return f"1'b{int(node.table[0])}"
    bits = [inner if x == INNER else f"i[{x}]" for x in node.inputs]
    if synthesis:
        return _mux_tree([int(v) for v in node.table], bits)
    return f"{len(node.table)}'h{table_int(node.table):x} >> {{{', '.join(bits[::-1])}}}"


def _both_forms(statements):
    """An always block's body: `statements(True)` under `ifdef SYNTHESIS (which Yosys' read_verilog
    defines; Verilator and Icarus do not, another tool may need -D SYNTHESIS), else `statements(False)`."""
    return ["`ifdef SYNTHESIS", *statements(True), "`else", *statements(False), "`endif"]


def _lut_layer_body(unit):
    inner = [j for j, node in enumerate(unit.nodes) if node.inner is not None]

    def statements(synthesis):  # an inner table before the node that reads it
        return ([f"    g[{j}] = {_node_expression(unit.nodes[j].inner, None, synthesis)};" for j in inner]
                + [f"    o[{j}] = {_node_expression(node, f'g[{j}]', synthesis)};" for j, node in enumerate(unit.nodes)])
    return [f"  input {_vector('i', len(unit.i))};", f"  output {_vector('o', len(unit.o))};",
            f"  reg {_vector('o', len(unit.o))};",
            *([f"  reg {_vector('g', len(unit.nodes))};  // inner tables of two-level nodes"] if inner else []),
            "  // node j: o[j] = table_j[address]: for synthesis a ?: tree on the address bits (the last",
            "  // input at the root), for simulation the table shifted by {address bits, MSB first}",
            "  always @* begin", *_both_forms(statements), "  end"]


class _Expr(str):
    """A Verilog expression that `greater_than` combines with & and |, the constants 0 and 1 folded."""
    def __and__(self, other):
        return 0 if other == 0 else self if other == 1 else _Expr(f"({self} & {other})")

    def __or__(self, other):
        return self if other == 0 else 1 if other == 1 else _Expr(f"({self} | {other})")

    __rand__, __ror__ = __and__, __or__


def _comparator_body(unit):
    """o[k] = [q_f > theta]: for synthesis the AND/OR logic the board flow builds (`greater_than`
    of q_f - lo, whose bits are q_f's with the sign bit inverted; a `>` becomes a carry chain),
    for simulation the signed comparison."""
    b = unit.bits
    lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1

    def value(f, theta, synthesis):
        if theta < lo or theta >= hi:
            return f"1'b{int(theta < lo)}"
        if not synthesis:
            return f"$signed(q[{f * b + b - 1}:{f * b}]) > {theta}"
        return greater_than([_Expr(f"q[{f * b + i}]") for i in range(b - 1)] + [_Expr(f"~q[{f * b + b - 1}]")],
                            theta - lo)

    def statements(synthesis):
        return [f"    o[{k}] = {value(f, theta, synthesis)}; // q{f} > {theta}"
                for k, (f, theta) in enumerate(unit.comparators)]
    return [f"  input {_vector('q', len(unit.q.as_value()))};", f"  output {_vector('o', len(unit.o))};",
            f"  reg {_vector('o', len(unit.o))};",
            "  // o[k] = q_f > theta (signed), one line per kept comparator; for synthesis as AND/OR logic",
            "  always @* begin", *_both_forms(statements), "  end"]


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


RTL_FILES = (f"{TOP}.v", f"{TOP}.il", "summary.json")  # what write_rtl writes


def write_rtl(bundle_or_block, out_dir, *, block_index=0, registers="all", rom=None, minimise=True, force=False,
              rtlil_form="synthesis"):
    """Generate one block's engine into `out_dir`: TOP.v, TOP.il and summary.json
    (`minimise`: don't-cares filled for fewer LUT4, see MLPEngine; `rtlil_form`: see `generate`).

    `bundle_or_block`: a Bundle, a Block, or a bundle folder path. Atomic: everything is
    written to a temporary folder that is renamed to `out_dir` at the end; an existing
    `out_dir` is an error unless force=True, and then only the files named in RTL_FILES
    are replaced (other files in it are kept). Returns the summary.
    """
    start = time.perf_counter()
    source = identity = None
    if isinstance(bundle_or_block, Block):
        if block_index not in (0, None):
            raise UserError(f"block index {block_index!r} out of range: a single block was given")
        block = bundle_or_block
    else:
        bundle = bundle_or_block if isinstance(bundle_or_block, Bundle) else load_bundle(bundle_or_block)
        block = bundle.block(block_index)
        source, identity = str(bundle.path), bundle_id(bundle)
    out_dir = Path(out_dir)
    check_output_folder(out_dir, force)  # before the slow part
    engine_options(block, registers, rom)  # bad options fail before an engine exists
    engine = MLPEngine(block, registers=registers, rom=rom, minimise=minimise)
    options = {"registers": engine.registers.as_dict(), "rom": {str(k): v for k, v in engine.rom.items()},
               "minimise": engine.minimise}
    verilog_text, rtlil_text = generate(engine, {"bundle_id": identity, "block": block_index,
                                                 "block_name": block.name, "options": options}, rtlil_form)
    summary = {"bundle": source, "bundle_id": identity, "block_index": block_index, **engine.summary()}
    summary["files"] = {"verilog": f"{TOP}.v", "rtlil": f"{TOP}.il", "summary": "summary.json"}
    summary["verilog_form"] = ("Yosys write_verilog of the RTLIL, with the comparators, fabric LUT layers and adder "
                               "stages as one always block each; under `ifdef SYNTHESIS the comparators as AND/OR "
                               "logic and each node a ?: tree on its address bits, else the signed comparison and "
                               "the table shifted by the address (docs/verification.md)")
    summary["rtlil_form"] = rtlil_form
    summary["verilog_bytes"] = len(verilog_text.encode())
    summary["generation_seconds"] = round(time.perf_counter() - start, 3)

    # --force replaces what write_rtl wrote and keeps every other file of the folder
    with atomic_folder(out_dir, force=force, keep=lambda name: name not in RTL_FILES) as tmp:
        (tmp / f"{TOP}.v").write_text(verilog_text)
        (tmp / f"{TOP}.il").write_text(rtlil_text)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
