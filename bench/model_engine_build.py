"""The whole-model engine (gateware.model_engine) of a version-2 bundle through the ULX3S
toolchain: LUT4, flip-flops, DSPs, block RAMs, Fmax, and the images/s and latency they give.

    python bench/model_engine_build.py [export/reference-integer] --lanes 32 --clock-mhz 100
    python bench/model_engine_build.py --unit post --clock-mhz 150     # one unit out of context

The harness: pixels from a 16-bit LFSR (XORed with the UART rx pin) on every clock, the
logits, the class and the cycle counter XOR-folded by a pipelined tree (a register after
each 4-input level) into the UART tx pin, so Yosys keeps the whole engine. Every harness
path is one LUT deep: nextpnr's worst path is the engine's.

With --unit (mac, ln, softmax, post): that arithmetic unit of the engine alone, every input
port (the instruction included) from a shift register fed by the LFSR, every output port
XOR-folded the same way.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amaranth.hdl import Cat, Module, Signal, Value  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from quweit_hw.contract.boards import load_board  # noqa: E402
from quweit_hw.gateware.link import LEDS  # noqa: E402
from quweit_hw.gateware.model_engine import ModelEngine  # noqa: E402
from quweit_hw.gateware.model_rtl import load_program  # noqa: E402
from quweit_hw.gateware.toolchain import NEXTPNR_REPORT, build_top  # noqa: E402
from quweit_hw.gateware.top import BoardTop  # noqa: E402
from engine_fmax import EngineHarness, xor_fold  # noqa: E402  (bench/ is this script's folder)
from quweit_hw.gateware.report import CELLS, placed_cells  # noqa: E402
from quweit_hw.resources import REFERENCE_INTEGER  # noqa: E402


class UnitHarness(wiring.Component):
    """One unit's inputs from an LFSR-fed shift register, its outputs XOR-folded to `tx`."""

    rx: In(1, init=1)
    tx: Out(1)
    leds: Out(LEDS)

    def __init__(self, unit):
        self.unit = unit
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        ins, outs = [], []
        for path, member, value in unit.signature.flatten(unit):
            (ins if member.flow == wiring.In else outs).append(Value.cast(value))
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        bits = Signal(sum(len(v) for v in ins), reset_less=True)
        m.d.sync += bits.eq(Cat(lfsr[0] ^ self.rx, bits[:-1]))
        m.d.comb += Cat(*ins).eq(bits)
        out = Cat(*outs)
        m.d.comb += [self.tx.eq(xor_fold(m, [out[k] for k in range(len(out))])), self.leds.eq(lfsr[:2])]
        return m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default=str(REFERENCE_INTEGER),
                   help="a version-2 (whole integer model) bundle folder (default: the integer reference)")
    p.add_argument("--lanes", type=int, default=32, help="MAC array width (default: 32)")
    p.add_argument("--board", default="ulx3s")
    p.add_argument("--clock-mhz", type=float, default=100)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="build folder (default: /tmp/model_engine_build[_UNIT])")
    p.add_argument("--unit", choices=("mac", "ln", "softmax", "post"), default=None,
                   help="build this unit of the engine alone")
    args = p.parse_args()
    args.out = args.out or "/tmp/model_engine_build" + (f"_{args.unit}" if args.unit else "")
    program, _ = load_program(args.bundle)
    board = load_board(args.board)
    engine = ModelEngine(program, lanes=args.lanes, registers=board.registers)
    harness = UnitHarness(engine.units()[args.unit]) if args.unit else EngineHarness(engine, extra=engine.cycles)
    top = BoardTop(harness, clock_hz=int(args.clock_mhz * 1e6), reset_button=board.reset_button)
    start = time.perf_counter()
    build_top(top, board, args.out, seed=args.seed)
    seconds = time.perf_counter() - start
    pnr = json.loads((Path(args.out) / NEXTPNR_REPORT).read_text())
    cells = placed_cells(args.out)
    fmax = {clk: round(v["achieved"], 2) for clk, v in pnr["fmax"].items()}
    engine_mhz = min(fmax.values())
    cycles = engine.cycles_per_image
    path = pnr["critical_paths"][0]["path"] if pnr["critical_paths"] else []
    worst = [step for step in path if step["type"] in ("clk-to-q", "setup")]
    print(json.dumps({
        "bundle": args.bundle, "unit": args.unit or "engine", "lanes": args.lanes, "instructions": len(engine.compiled.instructions),
        "cycles_per_image": cycles, "target_mhz": args.clock_mhz, "fmax_mhz": fmax,
        "images_per_s_at_fmax": round(engine_mhz * 1e6 / cycles), "latency_us_at_fmax": round(cycles / engine_mhz, 1),
        "cells": {name: cells.get(cell, 0) for name, cell in CELLS.items()},
        "utilization": {k: v for k, v in pnr["utilization"].items() if v.get("used")},
        "critical_path": {"from": worst[0]["from"]["cell"] if worst else None,
                          "to": worst[-1]["to"]["cell"] if worst else None,
                          "delay_ns": round(sum(step["delay"] for step in path), 2),
                          "routing_ns": round(sum(step["delay"] for step in path if step["type"] == "routing"), 2)},
        "build_seconds": round(seconds, 1), "log": str(Path(args.out) / "top.tim")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
