"""Fmax of one MLP engine on its own: the engine of a bundle block inside the ULX3S top,
with the UART link replaced by a minimal harness, so nextpnr's worst path is the engine's
(or the harness's, which the output names).

    python bench/engine_fmax.py                           # export/reference, block 0, 150 MHz target
    python bench/engine_fmax.py --block 1 --clock-mhz 125 --seed 2
    python bench/engine_fmax.py --clock-mhz 250 --registers fmax

The harness: a d*b-bit shift register fed by a 16-bit LFSR (and the UART rx pin) offers a
new token every clock; every count the engine delivers is folded into one bit by a
pipelined XOR tree (a register after each 4-input level) that drives the UART tx pin, so
Yosys keeps the whole engine. Every harness path is one LUT deep. This measures the
engine, not the board top: the board's worst path may lie in its link logic
(docs/results.md, "Hardware").
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
from quweit_hw.contract.bundle_files import load_bundle  # noqa: E402
from quweit_hw.gateware.engine import MLPEngine, Registers  # noqa: E402
from quweit_hw.gateware.link import LEDS  # noqa: E402
from quweit_hw.gateware.toolchain import NEXTPNR_REPORT, build_top  # noqa: E402
from quweit_hw.gateware.top import BoardTop  # noqa: E402
from quweit_hw.resources import REFERENCE  # noqa: E402


def xor_fold(m, bits):
    """All `bits` XOR-folded into one by a tree of 4-input XORs, a register after each level
    (one LUT4 deep per stage), so Yosys keeps everything that drives them."""
    level = list(bits)
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level), 4):
            reg = Signal(reset_less=True)
            m.d.sync += reg.eq(Cat(*level[k:k + 4]).xor())
            nxt.append(reg)
        level = nxt
    return level[0]


class EngineHarness(wiring.Component):
    """An engine (MLPEngine or ModelEngine) fed pseudo-random payloads every clock, its outputs
    XOR-folded to `tx` (with `extra`, more of its signals: a ModelEngine's cycle counter), so
    that nothing is optimised away and only two pins are used."""

    rx: In(1, init=1)
    tx: Out(1)
    leds: Out(LEDS)

    def __init__(self, engine, extra=None):
        self.engine, self.extra = engine, extra
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        lfsr = Signal(16, init=0xACE1)  # x^16 + x^14 + x^13 + x^11 + 1
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        tokens = Signal(len(Value.cast(engine.i.payload)), reset_less=True)
        m.d.sync += tokens.eq(Cat(lfsr[0] ^ self.rx, tokens[:-1]))
        m.d.comb += [engine.i.payload.eq(tokens), engine.i.valid.eq(1), engine.o.ready.eq(1)]
        out = Value.cast(engine.o.payload)
        extra = [] if self.extra is None else [self.extra[k] for k in range(len(self.extra))]
        folded = xor_fold(m, [out[k] & engine.o.valid for k in range(len(out))] + extra)
        m.d.comb += [self.tx.eq(folded), self.leds.eq(Cat(engine.i.ready, engine.o.valid))]
        return m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REFERENCE), help="bundle folder (default: the float reference)")
    p.add_argument("--block", type=int, default=0, help="the bundle block whose engine is built (default 0)")
    p.add_argument("--board", default="ulx3s", help="board file name (default ulx3s)")
    p.add_argument("--clock-mhz", type=float, default=150, help="the engine clock's target in MHz (default 150)")
    p.add_argument("--seed", type=int, default=None, help="nextpnr's seed (default: its own)")
    p.add_argument("--out", default="/tmp/engine_fmax", help="build folder (default /tmp/engine_fmax)")
    p.add_argument("--registers", choices=Registers.PRESETS, default=None,
                   help="the engine's register preset (default: the board's)")
    args = p.parse_args()
    bundle, board = load_bundle(args.bundle), load_board(args.board)
    block = bundle.blocks[args.block]
    registers = args.registers or board.registers
    engine = MLPEngine(block, registers=registers)
    top = BoardTop(EngineHarness(engine), clock_hz=int(args.clock_mhz * 1e6), reset_button=board.reset_button)
    start = time.perf_counter()
    build_top(top, board, args.out, seed=args.seed)  # the board flow's tools, options and Yosys checks
    seconds = time.perf_counter() - start
    pnr = json.loads((Path(args.out) / NEXTPNR_REPORT).read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in pnr["fmax"].items()}
    path = pnr["critical_paths"][0]["path"] if pnr["critical_paths"] else []
    worst = [step for step in path if step["type"] in ("clk-to-q", "setup")]
    print(json.dumps({
        "bundle": args.bundle, "block": args.block, "lut_nodes": block.lut_nodes, "registers": registers,
        "latency_cycles": engine.latency,
        "target_mhz": args.clock_mhz, "fmax_mhz": fmax,
        "critical_path": {"from": worst[0]["from"]["cell"] if worst else None,
                          "to": worst[-1]["to"]["cell"] if worst else None,
                          "delay_ns": round(sum(step["delay"] for step in path), 2),
                          "routing_ns": round(sum(step["delay"] for step in path if step["type"] == "routing"), 2)},
        "trellis_comb": pnr["utilization"].get("TRELLIS_COMB", {}).get("used"),
        "build_seconds": round(seconds, 1), "log": str(Path(args.out) / "top.tim")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
