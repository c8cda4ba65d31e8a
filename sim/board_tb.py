"""cocotb testbench of the whole board link (LinkCore's generated Verilog) on its UART pins:
cocotbext-uart's UartSource and UartSink at the real bit time, frames built by
quweit_hw.contract.protocol, replies checked against quweit_hw.contract.golden. Run by
sim/test_board.py through cocotb's Python runner.

Environment (set by the runner): QUWEIT_BOARD_SPEC, a JSON file with the random blocks'
parameters, the engine slots, the divisor, max_tokens and the path of the result JSON.
"""

import json
import logging
import os
import warnings

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from cocotbext.uart import UartSink, UartSource

from quweit_hw.contract import golden, protocol
from quweit_hw.contract.synthetic import random_block

CLOCK_NS = 10


async def count_low_stop_bits(line, bit_ns, errors):
    """Samples `line` in the middle of each stop bit, in the sink's rhythm (a start bit's
    falling edge, then 9.5 bit times), and counts those found low in `errors[0]`:
    cocotbext-uart 0.1.4's UartSink waits out the stop bit without looking at it."""
    while True:
        await FallingEdge(line)
        await Timer(bit_ns * 19 // 2, "ns")
        if not int(line.value):
            errors[0] += 1


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

    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    bit_ns = CLOCK_NS * div
    with warnings.catch_warnings():
        # cocotbext-uart 0.1.4 (its latest) sets the idle line with `setimmediatevalue`, which
        # cocotb 2.0 deprecated (still there in 2.1); nothing else it uses is deprecated
        warnings.filterwarnings("ignore", "Use `handle.set", DeprecationWarning)
        source, sink = UartSource(dut.rx, baud=1e9 / bit_ns), UartSink(dut.tx, baud=1e9 / bit_ns)
    for uart in (source, sink):
        uart.log.setLevel(logging.WARNING)  # not a line per byte
    framing_errors = [0]
    cocotb.start_soon(count_low_stop_bits(dut.tx, bit_ns, framing_errors))
    parser, replies = protocol.FrameParser(), []
    for data, silence, _ in plan:
        await source.write(data)
        if silence:
            await source.wait()
            await Timer(silence * bit_ns, "ns")
    budget = 0
    while len(replies) < len(plan) and budget < 200:
        await ClockCycles(dut.clk, 50 * div)
        replies += parser.feed(sink.read_nowait())
        budget += 1
    await ClockCycles(dut.clk, 200 * div)  # nothing more may come
    replies += parser.feed(sink.read_nowait())

    info = protocol.BoardInfo.decode(replies[0].payload) if replies else None
    got = [(r.kind, r.block, r.payload) for r in replies[1:]]
    want = [reply for _, _, reply in plan[1:]]
    result = {"replies": len(replies), "expected": len(plan), "crc_ok": all(r.crc_ok for r in replies),
              "framing_errors": framing_errors[0], "matches": sum(g == w for g, w in zip(got, want)),
              "info_blocks": list(info.blocks) if info else None}
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    dut._log.info("board link: %s", result)
    assert info is not None and info.blocks == tuple(spec["slots"]) and info.max_tokens == max_tokens
    assert result["crc_ok"] and not framing_errors[0] and parser.skipped == 0
    assert got == want, f"replies differ: got {got}, want {want}"
