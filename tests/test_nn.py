"""quweit_hw.model (lut, lutmlp, thermometer): EFD and learnable-mapping gradients against naive loops, thermometer, group sum, LUTMLP export."""

import math

import numpy as np
import pytest
import torch

from quweit_hw.model import lut as qnn
from quweit_hw.model.lut import LUTLayer
from quweit_hw.model.lutmlp import LUTMLP, GroupSum, LUTMLPConfig
from quweit_hw.model.thermometer import Thermometer


def naive_efd_weight(efd, n, hamming):
    return 0.5 * 0.75 ** (n - 1) * (1 / 3) ** hamming if efd == "exp" else 1 / (hamming + 1)


def naive_lut_backward(x, mapping, luts, g, efd):
    """The EFD formula of docs/design.md, one sample, LUT, input bit and table entry at a time."""
    x, mapping, luts, g = x.tolist(), mapping.tolist(), luts.tolist(), g.tolist()
    n = len(mapping[0])
    dx = [[0.0] * len(x[0]) for _ in x]
    dluts = [[0.0] * len(row) for row in luts]
    for b in range(len(x)):
        for j, table in enumerate(luts):
            addr = sum(int(x[b][mapping[j][l]]) << l for l in range(n))
            dluts[j][addr] += g[b][j]
            for l in range(n):
                total = 0.0
                for k in range(2**n):
                    hamming = bin((addr ^ k) & ~(1 << l)).count("1")
                    sign = 1.0 if (k >> l) & 1 else -1.0
                    total += sign * naive_efd_weight(efd, n, hamming) * table[k]
                dx[b][mapping[j][l]] += g[b][j] * total
    return torch.tensor(dx, dtype=torch.float64), torch.tensor(dluts, dtype=torch.float64)


def run_layer(layer, x, g):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * g).sum().backward()
    return y, x.grad, layer.luts.grad


@pytest.mark.parametrize("efd", ["exp", "linear"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("path", ["dense", "walsh-hadamard"])
def test_efd_gradients_match_naive_formula(n, efd, path, monkeypatch):
    if path == "walsh-hadamard":
        monkeypatch.setattr(qnn, "DENSE_EFD_MAX_N", 0)
    gen = torch.Generator().manual_seed(n)
    layer = LUTLayer(9, 5, n=n, mapping="random", efd=efd, generator=gen).double()
    x = (torch.rand(4, 9, generator=gen) > 0.5).double()
    g = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    y, dx, dluts = run_layer(layer, x, g)
    want_dx, want_dluts = naive_lut_backward(x, layer.mapping_indices(), layer.luts.detach(), g, efd)
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=1e-6)
    torch.testing.assert_close(dluts, want_dluts, rtol=0, atol=1e-6)
    assert dx.abs().sum() > 0
    # forward: LUT j outputs [luts[j, addr] > 0], column 0 the address LSB
    m = layer.mapping_indices()
    addr = sum(x[:, m[:, l]].long() << l for l in range(n))
    want_y = (layer.luts.detach().gather(1, addr.t()).t() > 0).double()
    assert torch.equal(y.detach(), want_y)


def test_efd_alpha_beta_defaults():
    sign, weight = qnn.efd_parts(3, "exp")
    # bit l = 0, z = 0b110: Hamming 2 with bit 0 ignored; z = 0b001: 0
    assert weight[0, 0b110].item() == pytest.approx(0.5 * 0.75**2 / 9)
    assert weight[0, 0b001].item() == pytest.approx(0.5 * 0.75**2)
    assert sign[1].tolist() == [-1, -1, 1, 1, -1, -1, 1, 1]
    assert qnn.efd_parts(3, "linear")[1][2, 0b111].item() == pytest.approx(1 / 3)


def naive_learnable_backward(layer, x, g, window_start):
    """DWN learnable mapping: forward argmax, dW = (2x-1)^T g_sel, dx = g_sel softmax(W/tau)^T."""
    w = layer.weights.detach()
    win, cols = w.shape
    n, in_f = layer.n, layer.in_features
    soft = torch.softmax(w / layer.tau, dim=0)
    idx = layer.mapping_indices()
    # gradient of the selected inputs: the EFD of the LUTs on their selected bits
    sel = x[:, idx.flatten()]  # (B, out*n)
    ident = torch.arange(layer.out_features * n).view(-1, n)
    gsel, _ = naive_lut_backward(sel, ident, layer.luts.detach(), g, layer.efd)
    dw = torch.zeros_like(w)
    dx = torch.zeros_like(x)
    for c in range(cols):
        for p in range(win):
            pos = (window_start[c // n] + p) % in_f
            dw[p, c] = ((2 * x[:, pos] - 1) * gsel[:, c]).sum()
            dx[:, pos] += gsel[:, c] * soft[p, c]
    return dx, dw


@pytest.mark.parametrize("window", [8, None])
def test_learnable_mapping_gradients_match_naive(window):
    gen = torch.Generator().manual_seed(3)
    in_f, out_f, n = 12, 11, 3
    layer = LUTLayer(in_f, out_f, n=n, mapping="learnable", window=window, tau=0.5, generator=gen).double()
    x = (torch.rand(5, in_f, generator=gen) > 0.5).double()
    g = torch.randn(5, out_f, generator=gen, dtype=torch.float64)
    if window is None:
        starts = [0] * out_f
    else:  # centred on the middle of LUT j's share of the input, wrapping
        starts = [(2 * j + 1) * in_f // (2 * out_f) - window // 2 for j in range(out_f)]
    y, dx, _ = run_layer(layer, x, g)
    want_dx, want_dw = naive_learnable_backward(layer, x, g, starts)
    torch.testing.assert_close(layer.weights.grad, want_dw, rtol=0, atol=1e-9)
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=1e-9)
    # the forward reads the argmax candidate of each column
    arg = layer.weights.detach().argmax(0).view(out_f, n)
    want = (torch.tensor(starts)[:, None] + arg) % in_f
    assert torch.equal(layer.mapping_indices(), want)


def test_local_mapping_stays_in_window_and_is_seeded():
    make = lambda seed: LUTLayer(64, 32, n=6, mapping="local", window=16, generator=torch.Generator().manual_seed(seed))
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.mapping_indices(), b.mapping_indices())
    assert not torch.equal(a.mapping_indices(), c.mapping_indices())
    m = a.mapping_indices()
    start = (2 * torch.arange(32) + 1) * 64 // 64 - 8
    offset = (m - start[:, None]) % 64
    assert (offset < 16).all()
    assert all(len(set(row)) == 6 for row in m.tolist())  # n distinct inputs per LUT
    assert (m[0] >= 56).any()  # LUT 0's window [-7, 9) wraps to the end of the input


def test_arange_mapping_and_lut_clamp():
    layer = LUTLayer(5, 3, n=2, mapping="arange")
    assert layer.mapping_indices().tolist() == [[0, 1], [2, 3], [4, 0]]
    with torch.no_grad():
        layer.luts.fill_(3.0)
    layer.train()
    layer(torch.ones(2, 5))
    assert layer.luts.max().item() == 1.0


def test_thermometer_kinds_against_hand_computed_thresholds():
    x = torch.arange(10, dtype=torch.float32)[:, None]  # 0..9, one feature
    uni = Thermometer(1, 3, "uniform").fit(x).thresholds[0]
    torch.testing.assert_close(uni, torch.tensor([2.25, 4.5, 6.75]))
    dist = Thermometer(1, 3, "distributive").fit(x).thresholds[0]
    assert dist.tolist() == [2.0, 5.0, 7.0]  # sorted[10*i // 4]
    std = math.sqrt(sum((v - 4.5) ** 2 for v in range(10)) / 9)
    z = 0.6744897501960817  # Phi^-1(3/4)
    gauss = Thermometer(1, 3, "gaussian").fit(x).thresholds[0]
    torch.testing.assert_close(gauss, torch.tensor([4.5 - z * std, 4.5, 4.5 + z * std]))


def test_thermometer_ties_become_strictly_increasing_and_bits_feature_major():
    x = torch.tensor([[0.0, 1.0]] * 9 + [[1.0, 2.0]])  # quantiles of feature 0 all tie at 0
    th = Thermometer(2, 3, "distributive").fit(x)
    assert (th.thresholds[:, 1:] > th.thresholds[:, :-1]).all()
    th.set_thresholds(torch.tensor([[0.0, 1.0, 2.0], [10.0, 20.0, 30.0]]))
    bits = th(torch.tensor([[1.5, 25.0]]))
    assert bits.tolist() == [[1, 1, 0, 1, 1, 0]]  # feature f, threshold t at f*T + t


def test_thermometer_surrogate_gradient():
    th = Thermometer(1, 3, "uniform")
    th.set_thresholds(torch.tensor([[0.0, 1.0, 2.0]]))  # spacing 1
    x = torch.tensor([[0.5]], requires_grad=True)
    th(x).sum().backward()
    # triangles of width 1: |0.5-0| -> 0.5, |0.5-1| -> 0.5, |0.5-2| -> 0
    assert x.grad.item() == pytest.approx(1.0)
    x = torch.tensor([[0.75]], requires_grad=True)
    (th(x) * torch.tensor([[1.0, 10.0, 100.0]])).sum().backward()
    assert x.grad.item() == pytest.approx(0.25 + 10 * 0.75)


@pytest.mark.parametrize("scale", [0.1, 0.05, 1.0, 0.37])
def test_integer_thresholds_agree_on_every_int8_value(scale):
    gen = torch.Generator().manual_seed(7)
    th = Thermometer(4, 16, "distributive").fit(torch.randn(500, 4, generator=gen) * 40 * scale)
    # ties with exact multiples of the scale and thresholds outside the int8 range
    theta = th.thresholds.clone()
    theta[0] = torch.arange(16, dtype=torch.float32) * scale * 3 - 20 * scale
    theta[1, 0], theta[1, -1] = -500 * scale, 500 * scale
    th.set_thresholds(theta)
    q = torch.arange(-128, 128, dtype=torch.float32)
    ints = th.integer_thresholds(scale, bits=8)
    want = (q * scale)[None, None, :] > th.thresholds[:, :, None]
    got = q[None, None, :] > ints[:, :, None]
    assert torch.equal(got, want)
    assert ints.min() >= -129 and ints.max() <= 127
    assert (ints[:, 1:] >= ints[:, :-1]).all()


def test_group_sum():
    x = torch.arange(12, dtype=torch.float32).view(2, 6)
    assert GroupSum(3)(x).tolist() == [[3, 12], [21, 30]]
    assert GroupSum(3, tau=3)(x).tolist() == [[1, 4], [7, 10]]
    with pytest.raises(ValueError, match=r"multiple of k = 4, got shape \(2, 6\)"):
        GroupSum(4)(x)


SMALL = dict(d=6, thresholds=5, n=3, hidden=(40,), group_size=4, window=8)


def calibrated_block(seed=0, **overrides):
    torch.manual_seed(seed)
    block = LUTMLP(LUTMLPConfig(**{**SMALL, **overrides}))
    h = torch.randn(300, 6) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 0.1])
    h[0, 0] = 50.0  # an outlier that must clip
    block.calibrate(h)
    return block, h


def test_block_forward_is_deterministic_under_a_seed():
    outs = []
    for _ in range(2):
        block, h = calibrated_block(seed=5)
        h = h.clone().requires_grad_(True)
        y = block(h)
        y.square().sum().backward()
        outs.append((y.detach(), h.grad, block.layers[0].luts.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert outs[0][1].abs().sum() > 0  # the surrogate lets gradient reach h


def test_state_dict_round_trip_and_deepcopy():
    import copy

    a, h = calibrated_block(seed=1, mapping="random", deep_mapping="random")
    b, _ = calibrated_block(seed=2, mapping="random", deep_mapping="random")
    ya = a(h)
    assert not torch.equal(b(h), ya)  # b has built its cached sparse matrices for its own wiring
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(h), ya)  # loading new wiring invalidates that cache
    assert torch.equal(copy.deepcopy(a)(h), ya)


def test_calibrated_eval_counts_are_exact_integers():
    block, h = calibrated_block()
    block.eval()
    q = block.quantize(h)
    assert torch.equal(q, q.round()) and q.min() >= -128 and q.max() <= 127
    assert q[0, 0].item() == 127  # the outlier clipped
    c = block.counts(q)
    assert c.shape == (300, 6)
    assert torch.equal(c, c.round()) and c.min() >= 0 and c.max() <= 4
    assert len(c.unique()) > 2
    y = block(h)
    torch.testing.assert_close(y, c * block.affine_a + block.affine_b)


def test_block_learns_a_small_regression():
    """End to end: EFD, the straight-through tables and the affine step together reduce a loss."""
    torch.manual_seed(0)
    block = LUTMLP(LUTMLPConfig(d=4, thresholds=8, n=4, hidden=(32,), group_size=8, window=16))
    h = torch.randn(256, 4)
    target = torch.tanh(2 * h.flip(1))  # each channel a nonlinear function of another channel
    block.calibrate(h)
    opt = torch.optim.Adam(block.parameters(), lr=0.03)
    losses = []
    for _ in range(40):
        loss = (block(h) - target).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.4 * losses[0]
    block(h)  # the clamp to [-1, 1] happens at the start of each training forward
    assert all(layer.luts.abs().max() <= 1 for layer in block.layers)


def numpy_counts(arrays, q):
    """Tiny reference of the bundle semantics: thermometer f*T+t, address LSB first, popcount groups."""
    bits = (q[:, :, None] > arrays["thresholds"][None]).reshape(len(q), -1).astype(np.uint8)
    for layer in arrays["layers"]:
        m, table = layer["mapping"], layer["table"]
        addr = sum(bits[:, m[:, l]].astype(np.int64) << l for l in range(m.shape[1]))
        bits = table[np.arange(len(table))[None, :], addr]
    return bits.reshape(len(q), -1, arrays["group_size"]).sum(-1)


@pytest.mark.parametrize("bit_order", ["feature", "threshold"])
@pytest.mark.parametrize("mapping", ["local", "random", "learnable", "arange"])
def test_export_arrays_reproduce_torch_eval_counts(mapping, bit_order):
    block, h = calibrated_block(mapping=mapping, bit_order=bit_order, deep_mapping="random")
    if mapping == "learnable":  # argmax somewhere other than the initial draw
        with torch.no_grad():
            block.layers[0].weights.normal_()
    block.eval()
    q = block.quantize(h)
    arrays = block.export_arrays()
    assert arrays["thresholds"].dtype == np.int32 and arrays["thresholds"].shape == (6, 5)
    assert (np.diff(arrays["thresholds"], axis=1) >= 0).all()
    assert [layer["mapping"].shape for layer in arrays["layers"]] == [(40, 3), (24, 3)]
    assert all(layer["table"].dtype == np.uint8 and layer["table"].shape[1] == 8 for layer in arrays["layers"])
    assert arrays["bits"] == 8 and arrays["group_size"] == 4
    assert arrays["input_scale"] == block.input_scale.item()
    want = block.counts(q).long().numpy()
    assert np.array_equal(numpy_counts(arrays, q.long().numpy()), want)
    # the backend hook replaces the torch LUT path in eval mode only
    block.backend = lambda qq: torch.as_tensor(numpy_counts(arrays, qq.numpy()))
    torch.testing.assert_close(block(h), block.counts(q) * block.affine_a + block.affine_b)
    block.backend = lambda qq: torch.zeros_like(qq)
    torch.testing.assert_close(block(h), block.affine_b.expand(300, 6))
    block.train()
    assert not torch.equal(block(h), block.affine_b.expand(300, 6))


def test_threshold_bit_order_changes_what_windows_see():
    a, _ = calibrated_block(seed=1, bit_order="feature")
    b, _ = calibrated_block(seed=1, bit_order="threshold")
    m0a, m0b = a.export_arrays()["layers"][0]["mapping"], b.export_arrays()["layers"][0]["mapping"]
    assert np.array_equal(a.layers[0].mapping_indices().numpy(), b.layers[0].mapping_indices().numpy())
    # same wiring in the layer's own order; in feature-major terms threshold order mixes features
    assert not np.array_equal(m0a, m0b)


def test_quantize_straight_through():
    block, _ = calibrated_block()
    s = block.input_scale.item()
    h = torch.tensor([[0.3 * s, 1000 * s, -1000 * s, 2.5 * s, 3.5 * s, 0.0]], requires_grad=True)
    q = block.quantize(h)
    assert q.tolist() == [[0, 127, -128, 2, 4, 0]]  # round half to even, clamp
    q.sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([[1 / s, 0, 0, 1 / s, 1 / s, 1 / s]]))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LUTLayer(8, 4, n=0), r"n must be in \[1, 16\], got 0"),
        (lambda: LUTLayer(8, 4, n=17), r"n must be in \[1, 16\], got 17"),
        (lambda: LUTLayer(8, 4, mapping="lokal"), r"mapping must be one of .*got 'lokal'"),
        (lambda: LUTLayer(8, 4, n=6, mapping="local", window=4), r"window >= n = 6, got window 4"),
        (lambda: LUTLayer(8, 4, efd="cubic"), r"got 'cubic'"),
        (lambda: GroupSum(0), r"k must be >= 1, got 0"),
        (lambda: Thermometer(3, 0), r"bits must be >= 1, got 0"),
        (lambda: LUTMLPConfig(d=4, thresholds=300), r"thresholds must be in \[1, 256\], got 300"),
        (lambda: LUTMLPConfig(d=4, n=0), r"n must be in \[1, 16\], got 0"),
        (lambda: LUTMLPConfig(d=4, window=3), r"window must be >= 6, got 3"),
        (lambda: LUTMLPConfig(d=4, hidden=(16, 0)), r"hidden width must be >= 1, got 0"),
        (lambda: LUTMLPConfig(d=4, bit_order="row"), r"got 'row'"),
        (lambda: LUTMLPConfig(d=4, deep_mapping="learnable"), r"got 'learnable'"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    layer = LUTLayer(8, 4, n=3)
    with pytest.raises(ValueError, match=r"LUTLayer input must be 0/1, got 0.5"):
        layer(torch.full((2, 8), 0.5))
    with pytest.raises(ValueError, match=r"shape \(batch, 8\), got \(3, 7\)"):
        layer(torch.zeros(3, 7))
    th = Thermometer(2, 3)
    with pytest.raises(ValueError, match=r"strictly increasing, feature 1 has 2.0 then 2.0"):
        th.set_thresholds(torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]))
    with pytest.raises(ValueError, match=r"finite, got inf"):
        th.set_thresholds(torch.tensor([[0.0, 1.0, math.inf], [0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(2, 3\), got \(2, 4\)"):
        th.set_thresholds(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"fit expects x of shape \(N, 2\), got \(5, 3\)"):
        th.fit(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got 0"):
        th.integer_thresholds(0, bits=8)
    block, _ = calibrated_block()
    with pytest.raises(ValueError, match=r"last dimension 6, got shape \(2, 5\)"):
        block(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"calibrate expects h of shape \(N, 6\), got \(4, 3\)"):
        block.calibrate(torch.zeros(4, 3))
