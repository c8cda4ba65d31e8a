# amaranth: UnusedElaboratable=no
"""`quweit-hw prove` (gateware.prove): the synth_ecp5 netlist of a small block's comparators
and LUT layers proven equal to a netlist written from the bundle, for every token; a
netlist built from a bundle with one reachable table bit flipped or one mapping index
changed fails, naming the node and a token that shows it."""

import re

import numpy as np
import pytest

from quweit_hw.cli import main
from quweit_hw.contract import bundle, bundle_files, golden, synthetic
from quweit_hw.errors import UserError
from quweit_hw.gateware.dont_care import thermometer_reachable
from quweit_hw.gateware.engine import MLPEngine
from quweit_hw.gateware.prove import prove_block, reference_verilog
from quweit_hw.gateware.prove_rtl import prove_rtl
from quweit_hw.gateware.verilog import write_rtl

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def small_block():
    block = synthetic.random_block(d=3, thresholds=6, n=6, hidden=(12,), group_size=4, window=8, seed=11)
    th = block.thresholds.copy()
    th[0, 0], th[1, -1] = -129, 127  # constant thermometer bits
    return bundle.Block(name="small", d=3, bits=8, thresholds=np.sort(th, axis=1), layers=block.layers,
                        group_size=4)


def with_layer(block, index, mapping=None, table=None):
    layers = list(block.layers)
    old = layers[index]
    layers[index] = bundle.Layer(old.mapping if mapping is None else mapping,
                                 old.table if table is None else table, old.in_features)
    return bundle.Block(name=block.name, d=block.d, bits=block.bits, thresholds=block.thresholds,
                        layers=tuple(layers), group_size=block.group_size)


def token_of(message):
    return np.array([int(x) for x in message.split("token [")[1].split("]")[0].split(",")])


def test_prove_small_bundle(tmp_path, capsys):
    path = bundle_files.write_bundle(tmp_path / "small", [small_block()])
    assert main(["prove", str(path), "--with-rtl"]) == 0
    out = capsys.readouterr().out
    assert "block 0 ('small'): the synth_ecp5 netlist" in out and "LUT4" in out and "for every token" in out
    assert "block 0 ('small'): its mlp_engine.v (as `quweit-hw rtl` writes it) equals mlp_engine.il" in out


def test_reference_verilog_is_the_bundle():
    text = reference_verilog(small_block())
    assert "$signed(q[7:0]) > -129" in text and "6'd63:" in text and text.count("case (") == 12 + 12


def test_prove_fails_on_a_flipped_table_bit():
    block = small_block()
    j = 5
    address = int(thermometer_reachable(block, block.layers[0].mapping[j])[1])
    table = block.layers[0].table.copy()
    table[j, address] ^= 1
    wrong = with_layer(block, 0, table=table)
    with pytest.raises(UserError, match=rf"at layer 0 node {j} on token \[") as caught:
        prove_block(block, engine=MLPEngine(wrong))
    q = token_of(str(caught.value))[None, :]
    assert golden.stages(block, q)[1][0, j] != golden.stages(wrong, q)[1][0, j]  # the token shows it


def test_prove_fails_on_a_changed_mapping_index():
    block = small_block()
    mapping = block.layers[1].mapping.copy()
    mapping[7, 2] = (mapping[7, 2] + 1) % block.layers[1].in_features
    wrong = with_layer(block, 1, mapping=mapping)
    with pytest.raises(UserError, match=r"at layer 1 node 7 on token \[") as caught:
        prove_block(block, engine=MLPEngine(wrong))
    q = token_of(str(caught.value))[None, :]
    assert golden.stages(block, q)[2][0, 7] != golden.stages(wrong, q)[2][0, 7]


def test_an_unreachable_table_bit_is_a_dont_care():
    """A table bit no token reaches may differ: the proof is over real tokens."""
    block = small_block()
    j = 5
    unreachable = sorted(set(range(64)) - set(thermometer_reachable(block, block.layers[0].mapping[j]).tolist()))
    table = block.layers[0].table.copy()
    table[j, unreachable[0]] ^= 1
    assert prove_block(block, engine=MLPEngine(with_layer(block, 0, table=table), minimise=False))["proven"]


def test_a_constant_node_is_tied_in_the_next_layer(tmp_path):
    """Layer-0 node 0 reads only a constant thermometer bit, so the engine builds it as a
    constant and the minimiser fills layer 1's nodes that read it on its value alone: the
    layer-1 piece is proven with that input tied (and the constant proven in piece 0),
    with no node left over for the search on tokens."""
    block = small_block()
    mapping0 = block.layers[0].mapping.copy()
    mapping0[0] = 0  # thermometer bit (0, 0): threshold -129, always 1
    block = with_layer(block, 0, mapping=mapping0)
    mapping1 = block.layers[1].mapping.copy()
    mapping1[:, 0] = 0  # every layer-1 node reads node 0
    block = with_layer(block, 1, mapping=mapping1)
    engine = MLPEngine(block)
    assert engine.layer_units[0].nodes[0].inputs == ()
    result = prove_block(block, engine=engine, workdir=tmp_path)
    assert [p["constant_nodes"] for p in result["pieces"]][0] >= 1
    assert [p["proven_on_tokens"] for p in result["pieces"]] == [0, 0]
    assert "1'b" in (tmp_path / "gold1.v").read_text().split("module gold_side")[1].split("endmodule")[0]


def _flip_table_bit(verilog, node, form):
    """The Verilog with one table entry of layer 0 node `node` changed in one form of the .v:
    synthesis, its ?: tree's first constant leaf flipped (or, a tree of inputs only, its first
    input leaf inverted); simulation, a hex digit of the shifted table."""
    layer = verilog.index("module \\mlp_engine.layer0")
    branch = verilog.index("`else", layer) if form == "simulation" else layer
    start = verilog.index(f"    o[{node}] = ", branch)
    line = verilog[start:verilog.index(";", start)]
    if form == "simulation":
        at = start + line.index("'h") + 2
        return verilog[:at] + ("0" if verilog[at] != "0" else "1") + verilog[at + 1:]
    if "1'b" in line:
        at = start + line.index("1'b") + 3
        return verilog[:at] + str(1 - int(verilog[at])) + verilog[at + 1:]
    at = start + line.index("? ") + 2
    return verilog[:at] + "~" + verilog[at:]


def test_prove_rtl_and_a_mutated_verilog(tmp_path, capsys):
    """Both forms of the .v (`ifdef SYNTHESIS) are proven equal to the .il; a table entry or a
    comparator changed in either form fails, naming the form and the unit."""
    block = small_block()
    folder = tmp_path / "rtl"
    write_rtl(block, folder)
    assert main(["prove", "--rtl", str(folder)]) == 0
    assert "mlp_engine.v equals mlp_engine.il" in capsys.readouterr().out
    verilog = (folder / "mlp_engine.v").read_text()
    for form in ("synthesis", "simulation"):
        (folder / "mlp_engine.v").write_text(_flip_table_bit(verilog, 2, form))
        with pytest.raises(UserError, match=rf"mlp_engine.v \({form} form\) differs from mlp_engine.il: "
                                            r"Yosys did not prove .*layer0"):
            prove_rtl(folder)
    cmp = verilog.index("module \\mlp_engine.comparators")
    line = re.compile(r"    o\[\d+\] = \(.*?( & ).*; // q\d+ > -?\d+").search(verilog, cmp)  # one with an AND
    (folder / "mlp_engine.v").write_text(verilog[:line.start(1)] + " | " + verilog[line.end(1):])
    with pytest.raises(UserError, match=r"\(synthesis form\) differs from mlp_engine.il: .*comparators"):
        prove_rtl(folder)
    line = re.compile(r"(\$signed\(q\[\d+:\d+\]\) > )(-?\d+);").search(verilog, cmp)  # simulation form
    (folder / "mlp_engine.v").write_text(verilog[:line.start(2)] + str(int(line[2]) + 1) + verilog[line.end(2):])
    with pytest.raises(UserError, match=r"\(simulation form\) differs from mlp_engine.il: .*comparators"):
        prove_rtl(folder)


def test_prove_rtl_needs_both_files(tmp_path):
    with pytest.raises(UserError, match=r"has no mlp_engine.v"):
        prove_rtl(tmp_path)
    assert main(["prove", str(tmp_path), "--rtl", str(tmp_path)]) == 2
