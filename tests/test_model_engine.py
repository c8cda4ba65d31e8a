# amaranth: UnusedElaboratable=no
"""The whole-model engine (gateware.model_engine) against the whole-model golden model, in
Amaranth's simulator: tiny trained integer ViTs, dense and LUT MLPs, two MAC-array widths, an
odd shape, gaps and stalls on both streams, the exact cycle count, and its arithmetic units on
their edges."""

import math
import subprocess

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from quweit_hw.contract import golden_model
from quweit_hw.errors import UserError
from quweit_hw.gateware.model_engine import ModelEngine, instruction_cycles
from quweit_hw.gateware.model_program import compile_program
from quweit_hw.gateware.model_units import Divider, IntegerSqrt
from quweit_hw.gateware.simulation import simulate_model
from quweit_hw.model.checkpoint import build_model
from quweit_hw.model.integer_program import integer_program
from quweit_hw.model.vit import ViTConfig

from tiny_models import pixels, trained


def odd_program():
    """d = 12 in 3 heads of 4, a 12x12 image in 9 patches (T = 10), hidden 36, one block."""
    torch.manual_seed(3)
    cfg = ViTConfig(image_size=12, patch=4, d=12, depth=1, heads=3, pool="cls", mlp="dense", integer=True)
    model = build_model("vit", cfg)
    x = torch.randn(16, 1, 12, 12)
    model.train()
    model(x)  # one fake-quant pass sets every observed scale
    return integer_program(model.eval())


def check(engine, program, pix, **stalls):
    logits, labels, trace = simulate_model(engine, pix, **stalls)
    gold = golden_model.logits(program, pix)
    assert np.array_equal(logits, gold), f"logits differ on {int((logits != gold).any(1).sum())} images"
    assert np.array_equal(labels, gold.argmax(1)), "the class (argmax, lowest index on ties) differs"
    assert trace["compute_cycles"] == [engine.cycles_per_image] * len(pix), "the generator's cycle figure is off"
    assert trace["cycles_port"] == [engine.cycles_per_image] * len(pix)
    return logits


@pytest.mark.parametrize("mlp, lanes", [("dense", 4), ("lut", 16)])
def test_whole_model_equals_the_golden_model(mlp, lanes):
    program = integer_program(trained(mlp))
    pix = pixels(3).numpy()  # image 0 all 0, image 1 all 255, image 2 random
    check(ModelEngine(program, lanes=lanes), program, pix)


def test_gaps_and_stalls_lose_nothing():
    program = integer_program(trained("lut", seed=1))
    check(ModelEngine(program, lanes=8), program, pixels(3, seed=4).numpy()[1:], valid_prob=0.6, ready_prob=0.3, seed=2)


def test_odd_sizes_and_groups_wider_than_the_reduction():
    """dh = 4 < lanes = 8: the scores' groups hold more outputs than K, so bubbles are needed."""
    program = odd_program()
    pix = np.random.default_rng(0).integers(0, 256, (2, 1, 12, 12), dtype=np.uint8)
    check(ModelEngine(program, lanes=8), program, pix)


def test_cycles_per_instruction_add_up():
    engine = ModelEngine(integer_program(trained("dense")), lanes=8)
    cycles = instruction_cycles(engine)
    assert len(cycles) == len(engine.compiled.instructions) and min(cycles) > 0
    assert sum(cycles) == engine.cycles_per_image


def test_unsupported_models_are_refused():
    program = integer_program(trained("dense", pool="mean"))
    with pytest.raises(UserError, match="class-token pooling only"):
        compile_program(program)
    with pytest.raises(UserError, match="power of two"):
        compile_program(integer_program(trained("dense")), lanes=12)
    narrow = integer_program(trained("dense"))
    narrow["config"] = {**narrow["config"], "d": 1}
    with pytest.raises(UserError, match="width d >= 2"):
        compile_program(narrow)


def run_unit(unit, cases, operands, result):
    got = []

    async def bench(ctx):
        for case in cases:
            ctx.set(unit.start, 1)
            for port, value in zip(operands, case):
                ctx.set(port, value)
            await ctx.tick()
            ctx.set(unit.start, 0)
            clocks = 0
            while ctx.get(unit.busy):
                await ctx.tick()
                clocks += 1
            got.append((ctx.get(result), clocks))

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("numerator", [1 << 40, 255 << 30, (1 << 41) - 1, 12345])
def test_divider_on_its_edges(numerator):
    div = Divider(numerator, 24)
    dens = [1, 2, 3, 12344, 12345, 12346, (1 << 24) - 1, 1 << 23]
    got = run_unit(div, [(d,) for d in dens], (div.den,), div.q)
    assert got == [(numerator // d, div.latency) for d in dens]


def test_integer_square_root_on_its_edges():
    sq = IntegerSqrt(44)
    rng = np.random.default_rng(0)
    values = [0, 1, 2, 3, 4, 8, 9, 15, 16, 17, (1 << 44) - 1, 1 << 43, (1 << 22) ** 2 - 1]
    values += [k * k + e for k in (2**21 - 1, 12345) for e in (-1, 0, 1)] + [int(v) for v in rng.integers(0, 1 << 44, 20)]
    got = run_unit(sq, [(v,) for v in values], (sq.n,), sq.root)
    assert got == [(math.isqrt(v), sq.latency) for v in values]


@pytest.mark.parametrize("k", [0, 1, 4, 7, 49, 784])
def test_times_constant_is_the_product_and_synthesises_without_a_multiplier(k, tmp_path):
    """The engine's address arithmetic: value * k as shifted adds, equal to the product for
    every 6-bit value, and through Yosys (proc, opt_expr: 0.55 asserted on a `<< 0`) with no
    $mul left for synth_ecp5 to put on a DSP."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from quweit_hw.gateware.model_units import times_constant
    from quweit_hw.gateware.toolchain import toolchain_env

    class Times(wiring.Component):
        v: In(6)
        o: Out(16)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.o.eq(times_constant(self.v, k))
            return m

    dut = Times()
    sim = Simulator(dut)

    async def bench(ctx):
        for v in range(64):
            ctx.set(dut.v, v)
            assert ctx.get(dut.o) == v * k, (v, k)
    sim.add_testbench(bench)
    sim.run()
    (tmp_path / "times.il").write_text(rtlil.convert(Times()))
    done = subprocess.run([toolchain_env()["YOSYS"], "-p", "read_rtlil times.il; proc; opt_expr; opt_clean; stat"],
                          cwd=tmp_path, capture_output=True, text=True)  # YoWASP sees only cwd
    assert done.returncode == 0 and "End of script" in done.stdout, done.stdout[-500:]
    assert "$mul" not in done.stdout
