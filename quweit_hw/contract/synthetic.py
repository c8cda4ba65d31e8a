"""Synthetic blocks and edge tokens for tests and benchmarks: valid bundles without training."""

import numpy as np

from .bundle import Block, Layer, signed_range


def local_mapping(in_features, out_features, n, window, rng):
    """(out, n) indices: LUT j draws n distinct inputs from a window of `window` positions
    centred on j*in/out, wrapping at the ends. window=None draws from all inputs."""
    if window is None or window >= in_features:
        return np.stack([rng.choice(in_features, n, replace=n > in_features) for _ in range(out_features)]).astype(np.int32)
    centre = (np.arange(out_features) * in_features) // out_features
    offsets = np.stack([rng.choice(window, n, replace=n > window) for _ in range(out_features)])
    return ((centre[:, None] - window // 2 + offsets) % in_features).astype(np.int32)


def random_block(d=16, *, bits=8, thresholds=16, n=6, hidden=(256,), group_size=8, window=None, seed=0, name="random"):
    """A synthetic but valid block (random tables, sorted random thresholds, random or windowed wiring)."""
    rng = np.random.default_rng(seed)
    lo, hi = signed_range(bits)
    th = np.sort(rng.integers(lo - 1, hi + 1, size=(d, thresholds)), axis=1).astype(np.int32)
    layers, width = [], d * thresholds
    for out in (*hidden, d * group_size):
        mapping = local_mapping(width, out, n, window, rng)
        layers.append(Layer(mapping, rng.integers(0, 2, size=(out, 2**n), dtype=np.uint8), width))
        width = out
    return Block(name=name, d=d, bits=bits, thresholds=th, layers=tuple(layers), group_size=group_size,
                 affine_a=rng.standard_normal(d).astype(np.float32), affine_b=rng.standard_normal(d).astype(np.float32))


def threshold_edges(block, backgrounds):
    """Tokens that put every kept comparator on both sides of its edge: for each row of
    `backgrounds` (R, d) and each distinct (feature, threshold) some layer-0 LUT reads,
    q_f = theta and q_f = theta + 1 where those are in the input range."""
    lo, hi = signed_range(block.bits)
    pairs = sorted({(int(f), int(block.thresholds[f, t])) for f, t in zip(*np.nonzero(block.used_thresholds()))})
    rows = []
    for background in np.asarray(backgrounds, np.int64):
        for f, theta in pairs:
            for v in (theta, theta + 1):
                if lo <= v <= hi:
                    row = background.copy()
                    row[f] = v
                    rows.append(row)
    return np.array(rows, np.int64).reshape(-1, block.d)


def feature_edges(block):
    """Per feature f, the inputs that put each of its kept comparators on both sides of its edge:
    theta and theta + 1 for every distinct (f, theta) some layer-0 LUT reads, where they lie in
    the input range ([0] for a feature with none)."""
    lo, hi = signed_range(block.bits)
    used = block.used_thresholds()
    edges = []
    for f in range(block.d):
        thetas = sorted({int(theta) for theta in block.thresholds[f][used[f]]})
        edges.append([v for theta in thetas for v in (theta, theta + 1) if lo <= v <= hi] or [0])
    return edges


def random_tokens(block, count, rng):
    """`count` tokens drawn uniformly from the signed b-bit input range."""
    lo, hi = signed_range(block.bits)
    return rng.integers(lo, hi + 1, size=(count, block.d))
