"""cocotb on the generated Verilog of the whole board link (`LinkCore`: UART, framing, payload
buffer, two MLP engines), on Icarus and Verilator (SIM narrows, a missing simulator fails),
driven through its UART pins by sim/board_tb.py with frames from quweit_hw.contract.protocol and checked
against the golden model: good frames, a corrupted frame, back-to-back frames on two engines,
a too-long frame, a truncated frame (timeout) and recovery. WAVES=1 writes waveforms.
"""

import json
import os
from pathlib import Path

from amaranth.back import verilog
from cocotb_tools.runner import get_runner

from quweit_hw.contract.boards import uart_divisor
from quweit_hw.contract.synthetic import random_block
from quweit_hw.gateware.engine import MLPEngine
from quweit_hw.gateware.link import LinkCore
from quweit_hw.gateware.toolchain import tool_environment as _tool_environment

SIM_DIR = Path(__file__).resolve().parent
CLOCK_HZ, BAUD = 100e6, 12.5e6  # a sim clock and rate with divisor 8; the divisor logic is the real one
BLOCKS = [dict(d=8, thresholds=8, n=6, hidden=(48,), group_size=6, window=16, seed=s, name=f"blocks.{s}.mlp")
          for s in (3, 4)]
SLOTS = [0, 1]
TIMEOUT_BITS = 60


def test_board_link(simulator_env, tmp_path):
    simulator = simulator_env
    build_dir = SIM_DIR / f"sim_build_{simulator}_board"
    build_dir.mkdir(parents=True, exist_ok=True)
    divisor = uart_divisor(CLOCK_HZ, BAUD)
    engines = [(slot, MLPEngine(random_block(**params))) for slot, params in zip(SLOTS, BLOCKS)]
    core = LinkCore(engines, divisor=divisor, max_tokens=4, timeout=TIMEOUT_BITS * divisor, stretch=64,
                    bundle_id=0xB0A4D)
    with _tool_environment():
        (build_dir / "link_core.v").write_text(verilog.convert(core, name="link_core", emit_src=False))
    result = build_dir / "result.json"
    result.unlink(missing_ok=True)
    spec = {"blocks": BLOCKS, "slots": SLOTS, "d": 8, "divisor": divisor, "max_tokens": 4, "seed": 5,
            "timeout_bits": TIMEOUT_BITS, "result": str(result)}
    (build_dir / "spec.json").write_text(json.dumps(spec))
    waves = os.environ.get("WAVES", "0") == "1"

    runner = get_runner(simulator)
    runner.build(sources=[build_dir / "link_core.v"], hdl_toplevel="link_core", build_dir=build_dir,
                 build_args=["-Wno-fatal"] if simulator == "verilator" else ["-g2005"],
                 timescale=("1ns", "1ps"), waves=waves, always=True)
    runner.test(hdl_toplevel="link_core", test_module="board_tb", build_dir=build_dir, test_dir=build_dir,
                waves=waves, extra_env={"QUWEIT_BOARD_SPEC": str(build_dir / "spec.json")})
    # the gate passed only if the testbench ran to the end and saw every reply
    assert result.exists(), f"the cocotb test wrote no result ({result})"
    outcome = json.loads(result.read_text())
    assert outcome["replies"] == outcome["expected"] == 8 and outcome["matches"] == 7, outcome
