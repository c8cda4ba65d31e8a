"""quweit_hw.model.kernels: the compiled CPU kernels against the plain-torch reference.

Every comparison runs the same module twice, once with QUWEIT_KERNELS=torch (the reference)
and once with the compiled kernels, and first checks that the compiled run really took the
compiled path. Tolerances: forward outputs bit for bit; gradients 1e-6 absolute in float64
and FLOAT32_TOL in float32 (the table gradient's partial sums are added in another order
than the reference's scatter_add_, a few ulps; the input gradients come out bit-equal here,
but only the tolerance is promised).
"""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from quweit_hw.model import kernels
from quweit_hw.model.kernels import build, dispatch
from quweit_hw.model.lut import LUTLayer
from quweit_hw.model.lutmlp import LUTMLP, GroupSum, LUTMLPConfig
from quweit_hw.model.thermometer import Thermometer

QUANTIZE = kernels.quantize

FLOAT32_TOL = dict(rtol=1e-5, atol=1e-5)
FLOAT64_TOL = dict(rtol=0, atol=1e-6)
BATCHES = (1, 13, 77)  # none a multiple of the 8-wide vectors; 1 leaves no vector body at all


@pytest.fixture
def count_compiled(monkeypatch):
    """Counts the calls that reach the compiled LUT, thermometer and fused-block forwards."""
    calls = {"lut": 0, "thermometer": 0, "block": 0}
    lut_forward, therm_forward, block_counts = kernels.lut_forward, kernels.thermometer_forward, kernels.block_counts

    def lut(*args):
        calls["lut"] += 1
        return lut_forward(*args)

    def therm(*args):
        calls["thermometer"] += 1
        return therm_forward(*args)

    def block(*args):
        calls["block"] += 1
        return block_counts(*args)

    monkeypatch.setattr(kernels, "lut_forward", lut)
    monkeypatch.setattr(kernels, "thermometer_forward", therm)
    monkeypatch.setattr(kernels, "block_counts", block)
    return calls


def in_mode(mode, fn):
    """fn() with QUWEIT_KERNELS=mode."""
    old = os.environ.get("QUWEIT_KERNELS")
    os.environ["QUWEIT_KERNELS"] = mode
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["QUWEIT_KERNELS"]
        else:
            os.environ["QUWEIT_KERNELS"] = old


def layer_run(layer, x, g):
    """Output, input gradient and parameter gradients of one forward+backward of a LUT layer."""
    for p in layer.parameters():
        p.grad = None
    x = x.clone().requires_grad_(True)
    y = layer.forward_rows(x)
    (y * g).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    return y.detach(), x.grad, grads


def assert_same_run(ref, got, dtype):
    """Forward bit for bit, every gradient within the dtype's tolerance (and nonzero somewhere)."""
    tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], **tol)
    assert ref[2].keys() == got[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], **tol)
        assert ref[2][name].abs().sum() > 0, name
    assert ref[1].abs().sum() > 0


def make_layer(n, mapping, efd, dtype, seed, in_f=45, out_f=29):
    gen = torch.Generator().manual_seed(seed)
    layer = LUTLayer(in_f, out_f, n=n, mapping=mapping, efd=efd, window=12, tau=0.05, generator=gen).to(dtype)
    return layer, gen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mapping", ["random", "local", "learnable", "arange"])
@pytest.mark.parametrize("efd", ["exp", "linear"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_lut_layer_matches_reference(n, efd, mapping, dtype, count_compiled):
    layer, gen = make_layer(n, mapping, efd, dtype, seed=100 * n + len(mapping))
    for batch in BATCHES:
        x = (torch.rand(layer.in_features, batch, generator=gen) > 0.5).to(dtype)
        g = torch.randn(layer.out_features, batch, generator=gen, dtype=dtype)
        ref = in_mode("torch", lambda: layer_run(layer, x, g))
        calls = count_compiled["lut"]
        got = in_mode("auto", lambda: layer_run(layer, x, g))
        assert count_compiled["lut"] == calls + 1  # the compiled path ran
        assert_same_run(ref, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 7, 8, 9])
def test_lut_layer_other_fan_ins_match_reference(n, dtype, count_compiled):
    # n = 7: 8-register lookup; n = 8: the gather path; n = 9: int32 addresses and the
    # reference's Walsh-Hadamard EFD table (n > DENSE_EFD_MAX_N)
    layer, gen = make_layer(n, "random", "exp", dtype, seed=n, in_f=40, out_f=21)
    x = (torch.rand(40, 37, generator=gen) > 0.5).to(dtype)
    g = torch.randn(21, 37, generator=gen, dtype=dtype)
    ref = in_mode("torch", lambda: layer_run(layer, x, g))
    got = in_mode("auto", lambda: layer_run(layer, x, g))
    assert count_compiled["lut"] == 1
    assert_same_run(ref, got, dtype)


def block_run(block, h, g):
    for p in block.parameters():
        p.grad = None
    h = h.clone().requires_grad_(True)
    y = block(h)
    (y * g).sum().backward()
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    return y.detach(), h.grad, grads


def assert_one_fused_run_matches(block, h, g, dtype, count_compiled):
    """One forward+backward of `block` on the reference and on the kernels: the kernels' run
    is one fused-block call and matches (assert_same_run)."""
    ref = in_mode("torch", lambda: block_run(block, h, g))
    got = in_mode("auto", lambda: block_run(block, h, g))
    assert count_compiled["block"] == 1
    assert_same_run(ref, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bit_order", ["feature", "threshold"])
@pytest.mark.parametrize("mapping", ["random", "local", "learnable"])
def test_lut_mlp_block_matches_reference(mapping, bit_order, dtype, count_compiled):
    torch.manual_seed(7)
    cfg = LUTMLPConfig(d=8, thresholds=5, n=4, hidden=(48,), group_size=4, mapping=mapping, window=10,
                       bit_order=bit_order)
    block = LUTMLP(cfg).to(dtype)
    h = torch.randn(53, 8, dtype=dtype)
    block.calibrate(h)
    g = torch.randn(53, 8, dtype=dtype)
    ref = in_mode("torch", lambda: block_run(block, h, g))
    got = in_mode("auto", lambda: block_run(block, h, g))
    # fixed mappings: the whole LUT path in one fused function; learnable: layer by layer
    fused = mapping != "learnable"
    assert count_compiled == {"lut": 0 if fused else 2, "thermometer": 0 if fused else 1, "block": int(fused)}
    assert_same_run(ref, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_fused_block_matches_reference(n, dtype, count_compiled):
    # n = 7, 8: the scalar byte lookup; hidden () makes the first layer also the last (its
    # group gradient read from q's side), three layers chain bytes twice; integer thresholds
    # put many q exactly on a threshold, where the bit is 0 (strict >)
    hidden = [(), (40,), (40, 24)][n % 3]
    cfg = LUTMLPConfig(d=6, thresholds=5, n=n, hidden=hidden, group_size=4, mapping=["random", "local"][n % 2],
                       deep_mapping=["random", "local"][(n // 2) % 2], window=max(n, 10), efd=["exp", "linear"][n % 2],
                       bit_order=["feature", "threshold"][(n // 2) % 2])
    torch.manual_seed(n)
    block = LUTMLP(cfg).to(dtype)
    blocks = kernels.ops().block_samples()  # the backward's blocks: one exactly, two and a tail
    for batch in BATCHES + (blocks, 2 * blocks + 13):
        h = torch.randn(batch, 6, dtype=dtype)
        block.calibrate(torch.randn(64, 6))
        block.thermometer.set_thresholds(torch.arange(-2.0, 3.0).repeat(6, 1) * 8 + torch.arange(6.0)[:, None])
        block.input_scale.fill_(0.125)  # q = 8 h: integers in a range that straddles the thresholds
        g = torch.randn(batch, 6, dtype=dtype)
        ref = in_mode("torch", lambda: block_run(block, h, g))
        calls = count_compiled["block"]
        got = in_mode("auto", lambda: block_run(block, h, g))
        assert count_compiled["block"] == calls + 1
        assert torch.equal(got[0], ref[0])
        tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
        torch.testing.assert_close(got[1], ref[1], **tol)
        for name in ref[2]:
            torch.testing.assert_close(got[2][name], ref[2][name], **tol)
    assert ref[1].abs().sum() > 0 and all(ref[2][k].abs().sum() > 0 for k in ref[2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_block_with_many_groups(dtype, count_compiled):
    # d = 40 output groups: the group popcount's tiles of 16 groups, the last one short, and of
    # 256 samples, the last one short (batch 525)
    torch.manual_seed(5)
    block = LUTMLP(LUTMLPConfig(d=40, thresholds=3, n=6, hidden=(96,), group_size=4, mapping="random")).to(dtype)
    h = torch.randn(525, 40, dtype=dtype)
    block.calibrate(h)
    g = torch.randn(525, 40, dtype=dtype)
    assert_one_fused_run_matches(block, h, g, dtype, count_compiled)


def test_fused_blocks_share_scratch_in_one_graph(count_compiled):
    # the fused blocks' scratch tensors (layer outputs, input gradients) are shared from call
    # to call and from block to block: two blocks of one shape and a third of another width,
    # on batches of two sizes, all forwards before one backward (as in a model), must give
    # the reference's values and gradients
    torch.manual_seed(11)
    cfg = LUTMLPConfig(d=6, thresholds=5, n=6, hidden=(40,), group_size=4, mapping="random")
    blocks = [LUTMLP(cfg), LUTMLP(cfg), LUTMLP(LUTMLPConfig(d=6, thresholds=5, n=6, hidden=(24,), group_size=4))]
    hs = [torch.randn(b, 6) for b in (300, 300, 77)]
    for block in blocks:
        block.calibrate(hs[0])

    def run():
        for block in blocks:
            for p in block.parameters():
                p.grad = None
        xs = [h.clone().requires_grad_(True) for h in hs]
        ys = [block(x) for block, x in zip(blocks, xs)]
        sum((y * (i + 1)).sum() for i, y in enumerate(ys)).backward()
        grads = [p.grad.clone() for block in blocks for p in block.parameters()]
        return [y.detach() for y in ys], [x.grad for x in xs], grads

    ref, got = in_mode("torch", run), in_mode("auto", run)
    assert count_compiled["block"] == 3
    for r, o in zip(ref[0], got[0]):
        assert torch.equal(o, r)
    for r, o in zip(ref[1] + ref[2], got[1] + got[2]):
        torch.testing.assert_close(o, r, **FLOAT32_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_block_with_unsorted_thresholds(dtype, count_compiled):
    # thresholds loaded as they are (a state dict is not validated): the first layer compares q
    # with each threshold instead of reading the count of thresholds below q
    torch.manual_seed(9)
    block = LUTMLP(LUTMLPConfig(d=6, thresholds=5, n=6, hidden=(40,), group_size=4, mapping="random")).to(dtype)
    h = torch.randn(77, 6, dtype=dtype)
    block.calibrate(h)
    block.thermometer.thresholds.copy_(torch.randn(6, 5) * 40)  # not increasing
    g = torch.randn(77, 6, dtype=dtype)
    assert_one_fused_run_matches(block, h, g, dtype, count_compiled)


def test_fused_block_in_eval_mode_without_grad(count_compiled):
    torch.manual_seed(4)
    block = LUTMLP(LUTMLPConfig(d=8, thresholds=6, n=6, hidden=(64,), group_size=4, mapping="random"))
    h = torch.randn(45, 8)
    block.calibrate(h)
    block.eval()
    with torch.no_grad():
        ref = in_mode("torch", lambda: block(h))
        got = in_mode("auto", lambda: block(h))
    assert count_compiled["block"] == 1 and torch.equal(got, ref)


def thermometer_run(therm, x, g):
    x = x.clone().requires_grad_(True)
    rows = therm.encode_rows(x)
    (rows * g).sum().backward()
    return rows.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quantizer_matches_reference_bit_for_bit(dtype, monkeypatch):
    # x = h / s on ties (half to even), on both ends of the 8-bit range and half a step and a
    # step past them, negatives that round to -0 (the reference gives +0), NaN and the
    # infinities; 7 x 11 values: a 16-wide vector body and a tail
    calls = []
    monkeypatch.setattr(kernels, "quantize", lambda *a: calls.append(1) or QUANTIZE(*a))
    edges = [-130, -129, -128.5, -128, -127.5, -2.5, -0.5, -0.3, -0.0, 0.0, 0.3, 0.5, 1.5, 2.5, 126.5, 127,
             127.5, 128, 1e30, float("nan"), float("inf"), float("-inf")]
    x = torch.cat([torch.tensor(edges, dtype=dtype), torch.randn(77 - len(edges), dtype=dtype, generator=torch.Generator().manual_seed(3)) * 90])
    block = LUTMLP(LUTMLPConfig(d=7, thresholds=3, n=2, hidden=(8,), group_size=2)).to(dtype)
    block.input_scale.fill_(0.25)  # h = x / 4 exactly
    h, g = (x / 4).reshape(11, 7), torch.randn(11, 7, dtype=dtype)
    q, dh = _quantizer_runs(block, h, g, calls)
    assert q[:8].tolist() == [-128, -128, -128, -128, -128, -2, -0.0, -0.0] and q[12:18].tolist() == [2, 2, 126, 127, 127, 127]
    passed = [dh[i] == g.flatten()[i] * 4 for i in range(18)]  # -128.5 and 127 round into the range, 127.5 out
    assert passed[2:4] == [True, True] and passed[15] and not any(passed[:2] + passed[16:18])
    # a scale that is not a power of two (the division rounds), values near the ties k + 1/2,
    # and the edges in the scalar tail after 64 vector elements
    s = 0.0371
    block.input_scale.fill_(s)
    near = (torch.arange(-40, 40, dtype=dtype) + 0.5) * s
    _quantizer_runs(block, near.reshape(16, 5), torch.randn(16, 5, dtype=dtype), calls)
    for part in (edges[:11], edges[11:]):  # 64 + 11 values: the edges are the 11 of the tail
        h = torch.cat([near[:64], torch.tensor(part, dtype=dtype) * s]).reshape(15, 5)
        _quantizer_runs(block, h, torch.randn(15, 5, dtype=dtype), calls)


def _quantizer_runs(block, h, g, calls):
    """The quantizer's q and dh on the reference and on the kernels, checked equal bit for bit."""

    def run():
        hh = h.clone().requires_grad_(True)
        q = block.quantize(hh)
        q.backward(g)
        return q.detach(), hh.grad

    before = len(calls)
    ref, got = in_mode("torch", run), in_mode("auto", run)
    assert len(calls) == before + 1
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(o.signbit(), r.signbit())  # +0 where the reference has +0
    return got[0].flatten(), got[1].flatten()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", BATCHES)
def test_thermometer_matches_reference(batch, dtype, count_compiled):
    gen = torch.Generator().manual_seed(batch)
    therm = Thermometer(6, 7, "uniform", min_width=0.5).fit(torch.randn(100, 6, generator=gen)).to(dtype)
    x = torch.randn(batch, 6, generator=gen, dtype=dtype)
    x[0, :3] = therm.thresholds[:3, 2].to(dtype)  # on a threshold: the bit is 0 (strict >)
    g = torch.randn(6 * 7, batch, generator=gen, dtype=dtype)
    ref = in_mode("torch", lambda: thermometer_run(therm, x, g))
    got = in_mode("auto", lambda: thermometer_run(therm, x, g))
    assert count_compiled["thermometer"] == 1
    assert torch.equal(got[0], ref[0])
    tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
    torch.testing.assert_close(got[1], ref[1], **tol)
    assert ref[1].abs().sum() > 0


def test_results_do_not_depend_on_thread_count_or_repetition():
    torch.manual_seed(3)
    block = LUTMLP(LUTMLPConfig(d=16, thresholds=8, n=6, hidden=(200,), group_size=8, mapping="random"))
    h = torch.randn(301, 16)
    block.calibrate(h)
    g = torch.randn(301, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = block_run(block, h, g)
        torch.set_num_threads(2)
        two, again = block_run(block, h, g), block_run(block, h, g)
    finally:
        torch.set_num_threads(threads)
    for a, b in ((one, two), (two, again)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_torch_mode_runs_the_reference(count_compiled):
    layer, gen = make_layer(3, "random", "exp", torch.float32, seed=1)
    x = (torch.rand(45, 9, generator=gen) > 0.5).float()
    in_mode("torch", lambda: layer_run(layer, x, torch.ones(29, 9)))
    assert count_compiled["lut"] == 0
    with pytest.raises(ValueError, match="QUWEIT_KERNELS"):
        in_mode("fast", lambda: layer_run(layer, x, torch.ones(29, 9)))


@pytest.fixture
def fresh_dispatch(monkeypatch, tmp_path):
    """A dispatch state that has built nothing yet, with an empty kernel cache; restored after."""
    monkeypatch.setenv("QUWEIT_KERNEL_CACHE", str(tmp_path))
    saved_state, saved_warned = dict(dispatch._state), set(dispatch._warned)
    dispatch.reset()
    yield tmp_path
    dispatch._state.update(saved_state)
    dispatch._warned.clear()
    dispatch._warned.update(saved_warned)


FAILED_BUILD_SCRIPT = r"""
import json, os, sys, warnings
import torch
from quweit_hw.model import kernels
from quweit_hw.model.kernels import build
from quweit_hw.model.lut import LUTLayer
build.SOURCE = build.Path(sys.argv[1])
gen = torch.Generator().manual_seed(2)
layer = LUTLayer(45, 29, n=4, mapping="local", window=12, generator=gen)
x = (torch.rand(45, 11, generator=gen) > 0.5).float()
g = torch.randn(29, 11, generator=gen)
def run():
    layer.luts.grad = None
    xx = x.clone().requires_grad_(True)
    y = layer.forward_rows(xx)
    (y * g).sum().backward()
    return [y.detach(), xx.grad, layer.luts.grad.clone()]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = [run() for _ in range(2)][1]
os.environ["QUWEIT_KERNELS"] = "torch"
ref = run()
try:
    os.environ["QUWEIT_KERNELS"] = "compiled"
    run()
    strict = "no error"
except kernels.KernelBuildError as exc:
    strict = str(exc)
print(json.dumps({
    "warnings": [str(w.message) for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)],
    "equal": all(torch.equal(a, b) for a, b in zip(got, ref)),
    "strict": strict,
}))
"""


def test_failed_build_warns_once_and_falls_back(tmp_path):
    # in a fresh process, as a user meets it: a build of this library cannot be unloaded
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    env = dict(os.environ, QUWEIT_KERNEL_CACHE=str(tmp_path / "cache"), QUWEIT_KERNELS="auto")
    proc = subprocess.run([sys.executable, "-c", FAILED_BUILD_SCRIPT, str(broken)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["warnings"]) == 1, result["warnings"]
    text = result["warnings"][0]
    assert "did not build" in text and "plain-torch fallback" in text and "QUWEIT_KERNELS=torch" in text
    assert "broken.cpp" in text and "error" in text  # the compiler's verdict is quoted
    assert result["equal"]  # the fallback computed what the reference computes
    assert "QUWEIT_KERNELS=compiled" in result["strict"]


def test_unsupported_dtype_and_device_fall_back_with_one_warning(fresh_dispatch):
    # (the reference's sparse CPU products take no bfloat16 either, so this asks the
    # dispatch directly, as the autograd functions do)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert not kernels.use_compiled(torch.zeros(2, dtype=torch.bfloat16))
        assert not kernels.use_compiled(torch.zeros(2, device="meta"))
        assert not kernels.use_compiled(torch.zeros(2, device="meta"))
        assert not kernels.use_compiled(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    messages = [str(w.message) for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]
    assert len(messages) == 3, messages
    assert "bfloat16" in messages[0] and "'meta'" in messages[1] and "one dtype" in messages[2]
    assert all("plain-torch" in m for m in messages)
    assert kernels.use_compiled(torch.zeros(2), torch.zeros(2))  # a supported pair still compiles


def test_build_is_cached_and_named_by_its_inputs(tmp_path):
    assert kernels.ops() is not None  # built (or loaded) once for the session's cache
    assert build.build_and_load(build.SOURCE) is None  # a second load compiles nothing
    other = tmp_path / "k.cpp"
    other.write_text(build.SOURCE.read_text() + "\n// changed\n")
    assert build.build_name(other) != build.build_name(build.SOURCE)
    assert build.build_name(build.SOURCE, build.CFLAGS[:-1]) != build.build_name(build.SOURCE)


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has("avx512f"), reason="this CPU builds the AVX2 paths anyway")
def test_avx2_paths_match_reference_on_an_avx512_cpu():
    # the kernels built without AVX-512 (QUWEIT_KERNEL_CFLAGS), in a process of their own: the
    # AVX2 spans (address-major input gradient, 32-byte lookups) and the scalar quantizer that
    # a CPU without AVX-512 runs
    env = dict(os.environ, QUWEIT_KERNEL_CFLAGS="-mno-avx512f", QUWEIT_KERNELS="compiled")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__,
         "-k", "(fused_block or lut_layer_matches or results_do_not_depend or quantizer) and not avx2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_build_flags_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(build.EXTRA_CFLAGS_ENV, "-mno-avx512f -DX=1")
    assert build.build_cflags() == build.CFLAGS + ("-mno-avx512f", "-DX=1")
    assert build.build_name(build.SOURCE, build.build_cflags()) != build.build_name(build.SOURCE)
    monkeypatch.delenv(build.EXTRA_CFLAGS_ENV)
    assert build.build_cflags() == build.CFLAGS


def test_efd_compact_table_is_the_reference_table_without_bit_l():
    layer, _ = make_layer(5, "random", "linear", torch.float64, seed=9)
    full = layer._kernel.table(layer.luts.detach())  # (out, n, 2**n)
    compact = kernels.compact_table(layer._kernel, layer.luts)
    for a in range(32):
        for l in range(5):
            c = (a & ((1 << l) - 1)) | ((a >> (l + 1)) << l)
            torch.testing.assert_close(compact[:, l, c], full[:, l, a], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_exp_efd_table_in_product_form_is_the_reference_table(n, dtype):
    # 13 LUTs: one full block of 8 lanes (AVX2 for float32, n >= 4) and a partial one
    gen = torch.Generator().manual_seed(n)
    layer = LUTLayer(20, 13, n=n, mapping="random", efd="exp", alpha=0.3, beta=0.4, generator=gen).to(dtype)
    compact = kernels.compact_table(layer._kernel, layer.luts)
    full = layer._kernel.table(layer.luts.detach())  # the reference's dense product
    cols = kernels.lut.compact_columns(n)
    expected = full.reshape(13, -1)[:, cols].view_as(compact)
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compact, expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_group_sum_of_rows_layout_matches_reference(dtype, monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "group_sum_rows", lambda *a: calls.append(1) or kernels.group_sum.group_sum_rows(*a))
    gen = torch.Generator().manual_seed(5)
    rows = (torch.rand(24, 13, generator=gen) > 0.5).to(dtype)  # (C*k, B) as the LUT path holds it
    g = torch.randn(13, 6, generator=gen, dtype=dtype)

    def run():
        r = rows.clone().requires_grad_(True)
        s = GroupSum(4, tau=2.0)(r.t())  # (B, C*k), a transposed view
        (s * g).sum().backward()
        return s.detach(), r.grad

    ref = in_mode("torch", run)
    got = in_mode("auto", run)
    assert calls == [1]
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert torch.equal(ref[0], rows.t().reshape(13, 6, 4).sum(-1) / 2)
