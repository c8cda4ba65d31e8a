"""The integer ops (contract.integer and model.quant): stated semantics, tie and saturation rules,
agreement with their float counterparts within stated bounds, and numpy == torch bit for bit."""

import math

import numpy as np
import pytest
import torch

from quweit_hw.contract import integer as I
from quweit_hw.errors import UserError
from quweit_hw.model import quant as Q

RNG = np.random.default_rng(0)


def both(fn_np, fn_t, *args, **kw):
    """Run an op in numpy and in torch on the same integers; they must agree exactly."""
    a = fn_np(*args, **kw)
    t = fn_t(*[torch.as_tensor(np.asarray(x, np.int64)) if isinstance(x, np.ndarray) else x for x in args], **kw)
    assert np.array_equal(a, t.numpy()), "numpy and torch integer ops differ"
    return a


def test_requantize_rounds_half_up_and_saturates_at_both_ends():
    acc = np.array([1, -1, 3, -3, 5, -5, 2, -2])
    # m / 2**s = 1/2: exact halves round toward +inf
    assert both(I.requantize, Q.requantize, acc, 1, 1).tolist() == [1, 0, 2, -1, 3, -2, 1, -1]
    big = np.array([10**6, -10**6, 127 * 4 + 1, -128 * 4 - 3])
    assert both(I.requantize, Q.requantize, big, 1, 2).tolist() == [127, -128, 127, -128]
    assert both(I.requantize, Q.requantize, np.array([70000, -70000]), 1, 0, bits=16).tolist() == [32767, -32768]
    # per-channel multipliers broadcast on the last axis; s = 0 is a plain product
    out = both(I.requantize, Q.requantize, np.array([[10, 10]]), np.array([3, 1]), np.array([0, 2]))
    assert out.tolist() == [[30, 3]]


def test_requantize_equals_exact_rational_rounding():
    acc = RNG.integers(-2**31 + 1, 2**31, 5000)
    m = RNG.integers(0, 2**31, 5000)
    s = RNG.integers(0, 63, 5000)
    got = both(I.requantize, Q.requantize, acc, m, s, bits=32)
    want = [max(-2**31, min(2**31 - 1, (int(a) * int(k) + ((1 << int(t)) >> 1)) >> int(t))) for a, k, t in zip(acc, m, s)]
    assert got.tolist() == want


def test_dyadic_is_the_nearest_31_bit_multiplier():
    M = np.exp(RNG.uniform(math.log(2**-30), math.log(2**30), 2000))
    m, s = I.dyadic(M)
    assert ((m >= 2**30) & (m < 2**31)).all() and ((s >= 0) & (s <= 62)).all()
    # nearest: error at most half a unit of the 31-bit mantissa
    assert (np.abs(m / np.exp2(s) - M) <= 0.5 * np.exp2(-s) * (1 + 1e-12)).all()
    assert I.dyadic(0.0) == (0, 31)
    with pytest.raises(UserError, match="2\\*\\*31"):
        I.dyadic(2.0**31)
    with pytest.raises(UserError, match="negative"):
        I.dyadic(-1.0)


def test_isqrt_is_exact_floor_sqrt():
    k = RNG.integers(1, 2**31, 20000, dtype=np.int64)
    n = np.concatenate([np.arange(1 << 16), k * k, k * k - 1, k * k + 1, 2 ** np.arange(62), 2 ** np.arange(1, 62) - 1,
                        RNG.integers(0, 2**62, 20000), [2**62 - 1]])
    got = both(I.isqrt, Q.isqrt, n)
    assert got.tolist() == [math.isqrt(int(v)) for v in n]


def ln_params(C, s_out, gamma=None, beta=None):
    """Integer LN parameters for gamma, beta (float) and output scale s_out, as the export makes them."""
    gamma = np.ones(C) if gamma is None else gamma
    beta = np.zeros(C) if beta is None else beta
    sg = np.abs(gamma) / 127
    unit = sg * 2.0**-I.LN_FRAC_BITS
    m, s = I.dyadic(unit / s_out)
    return dict(g=np.round(gamma / sg).astype(np.int64), b=np.floor(beta / unit + 0.5).astype(np.int64), m=m, s=s)


def test_layernorm_matches_float_within_one_step():
    # Bound: |out - LN(x)/s_out| <= 1 output step. Rounding the output is 1/2 step; z carries
    # 10 fractional bits (error 2**-11 std), sigma's floor and r's floor add a relative error
    # below 1/sigma + sigma/2**40 (sigma = C * std >= 64 * 200 here), far below the other 1/2 step.
    C = 64
    x = np.round(RNG.normal(0, 1, (500, C)) * RNG.uniform(200, 9000, (500, 1)) + RNG.normal(0, 3000, (500, 1)))
    x = np.clip(x, -32768, 32767).astype(np.int64)
    gamma, beta = RNG.uniform(0.5, 2, C) * RNG.choice([-1, 1], C), RNG.normal(0, 0.5, C)
    s_out = 5.0 / 127
    p = ln_params(C, s_out, gamma, beta)
    out = both(I.layernorm, Q.layernorm, x, p["g"], p["b"], p["m"], p["s"])
    xf = x.astype(np.float64)
    ref = (xf - xf.mean(1, keepdims=True)) / xf.std(1, keepdims=True) * gamma + beta
    ref = np.clip(ref / s_out, -128, 127)
    assert np.abs(out - ref).max() <= 1.0


def test_layernorm_of_a_constant_token_is_beta_and_saturates_at_both_ends():
    C = 16
    beta = np.linspace(-1, 1, C)
    p = ln_params(C, 1.0 / 127, beta=beta)
    x = np.full((3, C), 1234, np.int64)
    x[1] = -32768
    x[2] = 0
    out = both(I.layernorm, Q.layernorm, x, p["g"], p["b"], p["m"], p["s"])
    want = I.requantize(p["b"], p["m"], p["s"])  # variance 0: z = 0, only beta is left
    assert (out == want).all() and out[0, 0] == -127 and out[0, -1] == 127
    # a tiny output scale saturates both tails; the middle keeps its sign
    p = ln_params(C, 0.01)
    ramp = np.arange(C, dtype=np.int64)[None] * 1000
    out = both(I.layernorm, Q.layernorm, ramp, p["g"], p["b"], p["m"], p["s"])
    assert out[0, 0] == -128 and out[0, -1] == 127


def softmax_mult(score_scale):
    return I.dyadic(score_scale * math.log2(math.e) * 2**I.EXP_FRAC_BITS)


def test_softmax_matches_float_within_stated_bound():
    # Bound: |p - 255 softmax| <= 0.5 + 255 (0.012 softmax + T 2**-15). The exponent is
    # rounded to 2**-7 bits (relative error <= ln2 2**-7 = 0.54 %), for the element and for the
    # sum, so the ratio is within 1.1 % (+ table rounding 2**-16); the shift truncates each e
    # by < 1 unit of 2**-15 (T of them in Z); R's floor loses < 2**-21; the output rounds by 1/2.
    T, scale = 17, 0.01
    scores = np.round(RNG.normal(0, 1, (400, T)) * RNG.uniform(10, 800, (400, 1))).astype(np.int64)
    m, s = softmax_mult(scale)
    p = both(I.softmax, Q.softmax, scores, m, s)
    ref = torch.softmax(torch.as_tensor(scores * scale, dtype=torch.float64), -1).numpy()
    assert (p >= 0).all() and (p <= 255).all()
    assert (np.abs(p - 255 * ref) <= 0.5 + 255 * (0.012 * ref + T * 2.0**-15)).all()


def test_softmax_edges_equal_rows_one_huge_score_and_saturated_differences():
    m, s = softmax_mult(0.05)
    for T in (1, 2, 3, 17, 64):
        row = np.full((2, T), 77, np.int64)
        row[1] = -2**31 + 1
        p = both(I.softmax, Q.softmax, row, m, s)
        R = (255 << 30) // (T << 15)
        assert (p == ((2**15 * R + 2**29) >> 30)).all(), "an all-equal row is uniform"
        assert abs(int(p[0].sum()) - 255) <= T
    huge = np.zeros((1, 9), np.int64)
    huge[0, 4] = 10**6
    assert both(I.softmax, Q.softmax, huge, m, s).tolist() == [[0, 0, 0, 0, 255, 0, 0, 0, 0]]
    # row max minus score saturates at 2**31 - 1 before the multiply, so no product overflows
    # int64 even for scores far outside int32 and the largest multiplier: still exp = 0 there
    # (unsaturated, 2**34 * 2**30 would wrap to 0 and pass for a tie with the max)
    wide = np.array([[2**34, 0, -2**40]], np.int64)
    assert both(I.softmax, Q.softmax, wide, 2**30, 30).tolist() == [[255, 0, 0]]


def test_add_aligned_saturates_the_residual_stream():
    x = np.array([32000, -32000, 100, 5])
    acc = np.array([5000, -5000, -3, 3])
    assert both(I.add_aligned, Q.add_aligned, x, acc, 1, 1).tolist() == [32767, -32768, 99, 7]


def test_patches_are_conv2d_order_and_gelu_table_is_round_half_up():
    pix = RNG.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    p = both(I.patches, Q.patches, pix, 4)
    w = torch.from_numpy(RNG.integers(-127, 128, (5, 3, 4, 4)).astype(np.float64))
    conv = torch.nn.functional.conv2d(torch.from_numpy(pix.astype(np.float64) - 128), w, stride=4)
    assert np.array_equal(conv.flatten(2).transpose(1, 2).numpy(), I.linear(p, w.reshape(5, -1).numpy().astype(np.int64)))
    from quweit_hw.model.integer_program import gelu_table

    table = gelu_table(0.05, 0.02)
    x = np.arange(-128, 128)
    ref = torch.nn.functional.gelu(torch.as_tensor(x * 0.05, dtype=torch.float64)).numpy() / 0.02
    assert np.abs(I.lookup(x, table) - np.clip(ref, -128, 127)).max() <= 0.5
    assert both(I.lookup, Q.lookup, np.array([-128, 127]), table).tolist() == [table[0], table[255]]


def test_fake_quant_rounds_like_the_integers_with_straight_through_gradient():
    x = torch.tensor([0.5, -0.5, 1.5, 300.0, -300.0], requires_grad=True)
    y = Q.fake_quant(x, 1.0, -128, 127)
    assert y.tolist() == [1.0, 0.0, 2.0, 127.0, -128.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    w = torch.tensor([[0.5, -1.0], [0.02, 0.013]])
    w_int, scale = Q.weight_int(w)
    assert w_int.tolist() == [[64.0, -127.0], [127.0, 83.0]] and torch.allclose(scale, torch.tensor([1 / 127, 0.02 / 127]))


def test_activation_quantizer_headroom():
    q, plain = Q.ActQuant(16, headroom=2.0).train(), Q.ActQuant(16).train()
    x = torch.tensor([-3.0, 1.0, 2.0])
    q(x), plain(x)  # the first batch sets amax = 2 * 3 (and 3 without headroom)
    assert q.amax.item() == 6.0 and q.scale() == 6.0 / 32767 and plain.amax.item() == 3.0
    q.eval(), plain.eval()
    beyond = torch.tensor([5.0])  # above every value seen: headroom keeps it, 1 clips it to 3
    assert (q(beyond) - beyond).abs().item() <= q.scale() / 2 and plain(beyond).item() == pytest.approx(3.0)
    q.train()
    q(beyond)
    assert q.amax.item() == pytest.approx(0.9 * 6 + 0.1 * 10)  # EMA of headroom x batch max
    with pytest.raises(ValueError, match="headroom must be >= 1"):
        Q.ActQuant(8, headroom=0.5)
    from quweit_hw.model.integer_vit import WIDE_HEADROOM, IntegerViT
    from quweit_hw.model.vit import ViTConfig

    model = IntegerViT(ViTConfig(image_size=8, patch=4, d=8, depth=1, heads=2, integer=True))
    assert {k: q.headroom for k, q in model.quant.items() if q.headroom != 1.0} == \
        {"res": WIDE_HEADROOM, "logits": WIDE_HEADROOM}  # the 16-bit grids only
