"""cocotb testbench of the generated whole-model engine Verilog: a pixel driver with random
gaps, a result monitor with random backpressure, the golden model (contract.golden_model) as
the reference and a scoreboard that checks every logit, the class and the cycle counter.
Run by sim/test_model.py through cocotb's Python runner.

Environment: QUWEIT_BUNDLE (the version-2 bundle), QUWEIT_PIXELS (an .npy of (B, C, H, W)
uint8 images), QUWEIT_REPORT (a JSON file for the totals), QUWEIT_VALID / QUWEIT_READY
(per-mille probabilities of i.valid and o.ready per cycle), QUWEIT_SEED, QUWEIT_CYCLES (the
generator's cycles per image).
"""

import json
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, with_timeout

from quweit_hw.contract import golden_model
from quweit_hw.contract.model_bundle import load_model_bundle

from stream_reset import start_stream_dut


def unpack(word, classes):
    """o.payload -> (logits as signed 32-bit ints, label)."""
    logits = [((word >> (32 * k)) & 0xFFFFFFFF) for k in range(classes)]
    return [v - (1 << 32) if v >> 31 else v for v in logits], word >> (32 * classes)


class PixelDriver:
    """i__valid/i__payload driven mid-cycle with random gaps; a pixel is sent when i__valid and
    i__ready are high at the rising edge. While the engine computes (i__ready low) the driver
    sleeps until i__ready rises, so Python runs per pixel, not per clock."""

    def __init__(self, dut, valid_permille, rng):
        self.dut, self.valid_permille, self.rng = dut, valid_permille, rng
        self.images = 0

    async def run(self, images):
        dut = self.dut
        for image in images:
            values = [int(v) for v in image.reshape(-1)]
            sent = 0
            while sent < len(values):
                await FallingEdge(dut.clk)
                offer = self.rng.randrange(1000) < self.valid_permille
                dut.i__valid.value = int(offer)
                dut.i__payload.value = values[sent]
                await ReadOnly()
                ready = int(dut.i__ready.value)
                sent += int(offer and ready)
                if not ready:
                    await RisingEdge(dut.i__ready)
            self.images += 1
        await FallingEdge(dut.clk)
        dut.i__valid.value = 0


class ResultMonitor:
    """o__ready with random stalls once o__valid is up (it sleeps until then); every delivered
    result, and the `cycles` output with it."""

    def __init__(self, dut, classes, ready_permille, rng):
        self.dut, self.classes, self.ready_permille, self.rng = dut, classes, ready_permille, rng
        self.results, self.cycles = [], []

    async def run(self, count, wait_ns):
        """Until `count` results; each must come within wait_ns of the one before (else the test fails)."""
        dut = self.dut
        while len(self.results) < count:
            if not int(dut.o__valid.value):
                await with_timeout(RisingEdge(dut.o__valid), wait_ns, "ns")
            await FallingEdge(dut.clk)
            take = self.rng.randrange(1000) < self.ready_permille
            dut.o__ready.value = int(take)
            await ReadOnly()
            if take and int(dut.o__valid.value):
                self.results.append(unpack(dut.o__payload.value.to_unsigned(), self.classes))
                self.cycles.append(int(dut.cycles.value))


@cocotb.test()
async def model_matches_golden(dut):
    program, _, _ = load_model_bundle(Path(os.environ["QUWEIT_BUNDLE"]))
    images = np.load(os.environ["QUWEIT_PIXELS"])
    expected = golden_model.logits(program, images)
    rng = random.Random(int(os.environ.get("QUWEIT_SEED", "1")))
    cycles = int(os.environ["QUWEIT_CYCLES"])
    driver = PixelDriver(dut, int(os.environ.get("QUWEIT_VALID", "800")), rng)
    monitor = ResultMonitor(dut, expected.shape[1], int(os.environ.get("QUWEIT_READY", "700")), rng)

    await start_stream_dut(dut)

    start = time.perf_counter()
    watch = cocotb.start_soon(monitor.run(len(images), wait_ns=10 * (3 * cycles + 20 * images[0].size + 1000)))
    await driver.run(images)
    await watch
    seconds = time.perf_counter() - start
    got = np.array([r[0] for r in monitor.results], np.int64).reshape(-1, expected.shape[1])
    labels = [r[1] for r in monitor.results]
    bad = [i for i in range(len(got)) if not np.array_equal(got[i], expected[i])]
    report = {"images": len(images), "received": len(got), "logit_mismatches": len(bad),
              "label_mismatches": sum(int(lab != e.argmax()) for lab, e in zip(labels, expected)),
              "cycles": sorted(set(monitor.cycles)), "expected_cycles": cycles,
              "seconds": round(seconds, 3), "images_per_second": round(len(images) / seconds, 2),
              "first_mismatches": bad[:5]}
    Path(os.environ["QUWEIT_REPORT"]).write_text(json.dumps(report))
    dut._log.info("scoreboard: %s", report)
    assert len(got) == len(images), f"received {len(got)} of {len(images)} results"
    assert not bad, f"{len(bad)} images with logits that differ, first {bad[:5]}"
    assert report["label_mismatches"] == 0
    assert report["cycles"] == [cycles], f"cycle counter {report['cycles']}, the generator says {cycles}"
