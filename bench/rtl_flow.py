"""Benchmark of the RTL flow: bundle block -> Verilog, and simulated tokens per second.

For the reference bundle (block 0) and a synthetic block of 4096 six-input LUTs
(d=64, T=16, 3072 + 1024 LUTs, local windows of 32), in the fabric form and the ROM
form: generation time and Verilog size (write_rtl: elaboration, RTLIL, Yosys
write_verilog), the ECP5 LUT4 estimate, and tokens/s on Amaranth's simulator,
Icarus and Verilator. Every simulated run is checked against the golden model.

Harnesses (quweit_hw.gateware.rtlsim): Verilator and Icarus figures come from the lean
harnesses (a C++ main for Verilator, a Verilog testbench for Icarus) with i.valid
and o.ready always high, timed inside the simulation loop (Verilator: wall time and the
loop's CPU time, which a machine shared with other jobs does not inflate) or around the
vvp process (Icarus); the Amaranth figure from quweit_hw.gateware.simulation.simulate. cocotb is not in
these loops (its per-clock Python overhead caps it near 1,000 tokens/s; the cocotb
testbench reports its own rate in sim/sim_build_*/scoreboard.json). Goals
(issue 5): 4096-LUT block to Verilog < 30 s; Verilator >= 100,000 tokens/s on the
reference engine.

    .venv/bin/python bench/rtl_flow.py [--bundle PATH] [--quick] [--json FILE]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quweit_hw.contract import bundle_files, golden, synthetic
from quweit_hw.resources import REFERENCE
from quweit_hw.gateware.engine import TOP, MLPEngine
from quweit_hw.gateware.rtlsim import VerilogEngine
from quweit_hw.gateware.simulation import simulate
from quweit_hw.gateware.verilog import write_rtl


def tokens(block, count, seed=0):
    return synthetic.random_tokens(block, count, np.random.default_rng(seed))


def measure(name, block, rom, workdir, counts):
    row = {"design": name, "lut_nodes": block.lut_nodes, "form": "rom" if rom else "fabric"}
    out = workdir / name
    start = time.perf_counter()
    summary = write_rtl(block, out / "rtl", rom=rom, force=True, rtlil_form="simulation")  # as rtlsim writes it
    row["generate_s"] = time.perf_counter() - start
    row["verilog_kib"] = summary["verilog_bytes"] / 1024
    row["lut4_estimate"] = summary["ecp5_lut4_estimate"]["total"]
    row["latency"] = summary["latency_cycles"]
    row["tokens_per_cycle"] = summary["tokens_per_cycle"]

    q = tokens(block, counts["amaranth"])
    engine = MLPEngine(block, rom=rom)
    start = time.perf_counter()
    got, _ = simulate(engine, q)
    row["amaranth_tok_s"] = len(q) / (time.perf_counter() - start)
    assert (got == golden.counts(block, q)).all(), f"{name}: Amaranth simulation differs from golden"

    verilog = out / "rtl" / f"{TOP}.v"
    for sim in ("icarus", "verilator"):
        runner = VerilogEngine(verilog, block, out / sim, sim=sim)
        if runner.build_seconds is not None:
            row[f"{sim}_build_s"] = runner.build_seconds
        q = tokens(block, counts[sim], seed=1)
        got = runner.counts(q)
        assert (got == golden.counts(block, q)).all(), f"{name}: {sim} differs from golden"
        row[f"{sim}_tok_s"] = len(q) / runner.last_run["sim_seconds"]
        if runner.last_run.get("cpu_seconds"):  # the loop's CPU time: what an unloaded core would take
            row[f"{sim}_tok_cpu_s"] = len(q) / runner.last_run["cpu_seconds"]
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--bundle", default=str(REFERENCE),
                        help="the bundle measured as 'reference' (default: export/reference)")
    parser.add_argument("--workdir", help="keep the generated designs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    counts = {"amaranth": max(20, int(200 * scale)), "icarus": max(20, int(200 * scale)),
              "verilator": max(1000, int(200_000 * scale))}

    designs = []
    if (Path(args.bundle) / "manifest.json").exists():
        ref = bundle_files.load_bundle(args.bundle).blocks[0]
        designs += [("reference", ref, None),
                    ("reference-rom64", ref, {i: 64 for i in range(len(ref.layers))})]
    else:
        print(f"no bundle at {args.bundle}: measuring the synthetic block only", file=sys.stderr)
    wide = synthetic.random_block(d=64, thresholds=16, n=6, hidden=(3072,), group_size=16, window=32,
                                  seed=0, name="synthetic-4096")
    designs += [("synthetic-4096", wide, None)]

    with tempfile.TemporaryDirectory(prefix="rtl-flow-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        rows = [measure(name, block, rom, workdir, counts) for name, block, rom in designs]

    cols = ["design", "lut_nodes", "form", "generate_s", "verilog_kib", "lut4_estimate", "latency",
            "tokens_per_cycle", "amaranth_tok_s", "icarus_tok_s", "verilator_build_s", "verilator_tok_s",
            "verilator_tok_cpu_s"]
    print()
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row.get(c, ''):.3g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                         for c in cols))
    synth = next(r for r in rows if r["design"] == "synthetic-4096")
    print(f"\ngoal: 4096-LUT block to Verilog < 30 s: {synth['generate_s']:.1f} s "
          f"({'met' if synth['generate_s'] < 30 else 'NOT met'})")
    ref = next((r for r in rows if r["design"] == "reference"), None)
    if ref:
        cpu = ref.get("verilator_tok_cpu_s", 0)
        print(f"goal: Verilator >= 100,000 tokens/s on the reference engine (lean C++ harness): "
              f"{cpu:,.0f} tokens per CPU-second, {ref['verilator_tok_s']:,.0f} tokens per wall-second "
              f"on this machine ({'met' if cpu >= 1e5 else 'NOT met'} by CPU time)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
