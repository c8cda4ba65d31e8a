"""cocotb testbench of the whole board link (LinkCore's generated Verilog) on its UART pins:
a UART driver and monitor at the real bit divisor, frames built by quweit_hw.contract.protocol, replies
checked against quweit_hw.contract.golden. Run by sim/test_board.py through cocotb's Python runner.

Environment (set by the runner): QUWEIT_BOARD_SPEC, a JSON file with the random blocks'
parameters, the engine slots, the divisor, max_tokens and the path of the result JSON.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from quweit_hw.contract import golden, protocol
from quweit_hw.contract.synthetic import random_block


class UARTDriver:
    """Drives 8N1 bytes onto `rx`, one bit every `divisor` clocks."""

    def __init__(self, dut, divisor):
        self.dut, self.divisor = dut, divisor

    async def send(self, data, gap_bits=0):
        for byte in data:
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                self.dut.rx.value = bit
                await ClockCycles(self.dut.clk, self.divisor)
        await ClockCycles(self.dut.clk, gap_bits * self.divisor)


class UARTMonitor:
    """Decodes 8N1 bytes from `tx` (sampled mid-bit) into reply frames (protocol.FrameParser)."""

    def __init__(self, dut, divisor):
        self.dut, self.divisor = dut, divisor
        self.parser, self.replies, self.framing_errors = protocol.FrameParser(), [], 0

    async def run(self):
        dut, div = self.dut, self.divisor
        while True:
            await FallingEdge(dut.tx)
            await ClockCycles(dut.clk, div // 2)
            if int(dut.tx.value):
                continue  # a glitch, not a start bit
            value = 0
            for i in range(8):
                await ClockCycles(dut.clk, div)
                value |= int(dut.tx.value) << i
            await ClockCycles(dut.clk, div)
            if not int(dut.tx.value):
                self.framing_errors += 1
            self.replies += self.parser.feed(bytes([value]))


def expected_reply(blocks, block, q):
    """The golden model's RESULT reply (kind, block, payload) for tokens q on bundle block `block`."""
    counts = golden.counts(blocks[block], q).astype(np.uint8)
    return (protocol.REPLY_RESULT, block, counts.tobytes())


@cocotb.test()
async def board_link_matches_golden(dut):
    with open(os.environ["QUWEIT_BOARD_SPEC"]) as f:
        spec = json.load(f)
    blocks = {index: random_block(**params) for index, params in zip(spec["slots"], spec["blocks"])}
    d, div, max_tokens = spec["d"], spec["divisor"], spec["max_tokens"]
    rng = np.random.default_rng(spec["seed"])
    a, b = spec["slots"][0], spec["slots"][-1]

    def tokens(n):
        return rng.integers(-128, 128, (n, d))

    q = [tokens(max_tokens), tokens(3), tokens(max_tokens), tokens(1), tokens(2)]
    corrupt = bytearray(protocol.infer_frame(a, q[1]))
    corrupt[protocol.HEADER_BYTES + 2] ^= 0x04  # one payload bit flipped: the CRC must catch it
    plan = [  # (bytes sent, silence after in bit times, expected reply)
        (protocol.encode_frame(protocol.CMD_INFO, 0), 0, None),
        (protocol.infer_frame(a, q[0]), 0, expected_reply(blocks, a, q[0])),
        (bytes(corrupt), 0, (protocol.REPLY_ERROR, a, bytes([protocol.ERR_CRC]))),
        (protocol.infer_frame(b, q[1]), 0, expected_reply(blocks, b, q[1])),     # back to back
        (protocol.infer_frame(a, q[2]), 0, expected_reply(blocks, a, q[2])),
        (protocol.encode_frame(protocol.CMD_INFER, a, bytes(d * (max_tokens + 1))), 0,
         (protocol.REPLY_ERROR, a, bytes([protocol.ERR_LENGTH]))),
        (protocol.infer_frame(b, q[3])[:7], spec["timeout_bits"] + 20, (protocol.REPLY_ERROR, b, bytes([protocol.ERR_TIMEOUT]))),
        (protocol.infer_frame(b, q[4]), 0, expected_reply(blocks, b, q[4])),     # the link recovered
    ]

    Clock(dut.clk, 10, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    driver, monitor = UARTDriver(dut, div), UARTMonitor(dut, div)
    cocotb.start_soon(monitor.run())
    for data, silence, _ in plan:
        await driver.send(data, silence)
    budget = 0
    while len(monitor.replies) < len(plan) and budget < 200:
        await ClockCycles(dut.clk, 50 * div)
        budget += 1
    await ClockCycles(dut.clk, 200 * div)  # nothing more may come

    info = protocol.BoardInfo.decode(monitor.replies[0].payload) if monitor.replies else None
    got = [(r.kind, r.block, r.payload) for r in monitor.replies[1:]]
    want = [reply for _, _, reply in plan[1:]]
    result = {"replies": len(monitor.replies), "expected": len(plan), "crc_ok": all(r.crc_ok for r in monitor.replies),
              "framing_errors": monitor.framing_errors, "matches": sum(g == w for g, w in zip(got, want)),
              "info_blocks": list(info.blocks) if info else None}
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    dut._log.info("board link: %s", result)
    assert info is not None and info.blocks == tuple(spec["slots"]) and info.max_tokens == max_tokens
    assert result["crc_ok"] and not monitor.framing_errors
    assert got == want, f"replies differ: got {got}, want {want}"
