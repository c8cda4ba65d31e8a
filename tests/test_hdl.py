"""The HDL generator: Amaranth simulation of the MLP engine against the golden model, the
summary and the `rtl` command. Small blocks and a few hundred tokens: the Python simulator
is slow."""

import json
import math
import re
import subprocess

import numpy as np
import pytest

from quweit_hw.contract import bundle, bundle_files, golden, synthetic
from quweit_hw.errors import UserError
from quweit_hw.resources import REFERENCE
from quweit_hw.cli import main
from quweit_hw.gateware.comparators import ComparatorBank, greater_than
from quweit_hw.gateware.engine import MLPEngine, Registers
from quweit_hw.gateware.estimate import estimate_lut4
from quweit_hw.gateware.lut import LUTLayer, ROMLUTLayer
from quweit_hw.gateware.popcount import Popcount
from quweit_hw.gateware.rtlsim import RTLBackend
from quweit_hw.gateware.simulation import simulate
from quweit_hw.gateware.verilog import write_rtl
from quweit_hw.gateware.toolchain import toolchain_env

# engines built only to read their properties are never elaborated
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def tokens(block, count, seed):
    return synthetic.random_tokens(block, count, np.random.default_rng(seed))


def edge_tokens(block, seed=0):
    """For every kept comparator (f, theta): a token with q_f = theta and one with theta + 1
    (the other features random), so each comparator is seen on both sides of its edge."""
    return synthetic.threshold_edges(block, tokens(block, 1, seed))


def packed_edge_tokens(block):
    """Every kept comparator's both sides in few tokens: token t puts every feature f on the
    t-th value of its own edge list [theta, theta + 1, ...] (2T tokens at most)."""
    edges = synthetic.feature_edges(block)
    count = max(len(e) for e in edges)
    return np.array([[e[t % len(e)] for e in edges] for t in range(count)], np.int64), edges


# (n, hidden, group_size, registers, rom): n = 2..6, one to three layers, every placement
SHAPES = [
    (2, (), 3, "all", None),
    (3, (20,), 4, "ports", None),
    (4, (24, 16), 2, "layers", None),
    (5, (16,), 4, Registers(comparators=False, layers=(True, False), popcount_every=1), None),
    (6, (12, 10), 5, Registers(comparators=True, layers=(False, True, False), popcount_every=1), None),
    (6, (16,), 4, "all", {0: 5}),  # ROM form, folded 16 / 5 -> 4 clocks per token
    (4, (12, 12), 4, "ports", {1: 12, 2: 3}),  # two ROM layers, fold 1 and 6
]


@pytest.mark.parametrize("n, hidden, k, registers, rom", SHAPES)
def test_engine_matches_golden_with_stalls(n, hidden, k, registers, rom):
    block = synthetic.random_block(d=4, thresholds=5, n=n, hidden=hidden, group_size=k, seed=n + len(hidden))
    engine = MLPEngine(block, registers=registers, rom=rom)
    q = np.concatenate([edge_tokens(block), tokens(block, 60, seed=1)])
    got, trace = simulate(engine, q, valid_prob=0.7, ready_prob=0.6, seed=2)
    np.testing.assert_array_equal(got, golden.counts(block, q))
    assert len(trace["delivered"]) == len(q)
    # a ROM engine takes a token every `fold` clocks, never faster
    assert min(np.diff(trace["accepted"])) >= engine.fold


@pytest.mark.parametrize("registers, rom", [("all", None), ("fmax", None), ("ports", None), ("layers", {0: 3})])
def test_latency_and_full_throughput(registers, rom):
    block = synthetic.random_block(d=3, thresholds=4, n=4, hidden=(12,), group_size=4, seed=5)
    engine = MLPEngine(block, registers=registers, rom=rom)
    q = tokens(block, 40, seed=3)
    got, trace = simulate(engine, q)  # i.valid and o.ready always high
    np.testing.assert_array_equal(got, golden.counts(block, q))
    accepted, delivered = np.array(trace["accepted"]), np.array(trace["delivered"])
    # one token every `fold` clocks from the first cycle, and each comes out exactly `latency` later
    np.testing.assert_array_equal(accepted, np.arange(len(q)) * engine.fold)
    np.testing.assert_array_equal(delivered - accepted, engine.latency)
    assert engine.tokens_per_cycle == 1 / engine.fold


def test_latency_values():
    block = synthetic.random_block(d=2, thresholds=3, n=3, hidden=(8, 8), group_size=16, seed=0)
    # input register 1 + comparators 1 + 3 layers + popcount (4 levels, after every 2 -> 2) + FIFO 2
    assert MLPEngine(block, registers="all").latency == 1 + 1 + 3 + 2 + 2
    assert MLPEngine(block, registers="layers").latency == 1 + 1 + 3 + 0 + 2
    assert MLPEngine(block, registers="fmax").latency == 1 + 1 + 3 + 4 + 2  # a register after every level
    assert MLPEngine(block, registers="ports").latency == 1 + 2
    rom = MLPEngine(block, registers="ports", rom={1: 3})  # 8 nodes, 3 per clock: fold 3, latency 3 + 2
    assert (rom.fold, rom.latency) == (3, 1 + 5 + 2)


def test_every_kept_threshold_edge():
    # duplicated thresholds (shared comparators) and both out-of-range ends (constant bits)
    block = synthetic.random_block(d=3, thresholds=6, n=6, hidden=(), group_size=12, seed=7)
    th = block.thresholds.copy()
    th[0] = [-129, -129, -5, -5, 0, 127]
    th[1] = [-128, -1, 3, 3, 3, 126]
    block = bundle.Block(name="edges", d=3, bits=8, thresholds=th, layers=block.layers, group_size=12)
    used = block.used_thresholds()
    bank = ComparatorBank(block)  # inspected, not built (the module's filter silences the warning)
    kept = {(f, int(th[f, t])) for f in range(3) for t in range(6) if used[f, t]}
    assert sorted(bank.comparators) == sorted(kept)  # one comparator per distinct used (f, theta)
    assert bank.constant == sum(1 for _, theta in kept if theta in (-129, 127))
    q = edge_tokens(block)
    expected_pairs = sum((-128 <= theta <= 127) + (-128 <= theta + 1 <= 127) for _, theta in kept)
    assert len(q) == expected_pairs
    got, _ = simulate(MLPEngine(block, registers="layers"), q, ready_prob=0.5, seed=4)
    np.testing.assert_array_equal(got, golden.counts(block, q))


def test_greater_than_logic_is_exhaustively_right():
    for width in (1, 3, 8):
        for c in range(2**width):
            for x in range(2**width):
                assert greater_than([(x >> k) & 1 for k in range(width)], c) == int(x > c), (width, x, c)


def test_components_standalone():
    block = synthetic.random_block(d=2, thresholds=4, n=3, hidden=(6,), group_size=3, seed=9)
    with pytest.raises(ValueError, match=r"reads bits \[0, 9\] of a 4-bit input"):
        LUTLayer(np.array([[0, 9, 1]]), np.zeros((1, 8), np.uint8), 4)
    with pytest.raises(ValueError, match="nodes_per_cycle must be a positive int, got 0"):
        ROMLUTLayer(np.array([[0, 1, 2]]), np.zeros((1, 8), np.uint8), 4, 0)
    pc = Popcount(groups=3, group_size=16, register_every=1)
    assert (pc.width, pc.levels, pc.latency) == (5, 4, 4)
    assert Popcount(groups=1, group_size=1).latency == 0
    with pytest.raises(ValueError, match="unknown register preset 'fast'"):
        MLPEngine(block, registers="fast")
    with pytest.raises(ValueError, match="rom layer index 5 out of range"):
        MLPEngine(block, rom={5: 2})
    with pytest.raises(ValueError, match="registers.layers has 1 entries for a block of 2 layers"):
        MLPEngine(block, registers=Registers(layers=(True,)))


# Yosys proves the synthesis form of a layer (built for a platform) equal to the generic one
EQUIV_SCRIPT = ("read_rtlil gate.il; read_rtlil gold.il; proc; memory_map; "
                "miter -equiv -flatten -make_assert gold gate miter; hierarchy -top miter; sat -verify -prove-asserts miter")


def synthesis_form_equivalent(tmp_path, gold, gate):
    """Whether Yosys proves component `gate`, built for the ULX3S, equal to `gold` built
    for simulation (no platform)."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    gold = rtlil.convert(gold, name="gold")
    gate = rtlil.convert(gate, name="gate", platform=ULX3S_85F_Platform())
    (tmp_path / "gold.il").write_text(gold)
    (tmp_path / "gate.il").write_text(gate)
    run = subprocess.run([toolchain_env()["YOSYS"], "-q", "-p", EQUIV_SCRIPT], cwd=tmp_path,
                         capture_output=True, text=True)
    if run.returncode == 0:
        return True
    # anything but a failed proof (a crash, a missing tool) fails the test, never passes it
    assert "proof did fail" in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    return False


@pytest.mark.parametrize("n", range(1, 8))
def test_synthesis_form_equals_generic(tmp_path, n):
    """For synthesis the LUT nodes are `Array`s of table bits (Yosys maps them without a
    per-table techmap): proven equal, for every input, to the generic `bit_select` form
    (which the simulations check against the golden model); a single flipped table bit
    makes the proof fail."""
    rng = np.random.default_rng(n)
    edges = [np.zeros(2**n), np.ones(2**n)] + [np.eye(2**n)[k] for k in range(0, 2**n, max(1, 2**n // 8))]
    table = np.concatenate([np.array(edges), rng.integers(0, 2, (6, 2**n))]).astype(np.uint8)
    mapping = np.stack([rng.choice(10, n, replace=False) for _ in table])
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    assert "cell \\$shift" not in rtlil.convert(LUTLayer(mapping, table, 10), platform=ULX3S_85F_Platform())  # an Array
    assert synthesis_form_equivalent(tmp_path, LUTLayer(mapping, table, 10), LUTLayer(mapping, table, 10))
    flipped = table.copy()
    flipped[-1, 2**n - 1] ^= 1
    assert not synthesis_form_equivalent(tmp_path, LUTLayer(mapping, table, 10), LUTLayer(mapping, flipped, 10))


def test_comparators_synthesis_form_equals_generic(tmp_path):
    """Built for a platform, the comparators are AND/OR logic (greater_than): proven equal,
    for every input, to `q > theta` for every threshold from -128 to 126; thresholds
    moved up by one make the proof fail."""
    d, T = 8, 32  # 256 thermometer bits: thresholds -128..126 (and 126 again), each read by a LUT
    layer = bundle.Layer(np.arange(d * T).reshape(-1, 2), np.zeros((d * T // 2, 4), np.uint8), d * T)

    def bank(th):
        return ComparatorBank(bundle.Block(name="cmp", d=d, bits=8, thresholds=th, layers=(layer,),
                                           group_size=d * T // 2 // d))
    th = np.sort(np.append(np.arange(-128, 127), 126)).reshape(d, T)
    assert sorted({theta for _, theta in bank(th).comparators}) == list(range(-128, 127))
    assert synthesis_form_equivalent(tmp_path, bank(th), bank(th))
    assert not synthesis_form_equivalent(tmp_path, bank(th), bank(th + 1))


def test_lut4_estimate():
    block = synthetic.random_block(d=2, thresholds=4, n=6, hidden=(10,), group_size=4, seed=1)
    engine = MLPEngine(block, minimise=False)  # the bundle's nodes as they are
    est = estimate_lut4(engine)
    kept = len(engine.comparator_bank.comparators) - engine.comparator_bank.constant
    assert est["lut_layers"] == (10 + 8) * 4  # six-input node: 4 LUT4
    minimised = MLPEngine(block)  # per node: its tables (tests/test_dont_care.py)
    assert estimate_lut4(minimised)["lut_layers"] == sum(u.lut4 for u in minimised.layer_units) < est["lut_layers"]
    assert est["comparators"] == math.ceil(kept * 0.8 * 8)
    assert est["popcount"] == 14  # 2 groups of 4 bits at 1.75 LUT4 per bit
    assert est["total"] == est["lut_layers"] + est["comparators"] + est["popcount"]


def test_write_rtl_and_summary(tmp_path):
    block = synthetic.random_block(d=2, thresholds=4, n=4, hidden=(8,), group_size=4, seed=3)
    path = bundle_files.write_bundle(tmp_path / "b", [block, block])
    summary = write_rtl(path, tmp_path / "out", block_index=1, rom={0: 4})
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["mlp_engine.il", "mlp_engine.v", "summary.json"]
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [l["lut_nodes"] for l in summary["layers"]] == [8, 8]
    assert summary["layers"][0]["form"] == "rom" and summary["layers"][0]["fold"] == 2
    assert summary["tokens_per_cycle"] == 0.5 and "1/2" in summary["throughput"]
    assert summary["popcount"]["width"] == 3
    verilog = (tmp_path / "out" / "mlp_engine.v").read_text()
    assert "module mlp_engine(" in verilog and "i__payload" in verilog and "o__ready" in verilog
    assert "mlp_engine.layer1" in verilog  # readable submodule names
    with pytest.raises(UserError, match="exists"):
        write_rtl(path, tmp_path / "out")
    write_rtl(block, tmp_path / "out", force=True)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["layers"][0]["form"] == "fabric"


def test_cli_rtl_and_bad_input(tmp_path, capsys):
    block = synthetic.random_block(d=2, thresholds=4, n=3, hidden=(), group_size=4, seed=3)
    good = bundle_files.write_bundle(tmp_path / "good", [block])
    assert main(["rtl", str(good), "-o", str(tmp_path / "hw" / "x")]) == 0
    assert "latency" in capsys.readouterr().out

    def fails(argv, pattern, out):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and pattern in err, err
        assert not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.glob(".*"))

    fails(["rtl", str(good), "--block", "3", "-o", str(tmp_path / "hw" / "y")], "block index 3 out of range",
          tmp_path / "hw" / "y")
    wide = synthetic.random_block(d=1, thresholds=16, n=9, hidden=(), group_size=2, seed=0)
    path = bundle_files.write_bundle(tmp_path / "wide", [wide])
    fails(["rtl", str(path), "-o", str(tmp_path / "hw" / "z")], "fan-in n=9", tmp_path / "hw" / "z")
    corrupt = bundle_files.write_bundle(tmp_path / "corrupt", [block])
    (corrupt / "block0" / "layer0_table.npy").write_bytes(b"garbage")
    fails(["rtl", str(corrupt), "-o", str(tmp_path / "hw" / "w")], "corrupt", tmp_path / "hw" / "w")
    fails(["rtl", str(good), "--rom", "4:2", "-o", str(tmp_path / "hw" / "v")], "rom layer index 4",
          tmp_path / "hw" / "v")
    assert main(["rtl", str(good), "-o", str(tmp_path / "hw" / "x")]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_rtl_backend_icarus(tmp_path):
    # `eval --mlp-backend rtl` path: generated Verilog in the lean Icarus harness, with stalls
    from quweit_hw.contract.packing import pack_tokens, unpack_counts
    block = synthetic.random_block(d=3, thresholds=4, n=3, hidden=(9,), group_size=5, seed=2)
    backend = RTLBackend(bundle_files.load_bundle(bundle_files.write_bundle(tmp_path / "b", [block])), sim="icarus")
    try:
        q = np.concatenate([edge_tokens(block), tokens(block, 50, seed=3)])
        np.testing.assert_array_equal(backend.counts(0, q), golden.counts(block, q))
        got = backend.engine(0).counts(q, valid_permille=600, ready_permille=500, seed=3)
        np.testing.assert_array_equal(got, golden.counts(block, q))
        assert backend.engine(0).last_run["cycles"] > len(q) * 1.5  # the stalls did happen
    finally:
        backend.close()
    assert not backend.workdir.exists()
    # port packing across 32-bit words: 5 features of 13 bits, counts of 7 bits
    q = np.array([[-4096, 4095, -1, 0, 1234]])
    words = pack_tokens(q, 13)
    value = sum(int(w) << (32 * k) for k, w in enumerate(words[0]))
    assert [((value >> (13 * f)) & 0x1FFF) for f in range(5)] == [4096, 4095, 8191, 0, 1234]
    counts = np.array([[1, 127, 64, 0, 5]])
    packed = sum(int(c) << (7 * j) for j, c in enumerate(counts[0]))
    np.testing.assert_array_equal(unpack_counts([[(packed >> (32 * k)) & 0xFFFFFFFF for k in range(2)]], 5, 7),
                                  counts)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_verilog_comparators_on_every_value(tmp_path, sim):
    """The Verilog's comparators (AND/OR logic, verilog._comparator_body) against the golden
    model for every int8 value of every feature, every threshold from -128 to 126 kept: each
    one-input LUT passes its thermometer bit on, so each count is a feature's level."""
    d, T = 8, 32
    th = np.sort(np.append(np.arange(-128, 127), 126)).reshape(d, T)
    layer = bundle.Layer(np.arange(d * T).reshape(-1, 1), np.tile([0, 1], (d * T, 1)).astype(np.uint8), d * T)
    block = bundle.Block(name="cmp", d=d, bits=8, thresholds=th, layers=(layer,), group_size=T)
    q = (np.arange(256)[:, None] + 37 * np.arange(d)[None, :]) % 256 - 128  # every value, per feature
    backend = RTLBackend(bundle_files.load_bundle(bundle_files.write_bundle(tmp_path / "b", [block])), sim=sim)
    try:
        got = backend.counts(0, q)
    finally:
        backend.close()
    np.testing.assert_array_equal(got, golden.counts(block, q))
    assert got.min() == 0 and got.max() == T and len(np.unique(got)) > T  # both ends and each level seen


def reference_tokens(block, limit=48):
    """Real activations of the reference model's LUT-MLP block (the q its torch eval feeds the
    block on test inputs) when the checkpoint and data are there, else None."""
    ckpt = REFERENCE / "checkpoint.pt"
    if not ckpt.exists():
        return None
    from quweit_hw.backends import GoldenBackend, attach, detach
    from quweit_hw.model.checkpoint import load_checkpoint
    from quweit_hw.model.evaluate import evaluate

    model, meta = load_checkpoint(ckpt)
    seen = []

    class Recorder(GoldenBackend):
        def counts(self, index, q):
            if index == 0:
                seen.append(np.asarray(q))
            return super().counts(index, q)

    attach(model, Recorder(bundle_files.load_bundle(REFERENCE)))
    try:
        evaluate(model, meta, "test" if meta.get("task") == "fashion-mnist" else "val", 4, 4, False)
    finally:
        detach(model)
    q = np.concatenate(seen)
    return q[np.random.default_rng(0).permutation(len(q))[:limit]]


def test_reference_bundle():
    # The shipped bundle must exist (a skipped gate is never a pass).
    assert (REFERENCE / "manifest.json").exists(), f"reference bundle missing at {REFERENCE}"
    ref = bundle_files.load_bundle(REFERENCE)
    block = ref.blocks[0]
    engine = MLPEngine(block)
    edges, per_feature = packed_edge_tokens(block)
    for f, values in enumerate(per_feature):  # every kept edge value of every feature is in some token
        assert set(values) <= set(edges[:, f].tolist())
    real = reference_tokens(block)
    parts = [edges] + ([real] if real is not None else [tokens(block, 32, seed=8)])
    q = np.concatenate(parts)
    got, _ = simulate(engine, q, valid_prob=0.8, ready_prob=0.7, seed=1)
    np.testing.assert_array_equal(got, golden.counts(block, q))


def _evaluate(expr, bits):
    """Value of a Verilog ?: / ~ / i[k] / 1'bV expression (verilog._mux_tree's output) for `bits`."""
    tokens = re.findall(r"\(|\)|\?|:|~|1'b[01]|i\[\d+\]", expr)
    assert "".join(tokens) == expr.replace(" ", "")

    def parse(at):
        t = tokens[at]
        if t == "(":
            cond, at = parse(at + 1)
            assert tokens[at] == "?"
            hi, at = parse(at + 1)
            assert tokens[at] == ":"
            lo, at = parse(at + 1)
            assert tokens[at] == ")"
            return (hi if cond else lo), at + 1
        if t == "~":
            value, at = parse(at + 1)
            return 1 - value, at
        if t.startswith("1'b"):
            return int(t[3]), at + 1
        return bits[int(t[2:-1])], at + 1

    value, end = parse(0)
    assert end == len(tokens)
    return value


@pytest.mark.parametrize("n", range(1, 8))
def test_verilog_node_tree_is_its_table(n):
    """Each node of the Verilog is a ?: tree on its address bits (verilog._mux_tree): equal to
    its table on every address, for constant, one-hot, alternating and random tables."""
    from quweit_hw.gateware.verilog import _mux_tree
    rng = np.random.default_rng(n)
    size = 2 ** n
    tables = [np.zeros(size), np.ones(size), np.arange(size) % 2, (np.arange(size) >> (n - 1)) & 1,
              *np.eye(size)[[0, size - 1]], 1 - np.eye(size)[size // 2], *rng.integers(0, 2, (8, size))]
    for table in tables:
        table = [int(v) for v in table]
        expr = _mux_tree(table, [f"i[{k}]" for k in range(n)])
        assert [_evaluate(expr, [(a >> k) & 1 for k in range(n)]) for a in range(size)] == table, (table, expr)
    assert _mux_tree([0, 1] * (size // 2), [f"i[{k}]" for k in range(n)]) == "i[0]"  # folded to one input
