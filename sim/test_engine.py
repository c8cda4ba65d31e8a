"""cocotb on the generated Verilog of the MLP engine, on Icarus and Verilator (sim/conftest.py
picks them; SIM narrows), checked token by token against the golden model by sim/engine_tb.py.

Designs: the reference bundle's block 0 as `quweit-hw rtl` generates it (>= 10,000 tokens:
both sides of every kept threshold, tokens with every feature on an edge, random tokens,
the range ends; random gaps on i.valid and random backpressure on o.ready), and a small
random block in the ROM form. QUWEIT_SIM_BUNDLE=PATH runs the first design on another bundle,
QUWEIT_SIM_TOKENS=N with another token count (default 10,000).
WAVES=1 writes waveforms into the build folder (sim/sim_build_<sim>_<design>/).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cocotb_tools.runner import get_runner

from quweit_hw.contract import bundle_files, synthetic
from quweit_hw.resources import REFERENCE
from quweit_hw.contract.bundle import signed_range
from quweit_hw.gateware.engine import TOP
from quweit_hw.gateware.verilog import write_rtl

SIM_DIR = Path(__file__).resolve().parent


def verification_tokens(block, count, seed=0):
    """At least `count` tokens: for every kept comparator (f, theta) q_f = theta and theta + 1
    over three random backgrounds; tokens with every feature on a random kept edge; the
    all-minimum and all-maximum tokens; uniform random tokens for the rest."""
    rng = np.random.default_rng(seed)
    lo, hi = signed_range(block.bits)
    rows = list(synthetic.threshold_edges(block, synthetic.random_tokens(block, 3, rng)))
    per_feature = synthetic.feature_edges(block)
    for _ in range(max(1000, count // 10)):
        rows.append([rng.choice(v) for v in per_feature])
    rows += [[lo] * block.d, [hi] * block.d]
    q = np.array(rows, np.int64)
    rest = max(0, count - len(q))
    q = np.concatenate([q, synthetic.random_tokens(block, rest, rng)])
    return q[rng.permutation(len(q))]


def run_cocotb(simulator, design, block_source, block_index, *, count, registers="all", rom=None,
               valid=800, ready=700):
    build_dir = SIM_DIR / f"sim_build_{simulator}_{design}"
    build_dir.mkdir(parents=True, exist_ok=True)
    summary = write_rtl(block_source, build_dir / "rtl", block_index=block_index, registers=registers,
                        rom=rom, force=True)
    block = (bundle_files.load_bundle(block_source).block(block_index))
    tokens = verification_tokens(block, count)
    np.save(build_dir / "tokens.npy", tokens)
    report = build_dir / "scoreboard.json"
    report.unlink(missing_ok=True)
    waves = os.environ.get("WAVES", "0") == "1"

    runner = get_runner(simulator)
    runner.build(
        sources=[build_dir / "rtl" / f"{TOP}.v"], hdl_toplevel=TOP, build_dir=build_dir,
        build_args=["-Wno-fatal", "-O3"] if simulator == "verilator" else [],
        timescale=("1ns", "1ps"), waves=waves, always=True,
    )
    runner.test(
        hdl_toplevel=TOP, test_module="engine_tb", build_dir=build_dir, test_dir=build_dir, waves=waves,
        extra_env={
            "QUWEIT_BUNDLE": str(Path(block_source).resolve()), "QUWEIT_BLOCK": str(block_index),
            "QUWEIT_TOKENS": str(build_dir / "tokens.npy"), "QUWEIT_REPORT": str(report),
            "QUWEIT_VALID": str(valid), "QUWEIT_READY": str(ready), "QUWEIT_SEED": "7",
            "QUWEIT_LATENCY": str(summary["latency_cycles"]),
        },
    )
    # the gate passed only if the scoreboard really saw every token
    assert report.exists(), f"the cocotb test wrote no scoreboard report ({report})"
    result = json.loads(report.read_text())
    assert result["mismatches"] == 0, result
    assert result["received"] == result["tokens"] == len(tokens) >= count, result
    assert result["latency"] == summary["latency_cycles"], result
    return summary, result


def test_engine_reference_bundle(simulator_env):
    source = Path(os.environ.get("QUWEIT_SIM_BUNDLE", REFERENCE))
    assert (source / "manifest.json").exists(), f"no bundle at {source}: the reference bundle must be shipped"
    count = int(os.environ.get("QUWEIT_SIM_TOKENS", "10000"))  # the gate is >= 10,000; lower only by hand
    run_cocotb(simulator_env, "reference", source, 0, count=count, valid=900, ready=800)


def test_engine_rom_form(simulator_env, tmp_path):
    block = synthetic.random_block(d=6, thresholds=8, n=6, hidden=(40,), group_size=6, window=16, seed=11)
    source = bundle_files.write_bundle(tmp_path / "rom_bundle", [block])
    summary, result = run_cocotb(simulator_env, "rom", source, 0, count=1500, registers="layers",
                                 rom={0: 9, 1: 36})
    assert summary["fold"] == 5 and summary["tokens_per_cycle"] == pytest.approx(0.2)
    assert result["cycles"] >= 5 * result["tokens"]  # a folded engine takes a token every 5 clocks
