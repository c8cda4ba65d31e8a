"""The golden model against a deliberately naive per-token, per-LUT loop of the bundle semantics."""

import numpy as np
import pytest

from quweit_hw.contract import golden, synthetic
from quweit_hw.contract.bundle import signed_range
from quweit_hw.errors import UserError


def naive_counts(block, q):
    """docs/bundle-format.md read literally: one token, one comparator, one LUT at a time."""
    out = []
    for token in q:
        bits = []
        for f in range(block.d):
            for t in range(block.T):
                bits.append(1 if int(token[f]) > int(block.thresholds[f, t]) else 0)
        for layer in block.layers:
            nxt = []
            for j in range(layer.out_features):
                address = 0
                for l in range(layer.n):
                    address += bits[int(layer.mapping[j, l])] << l
                nxt.append(int(layer.table[j, address]))
            bits = nxt
        k = block.group_size
        out.append([sum(bits[j * k:(j + 1) * k]) for j in range(block.d)])
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("n,hidden,window,bits", [
    (2, (), None, 4), (3, (40,), 8, 8), (4, (64, 48), None, 8), (5, (96,), 16, 6), (6, (128, 64, 96), 12, 8),
])
def test_golden_equals_naive_loop(n, hidden, window, bits):
    block = synthetic.random_block(6, bits=bits, thresholds=5, n=n, hidden=hidden, group_size=4, window=window, seed=n)
    rng = np.random.default_rng(n)
    lo, hi = signed_range(bits)
    q = np.concatenate([synthetic.random_tokens(block, 40, rng),
                        np.full((1, 6), lo), np.full((1, 6), hi)])
    expected = naive_counts(block, q)
    assert np.array_equal(golden.counts(block, q), expected)
    assert np.array_equal(golden.counts(block, q, chunk=7), expected)  # chunking changes nothing
    assert expected.max() <= block.group_size and expected.min() >= 0


def test_thermometer_is_strict_at_every_threshold():
    block = synthetic.random_block(3, thresholds=4, hidden=(), group_size=2, n=2, seed=1)
    for f in range(block.d):
        for t in range(block.T):
            theta = int(block.thresholds[f, t])
            for q, bit in ((theta, 0), (theta + 1, 1)):
                if not -128 <= q <= 127:
                    continue
                tok = np.zeros((1, block.d), np.int64)
                tok[0, f] = q
                assert golden.thermometer(block, tok)[0, f * block.T + t] == bit


def test_stages_shapes_and_layer_semantics():
    block = synthetic.random_block(4, thresholds=3, n=3, hidden=(10,), group_size=2, seed=3)
    q = np.array([[0, 1, -1, 5]])
    th, l0, l1, c = golden.stages(block, q)
    assert th.shape == (1, 12) and l0.shape == (1, 10) and l1.shape == (1, 8) and c.shape == (1, 4)
    layer = block.layers[0]
    j = 7
    address = sum(int(th[0, layer.mapping[j, l]]) << l for l in range(3))
    assert l0[0, j] == layer.table[j, address]
    assert np.array_equal(c[0], l1[0].reshape(4, 2).sum(1))


def test_tokens_are_checked():
    block = synthetic.random_block(4, bits=8, hidden=(), group_size=2, n=2)
    with pytest.raises(UserError, match=r"\[-128, 127\]; got \[0, 128\]"):
        golden.counts(block, np.array([[0, 0, 0, 128]]))
    with pytest.raises(UserError, match=r"shape \(N, 4\).*\(2, 3\)"):
        golden.counts(block, np.zeros((2, 3), np.int64))
    with pytest.raises(UserError, match="integers"):
        golden.counts(block, np.full((1, 4), 0.5))


def test_threshold_edges_cover_both_sides_of_every_kept_comparator():
    block = synthetic.random_block(5, thresholds=6, n=3, hidden=(20,), group_size=2, seed=4)
    q = synthetic.threshold_edges(block, np.zeros((2, 5), np.int64))
    bits = golden.thermometer(block, q)
    used = block.used_thresholds().reshape(-1)
    for index in np.nonzero(used)[0]:
        f, t = divmod(int(index), block.T)
        theta = int(block.thresholds[f, t])
        if -128 <= theta and theta + 1 <= 127:
            assert set(bits[q[:, f] == theta, index]) == {0} and set(bits[q[:, f] == theta + 1, index]) == {1}
    assert len(q) % 2 == 0 and q.shape[1] == 5
