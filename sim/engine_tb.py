"""cocotb testbench of the generated MLP engine Verilog: driver, monitor, reference model
(quweit_hw.contract.golden) and scoreboard. Run by sim/test_engine.py through cocotb's Python runner.

Environment (set by the runner): QUWEIT_BUNDLE, QUWEIT_BLOCK (the block the Verilog was
generated from), QUWEIT_TOKENS (an .npy of (N, d) tokens), QUWEIT_REPORT (a JSON file the
scoreboard writes its totals to), QUWEIT_VALID / QUWEIT_READY (per-mille probabilities of
i.valid and o.ready per cycle), QUWEIT_SEED.
"""

import json
import os
import random
import time
from dataclasses import dataclass, field

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from quweit_hw.contract import golden
from quweit_hw.contract.bundle_files import load_bundle
from quweit_hw.contract.packing import count_fields, token_word

from stream_reset import start_stream_dut


class ReferenceModel:
    """The golden model: the counts the engine must return, token by token."""

    def __init__(self, block):
        self.block = block

    def expected(self, tokens):
        return [tuple(int(c) for c in row) for row in golden.counts(self.block, tokens)]


@dataclass
class Scoreboard:
    """Compares delivered counts, in order, with the reference model's."""

    expected: list
    received: int = 0
    mismatches: list = field(default_factory=list)

    def check(self, counts):
        index = self.received
        self.received += 1
        if index >= len(self.expected):
            self.mismatches.append((index, "extra token (delivered twice or invented)", counts))
        elif counts != self.expected[index]:
            self.mismatches.append((index, self.expected[index], counts))

    @property
    def done(self):
        return self.received >= len(self.expected)


class TokenDriver:
    """Drives i__valid/i__payload mid-cycle (falling edge) with random gaps; a token counts as
    sent when i__valid and i__ready are both high at the rising edge."""

    def __init__(self, dut, bits, valid_permille, rng):
        self.dut, self.bits, self.valid_permille, self.rng = dut, bits, valid_permille, rng
        self.sent = 0

    async def run(self, tokens):
        words = [token_word(row, self.bits) for row in tokens]
        dut = self.dut
        while self.sent < len(words):
            await FallingEdge(dut.clk)
            offer = self.rng.randrange(1000) < self.valid_permille
            dut.i__valid.value = int(offer)
            if offer:  # an idle cycle keeps the payload: nothing downstream changes, simulators skip work
                dut.i__payload.value = words[self.sent]
            await ReadOnly()
            if offer and int(dut.i__ready.value):
                self.sent += 1
        await FallingEdge(dut.clk)
        dut.i__valid.value = 0


class BackpressureMonitor:
    """Drives o__ready with random stalls (single cycles and bursts long enough to fill the
    engine) and hands every delivered count word (o__valid and o__ready high at the rising
    edge) to the scoreboard."""

    def __init__(self, dut, block, scoreboard, ready_permille, rng):
        self.dut, self.block, self.scoreboard = dut, block, scoreboard
        self.ready_permille, self.rng = ready_permille, rng
        self.cycles = 0

    async def run(self, max_cycles, tail_cycles=64):
        dut, d, width = self.dut, self.block.d, self.block.count_width
        burst = 0
        idle = 0
        while idle < tail_cycles and self.cycles < max_cycles:
            await FallingEdge(dut.clk)
            if burst == 0 and self.rng.randrange(1000) < 5:
                burst = self.rng.randrange(8, 48)  # a long stall: every stage and the FIFO fill up
            take = burst == 0 and self.rng.randrange(1000) < self.ready_permille
            burst = max(0, burst - 1)
            dut.o__ready.value = int(take)
            await ReadOnly()
            self.cycles += 1
            if take and int(dut.o__valid.value):
                self.scoreboard.check(count_fields(dut.o__payload.value.to_unsigned(), d, width))
            # after the last expected token keep watching: nothing more may come out
            idle = idle + 1 if self.scoreboard.done else 0


async def latency_probe(dut, word, scoreboard, block):
    """One token into the empty engine with o.ready high: the clocks from its input handshake
    to o.valid (the engine's `latency`); its counts go to the scoreboard."""
    await FallingEdge(dut.clk)
    dut.i__valid.value = 1
    dut.i__payload.value = word
    dut.o__ready.value = 1
    await ReadOnly()
    assert int(dut.i__ready.value), "the empty engine is not ready"
    clocks = 0
    while True:
        await FallingEdge(dut.clk)
        dut.i__valid.value = 0
        clocks += 1
        await ReadOnly()
        if int(dut.o__valid.value):
            scoreboard.check(count_fields(dut.o__payload.value.to_unsigned(), block.d, block.count_width))
            return clocks
        assert clocks < 1000, "no output within 1000 clocks"


@cocotb.test()
async def engine_matches_golden(dut):
    block = load_bundle(os.environ["QUWEIT_BUNDLE"]).block(int(os.environ.get("QUWEIT_BLOCK", "0")))
    tokens = np.load(os.environ["QUWEIT_TOKENS"])
    valid_permille = int(os.environ.get("QUWEIT_VALID", "800"))
    ready_permille = int(os.environ.get("QUWEIT_READY", "700"))
    rng = random.Random(int(os.environ.get("QUWEIT_SEED", "1")))

    scoreboard = Scoreboard(ReferenceModel(block).expected(tokens))
    driver = TokenDriver(dut, block.bits, valid_permille, rng)
    monitor = BackpressureMonitor(dut, block, scoreboard, ready_permille, rng)

    await start_stream_dut(dut)

    latency = await latency_probe(dut, token_word(tokens[0], block.bits), scoreboard, block)
    expected_latency = int(os.environ.get("QUWEIT_LATENCY", latency))
    assert latency == expected_latency, f"latency {latency} clocks, the generator says {expected_latency}"

    start = time.perf_counter()
    monitor_task = cocotb.start_soon(monitor.run(max_cycles=20 * len(tokens) + 10_000))
    await driver.run(tokens[1:])
    await monitor_task
    seconds = time.perf_counter() - start

    report = {"tokens": len(tokens), "sent": driver.sent + 1, "received": scoreboard.received, "latency": latency,
              "mismatches": len(scoreboard.mismatches), "cycles": monitor.cycles,
              "seconds": round(seconds, 3), "tokens_per_second": round(len(tokens) / seconds, 1),
              "first_mismatches": [list(map(str, m)) for m in scoreboard.mismatches[:5]]}
    if os.environ.get("QUWEIT_REPORT"):
        with open(os.environ["QUWEIT_REPORT"], "w") as f:
            json.dump(report, f)
    dut._log.info("scoreboard: %s", report)
    assert not scoreboard.mismatches, f"{len(scoreboard.mismatches)} mismatches, first: {scoreboard.mismatches[:3]}"
    assert scoreboard.received == len(tokens), f"received {scoreboard.received} of {len(tokens)} tokens"
