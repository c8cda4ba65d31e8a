# amaranth: UnusedElaboratable=no
"""Don't-care minimisation (gateware.dont_care): exact reachable addresses, and minimised
engines equal to the golden model on every int8 value of every feature and on the
reference model's real activations, in numpy and in Amaranth simulation; a wrong fill fails."""

import itertools

import numpy as np
import pytest

from quweit_hw.contract import bundle, bundle_files, golden, synthetic
from quweit_hw.contract.bundle import signed_range
from quweit_hw.gateware import dont_care
from quweit_hw.gateware.dont_care import INNER, Node
from quweit_hw.gateware.engine import MLPEngine
from quweit_hw.gateware.rtlsim import RTLBackend
from quweit_hw.gateware.simulation import simulate
from quweit_hw.resources import REFERENCE


def _test_hdl():
    # the real-activation recorder lives in test_hdl.py (pytest's importlib mode has no
    # sibling imports): load that file as a module
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("_test_hdl", Path(__file__).with_name("test_hdl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def edgy_block(hidden=(24,), seed=3, d=4, T=8, group_size=4):
    """A block whose nodes read 2-3 features each (windowed, feature-major), with equal
    thresholds, thresholds below and at the top of the input range (constant bits) and
    one at its bottom (-128: only q = -128 sets that bit to 0)."""
    block = synthetic.random_block(d=d, thresholds=T, n=6, hidden=hidden, group_size=group_size,
                                   window=T + 2, seed=seed)
    th = block.thresholds.copy()
    th[0, :3] = -129  # constant 1
    th[1, 2:4] = th[1, 2]  # equal thresholds: equal bits
    th[2, -2:] = 127  # constant 0
    th[3, 0] = -128  # the lowest token alone sets it to 0
    th = np.sort(th, axis=1)
    return bundle.Block(name="edgy", d=d, bits=8, thresholds=th, layers=block.layers, group_size=group_size)


def sweep_tokens(block, seed=0):
    """Every int8 value of every feature: 256 tokens per feature, the other features random."""
    lo, hi = signed_range(block.bits)
    rng = np.random.default_rng(seed)
    parts = []
    for f in range(block.d):
        q = rng.integers(lo, hi + 1, (hi - lo + 1, block.d))
        q[:, f] = np.arange(lo, hi + 1)
        parts.append(q)
    return np.concatenate(parts)


def layer_outputs(block, nodes_per_layer, q):
    """The counts of `block` with its layers replaced by minimised Nodes (numpy)."""
    xt = np.ascontiguousarray(golden.thermometer(block, q).T)
    for nodes in nodes_per_layer:
        xt = np.stack([node.evaluate(xt) for node in nodes])
    return golden.group_popcount(block, np.ascontiguousarray(xt.T))


def test_reachable_addresses_are_exact():
    """thermometer_reachable equals the addresses seen over every joint value of the node's
    features (checked exhaustively for nodes of one or two features)."""
    block = edgy_block()
    lo, hi = signed_range(block.bits)
    checked = 0
    for row in block.layers[0].mapping:
        features = sorted(set((row // block.T).tolist()))
        if len(features) > 2:
            continue
        q = np.zeros(((hi - lo + 1) ** len(features), block.d), np.int64)
        for k, values in enumerate(itertools.product(range(lo, hi + 1), repeat=len(features))):
            q[k, features] = values
        bits = golden.thermometer(block, q)[:, row].astype(np.int64)
        seen = np.unique((bits << np.arange(len(row))).sum(axis=1))
        np.testing.assert_array_equal(dont_care.thermometer_reachable(block, row), seen)
        checked += 1
    assert checked >= 5


def test_deeper_reachable_constants_and_repeats():
    # input 7 read twice (positions 0 and 2) gives equal bits; input 3 is constant 1
    got = dont_care.deeper_reachable([7, 3, 7], {3: 1})
    np.testing.assert_array_equal(got, [0b010, 0b111])


def test_minimise_node_keeps_reachable_values_and_drops_inputs():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 2, 64).astype(np.uint8)
    table[32:] = table[:32]  # independent of input 5 ...
    addresses = np.arange(0, 64, 2)  # ... and input 0 is never 1 on a reachable address
    node = dont_care.minimise_node(list(range(10, 16)), table, addresses)
    assert node.fan_in <= 4 and {10, 15}.isdisjoint(node.sources())
    xt = ((addresses[None, :] >> np.arange(6)[:, None]) & 1).astype(np.uint8)
    full = np.zeros((16, len(addresses)), np.uint8)
    full[10:16] = xt
    np.testing.assert_array_equal(node.evaluate(full), table[addresses])


def test_a_wrong_fill_is_refused(monkeypatch):
    """The minimiser checks its own result: a fill that changes a reachable address raises."""
    block = edgy_block()
    row, table = block.layers[0].mapping[0], block.layers[0].table[0]
    addresses = dont_care.thermometer_reachable(block, row)
    original = dont_care.project

    def wrong(addresses, values, kept):
        reduced, v = original(addresses, values, kept)
        return reduced, np.concatenate([[1 - v[0]], v[1:]]).astype(v.dtype)
    monkeypatch.setattr(dont_care, "project", wrong)
    with pytest.raises(ValueError, match="changed node"):
        dont_care.minimise_node(row, table, addresses)


def test_reference_minimised_equals_golden_every_int8_value():
    """On the reference block 0: every int8 value of every feature (others random), in
    numpy, and the estimate's goal of 3 LUT4 or fewer per layer-0 node."""
    block = bundle_files.load_bundle(REFERENCE).blocks[0]
    layers = dont_care.minimise_block(block)
    q = sweep_tokens(block)
    np.testing.assert_array_equal(layer_outputs(block, layers, q), golden.counts(block, q))
    figures = dont_care.layer_figures(block, 0, layers[0])
    assert figures["lut4_per_node_after"] <= 3.0
    assert abs(figures["reachable_mean"] - 18.88) < 0.01 and figures["reachable_median"] == 16
    # a wrong fill on a reachable address shows: flip node 0's value on the first sweep token
    xt = np.ascontiguousarray(golden.thermometer(block, q[:1]).T)
    node = layers[0][0]
    inner = node.inner.evaluate(xt) if node.inner is not None else None
    address = sum(int((inner if x == INNER else xt[x])[0]) << l for l, x in enumerate(node.inputs))
    table = node.table.copy()
    table[address] ^= 1
    wrong = [[Node(node.inputs, table, node.inner), *layers[0][1:]]]
    hidden = np.stack([n.evaluate(xt) for n in wrong[0]])
    assert not np.array_equal(hidden, golden.stages(block, q[:1])[1].T)


def test_minimised_engine_simulates_every_int8_value():
    """Amaranth simulation of a minimised engine (two layers; one-layer too) on every int8
    value of every feature; the two-level and reduced forms do occur."""
    for block in (edgy_block(), edgy_block(hidden=(), seed=5, group_size=6)):
        engine = MLPEngine(block)
        assert engine.minimise and any(node.inner is not None for node in engine.layer_units[0].nodes)
        assert engine.layer_units[0].lut4 < MLPEngine(block, minimise=False).layer_units[0].lut4
        q = sweep_tokens(block)
        got, _ = simulate(engine, q, ready_prob=0.9, seed=1)
        np.testing.assert_array_equal(got, golden.counts(block, q))


def test_wrong_fill_fails_in_simulation():
    """A minimised one-layer engine with one table bit flipped at a reachable address
    disagrees with the golden model on the token that reaches it."""
    block = edgy_block(hidden=(), seed=5, group_size=6)
    engine = MLPEngine(block)
    q = sweep_tokens(block)[:64]
    xt = np.ascontiguousarray(golden.thermometer(block, q).T)
    j = next(j for j, node in enumerate(engine.layer_units[0].nodes) if node.inner is not None)
    node = dont_care.minimise_block(block)[0][j]  # thermometer coordinates, to find the address
    inner = node.inner.evaluate(xt)
    address = sum(int((inner if x == INNER else xt[x])[0]) << l for l, x in enumerate(node.inputs))
    built = engine.layer_units[0].nodes[j]
    table = built.table.copy()
    table[address] ^= 1
    engine.layer_units[0].nodes[j] = Node(built.inputs, table, built.inner)
    got, _ = simulate(engine, q[:4], seed=1)
    assert (got[0] != golden.counts(block, q[:1])[0]).any()


def test_reference_engine_real_activations():
    """The minimised reference engine in Amaranth simulation on real activations of the
    reference model and on a slice of the every-int8-value sweep."""
    block = bundle_files.load_bundle(REFERENCE).blocks[0]
    engine = MLPEngine(block)
    summary = engine.summary()
    assert summary["layers"][0]["minimised"] and summary["layers"][0]["lut4_estimate"] <= 3 * 2048
    # a thermometer bit no minimised node reads loses its comparator
    assert len(engine.comparator_bank.comparators) <= len(MLPEngine(block, minimise=False).comparator_bank.comparators)
    real = _test_hdl().reference_tokens(block, limit=48)
    sweep = sweep_tokens(block)[::512]
    q = np.concatenate([real if real is not None else sweep[:16], sweep])
    got, _ = simulate(engine, q, valid_prob=0.8, ready_prob=0.7, seed=2)
    np.testing.assert_array_equal(got, golden.counts(block, q))


def test_minimised_verilog_on_icarus(tmp_path):
    """The Verilog form of two-level nodes (the `g` inner tables) under Icarus."""
    block = edgy_block(seed=7)
    path = bundle_files.write_bundle(tmp_path / "b", [block])
    backend = RTLBackend(bundle_files.load_bundle(path), sim="icarus")
    try:
        q = sweep_tokens(block)[::3]
        np.testing.assert_array_equal(backend.counts(0, q), golden.counts(block, q))
    finally:
        backend.close()


# the inner tables are ECP5 LUT4 instances for synthesis: Yosys reads their simulation
# model (and derives each INIT before the miter flattens it) to prove the forms equal
EQUIV_SCRIPT = ("read_verilog +/ecp5/cells_sim.v; read_rtlil gate.il; hierarchy -top gate; read_rtlil gold.il; "
                "proc; memory_map; miter -equiv -flatten -make_assert gold gate miter; hierarchy -top miter; "
                "sat -verify -prove-asserts miter")


def platform_form_equivalent(tmp_path, gold, gate):
    """Whether Yosys proves LUTLayer `gate` built for the ULX3S (LUT4 instances, Arrays)
    equal, for every input, to `gold` built for simulation (no platform)."""
    import subprocess

    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from quweit_hw.gateware.toolchain import toolchain_env
    (tmp_path / "gold.il").write_text(rtlil.convert(gold, name="gold"))
    (tmp_path / "gate.il").write_text(rtlil.convert(gate, name="gate", platform=ULX3S_85F_Platform()))
    run = subprocess.run([toolchain_env()["YOSYS"], "-q", "-p", EQUIV_SCRIPT], cwd=tmp_path,
                         capture_output=True, text=True)
    if run.returncode == 0:
        return True
    assert "proof did fail" in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    return False


def test_platform_form_of_minimised_nodes_equals_generic(tmp_path):
    """Built for a platform, a two-level node's inner table is an ECP5 LUT4 instance (so
    abc9 cannot flatten it back into a six-input LUT): proven equal to the generic form
    the simulations check; one flipped bit of an inner table makes the proof fail."""
    from quweit_hw.gateware.lut import LUTLayer
    block = bundle_files.load_bundle(REFERENCE).blocks[0]
    layer = block.layers[0]
    nodes = [dont_care.minimise_node(r, t, dont_care.thermometer_reachable(block, r))
             for r, t in zip(layer.mapping[:24], layer.table[:24])]
    assert {node.fan_in for node in nodes} >= {5, 6} and any(len(n.inner.inputs) < 4 for n in nodes if n.inner)

    def unit(nodes):
        return LUTLayer(layer.mapping[:24], layer.table[:24], layer.in_features, nodes=nodes)
    assert platform_form_equivalent(tmp_path, unit(nodes), unit(nodes))
    j = next(j for j, node in enumerate(nodes) if node.inner is not None)
    inner = nodes[j].inner
    flipped = Node(inner.inputs, inner.table ^ np.eye(len(inner.table), dtype=np.uint8)[-1])
    wrong = [*nodes[:j], Node(nodes[j].inputs, nodes[j].table, flipped), *nodes[j + 1:]]
    assert not platform_form_equivalent(tmp_path, unit(nodes), unit(wrong))
