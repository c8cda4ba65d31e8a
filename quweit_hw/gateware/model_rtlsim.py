"""The whole-model engine's generated Verilog under Verilator, with a lean C++ harness: images
from a file through the pixel handshake (optional seeded gaps and stalls), every result (the
logits, the class, the `cycles` output) to a file. The fast path behind `eval BUNDLE --backend
rtl`; the verification testbench is cocotb's (sim/test_model.py)."""

import subprocess
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .model_engine import TOP
from .rtlsim import verilator_env, verilator_root

_CPP = r"""// Lean Verilator harness for the whole-model engine: pixels in from a file, results out.
#include "Vmodel_engine.h"
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

static const int CLASSES = @CLASSES@, PIXELS = @PIXELS@, OW = @OW@;  // OW: 32-bit words of o.payload

// Verilator escapes the "__" of Amaranth's port names as "___05F"
#define i__valid i___05Fvalid
#define i__ready i___05Fready
#define i__payload i___05Fpayload
#define o__valid o___05Fvalid
#define o__ready o___05Fready
#define o__payload o___05Fpayload

int main(int argc, char** argv) {
    // argv: pixels.bin results.bin valid_permille ready_permille seed
    if (argc < 6) { std::fprintf(stderr, "usage: harness IN OUT VALID READY SEED\n"); return 2; }
    FILE* f = std::fopen(argv[1], "rb");
    if (!f) { std::perror(argv[1]); return 2; }
    std::vector<uint8_t> in;
    uint8_t buf[65536];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) in.insert(in.end(), buf, buf + got);
    std::fclose(f);
    const size_t n = in.size() / PIXELS;
    const uint32_t vp = std::atoi(argv[3]), rp = std::atoi(argv[4]);
    uint64_t rng = std::strtoull(argv[5], nullptr, 10) * 0x9E3779B97F4A7C15ull + 1;
    auto rnd = [&rng]() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng % 1000); };
    VerilatedContext ctx;
    Vmodel_engine* t = new Vmodel_engine(&ctx);
    std::vector<uint32_t> out(n * (CLASSES + 2));
    t->clk = 0; t->rst = 1; t->i__valid = 0; t->o__ready = 0; t->eval();
    for (int k = 0; k < 2; k++) { t->clk = 1; t->eval(); t->clk = 0; t->eval(); }
    t->rst = 0; t->eval();
    size_t sent = 0, done = 0;
    uint64_t gaps = 0, stalls = 0;  // clocks with a pixel held back while i.ready; with a result held by o.ready low
    uint64_t cycles = 0, limit = (uint64_t)(n + 1) * 10000000ull;
    auto start = std::chrono::steady_clock::now();
    while (done < n && cycles < limit) {
        bool offer = sent < n * PIXELS && (vp >= 1000 || rnd() < vp);
        t->i__valid = offer;
        if (offer) t->i__payload = in[sent];
        t->o__ready = rp >= 1000 || rnd() < rp;
        bool accept = offer && t->i__ready;  // i.ready, o.valid, o.payload come from registers
        gaps += sent < n * PIXELS && !offer && t->i__ready;
        stalls += t->o__valid && !t->o__ready;
        if (t->o__valid && t->o__ready) {
            uint32_t w[OW];
            for (int k = 0; k < OW; k++) w[k] = t->o__payload[k];
            for (int k = 0; k < CLASSES + 1; k++) out[done * (CLASSES + 2) + k] = w[k];
            out[done * (CLASSES + 2) + CLASSES + 1] = t->cycles;
            done++;
        }
        t->clk = 1; t->eval();
        t->clk = 0; t->eval();
        if (accept) sent++;
        cycles++;
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    FILE* o = std::fopen(argv[2], "wb");
    std::fwrite(out.data(), 4, done * (CLASSES + 2), o);
    std::fclose(o);
    std::printf("images %zu cycles %llu seconds %.3f gaps %llu stalls %llu\n", done, (unsigned long long)cycles,
                seconds, (unsigned long long)gaps, (unsigned long long)stalls);
    delete t;
    return done == n ? 0 : 1;
}
"""


class VerilatedModel:
    """The whole-model Verilog at `verilog_path` compiled by Verilator into `workdir`;
    `run(pixels)` -> (logits (B, classes) int64, labels (B,), cycles (B,))."""

    def __init__(self, verilog_path, classes, pixels_per_image, workdir):
        self.classes, self.pixels = classes, pixels_per_image
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        label_bits = max((classes - 1).bit_length(), 1)
        cpp = (_CPP.replace("@CLASSES@", str(classes)).replace("@PIXELS@", str(pixels_per_image))
               .replace("@OW@", str(-(-(32 * classes + label_bits) // 32))))
        (self.workdir / "harness.cpp").write_text(cpp)
        start = time.perf_counter()
        cmd = [str(verilator_root() / "bin" / "verilator"), "--cc", "--exe", "--build", "-O3", "-Wno-fatal",
               "--top-module", TOP, "-Mdir", str(self.workdir / "obj"), "-o", "harness",
               "-CFLAGS", "-O3 -march=native", "-MAKEFLAGS", "OPT_FAST=-O3 OPT_GLOBAL=-O2",
               "--x-assign", "fast", "--x-initial", "fast", "-j", "2", "harness.cpp", str(Path(verilog_path).resolve())]
        result = subprocess.run(cmd, cwd=self.workdir, env=verilator_env(), capture_output=True, text=True)
        if result.returncode:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise UserError(f"verilator build failed in {self.workdir}: " + " | ".join(tail))
        self.build_seconds = time.perf_counter() - start
        self.last_run = None

    def run(self, pixels, *, valid_permille=1000, ready_permille=1000, seed=1):
        """Every image of `pixels` (B, C, H, W) uint8 through the engine; i.valid is offered on
        `valid_permille` of the clocks and o.ready raised on `ready_permille` (seeded xorshift, 1000:
        always). -> (logits (B, classes) int64, labels (B,), cycles (B,)); `last_run` gets the
        clocks, the wall seconds and how many clocks had a pixel held back while i.ready was high
        (valid_gaps) or a result held by o.ready low (ready_stalls)."""
        for name, value in (("valid_permille", valid_permille), ("ready_permille", ready_permille)):
            if not 1 <= value <= 1000:
                raise ValueError(f"{name} must lie in [1, 1000], got {value!r}")
        pixels = np.ascontiguousarray(pixels, np.uint8)
        if pixels[0].size != self.pixels:
            raise UserError(f"images of {pixels[0].size} pixels; the engine takes {self.pixels}")
        pixels.tofile(self.workdir / "pixels.bin")
        result = subprocess.run([str(self.workdir / "obj" / "harness"), "pixels.bin", "results.bin",
                                 str(valid_permille), str(ready_permille), str(seed)],
                                cwd=self.workdir, capture_output=True, text=True)
        words = np.fromfile(self.workdir / "results.bin", np.uint32).reshape(-1, self.classes + 2)
        if result.returncode or len(words) != len(pixels):
            raise UserError(f"verilator run delivered {len(words)} of {len(pixels)} results "
                            f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")
        fields = dict(zip(result.stdout.split()[0::2], result.stdout.split()[1::2]))
        self.last_run = {"images": len(words), "cycles": int(fields["cycles"]), "seconds": float(fields["seconds"]),
                         "valid_gaps": int(fields["gaps"]), "ready_stalls": int(fields["stalls"]),
                         "valid_permille": valid_permille, "ready_permille": ready_permille, "seed": seed}
        label_mask = (1 << max((self.classes - 1).bit_length(), 1)) - 1
        logits = words[:, :self.classes].view(np.int32).astype(np.int64)
        return logits, (words[:, self.classes] & label_mask).astype(np.int64), words[:, self.classes + 1].astype(np.int64)
