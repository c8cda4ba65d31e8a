"""Synthetic blocks, edge tokens and whole integer programs for tests and benchmarks: valid
bundles without training (and without torch)."""

import math

import numpy as np

from . import integer as I
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


# --- whole integer programs (contract.golden_model) ----------------------------------------------

PROGRAM_DEFAULTS = {"image_size": 8, "channels": 1, "patch": 4, "d": 16, "depth": 2, "heads": 2, "classes": 10,
                    "pool": "cls", "mlp": "dense"}
# standard deviations the random multipliers aim at: int8 activations, the int16 residual
# stream (and each branch added to it), int16 logits; about 8 sigma of headroom everywhere
INT8_STD, STREAM_STD, BRANCH_STD, LOGIT_STD = 16, 2048, 1024, 2048
UNIFORM_INT8_STD = 255 / math.sqrt(12)  # of weights and inputs drawn uniformly from [-128, 127]


def random_program(config=None, seed=0):
    """A valid random integer program (contract.golden_model, bundle format 2) for `config`, a dict
    over PROGRAM_DEFAULTS (mlp "dense" or "lut"; with "lut", config["lut"] holds random_block's
    keyword arguments, d excepted). Weights are uniform int8; each multiplier maps its
    accumulator's expected spread to the spreads above (times a per-channel factor in [0.5, 1.5)),
    so that values mostly stay unsaturated while every op is exercised. No torch, no training."""
    c = {**PROGRAM_DEFAULTS, **(config or {})}
    lut = c.pop("lut", None) or {}
    d, heads = c["d"], c["heads"]
    if d % heads or c["image_size"] % c["patch"] or c["mlp"] not in ("dense", "lut") or c["pool"] not in ("cls", "mean"):
        raise ValueError(f"not a valid program config: {c!r}")
    rng = np.random.default_rng(seed)
    k = c["channels"] * c["patch"] ** 2
    patches = (c["image_size"] // c["patch"]) ** 2

    def mult(target, spread, channels=None):
        jitter = rng.uniform(0.5, 1.5, channels) if channels else 1.0
        m, s = I.dyadic(target / spread * jitter)
        return {"m": m, "s": s}

    def lin(out, inp, target, in_std=INT8_STD):
        w = rng.integers(-128, 128, (out, inp))
        spread = math.sqrt(inp) * UNIFORM_INT8_STD * in_std
        bias = int(spread / 4)  # a quarter of the products: the input still decides
        return {"w": w, "b": rng.integers(-bias, bias + 1, out), **mult(target, spread, out)}

    def ln(bits=8):
        g = rng.integers(-128, 128, d)
        unit = 2**I.LN_FRAC_BITS * UNIFORM_INT8_STD  # z * g: z has unit spread at 10 fractional bits
        return {"g": g, "b": rng.integers(-int(unit / 4), int(unit / 4) + 1, d),
                **mult(INT8_STD * 2 ** (bits - 8), unit, d), "bits": bits}

    embed = lin(d, k, STREAM_STD, in_std=UNIFORM_INT8_STD)  # pixels - 128
    embed["b"] = embed["b"][None, :] + rng.integers(-1000, 1001, (patches, d))  # bias + position, per token
    embed["cls"] = rng.integers(-STREAM_STD, STREAM_STD + 1, d) if c["pool"] == "cls" else None
    blocks = []
    for i in range(c["depth"]):
        dh = d // heads
        blk = {"ln1": ln(), "qkv": lin(3 * d, d, INT8_STD),
               # a real logit spread of about 2: scores to 1/64 log2 units
               "softmax": mult(2 * math.log2(math.e) * 2**I.EXP_FRAC_BITS, math.sqrt(dh) * INT8_STD**2),
               "ctx": mult(INT8_STD, I.PROB_MAX * INT8_STD),
               "proj": lin(d, d, BRANCH_STD)}
        if c["mlp"] == "dense":
            blk["ln2"] = ln()
            gelu = [round(0.5 * x * (1 + math.erf(x / 32 / math.sqrt(2)))) for x in range(-128, 128)]
            blk["mlp"] = {"kind": "dense", "fc": lin(4 * d, d, INT8_STD), "gelu": I.saturate(gelu, 8),
                          "proj": lin(d, 4 * d, BRANCH_STD)}
        else:
            block = random_block(d, **{"seed": seed * 1000 + i, **lut, "name": f"blocks.{i}.mlp"})
            blk["ln2"] = ln(block.bits)
            spread = block.group_size / 2 * UNIFORM_INT8_STD
            blk["mlp"] = {"kind": "lut", "block": block,
                          "affine": {"a": rng.integers(-128, 128, d), "b": rng.integers(-int(spread), int(spread) + 1, d),
                                     **mult(BRANCH_STD, spread, d)}}
        blocks.append(blk)
    return {"config": c, "input": {"zero_point": 128}, "embed": embed, "blocks": blocks, "ln_f": ln(),
            "head": lin(c["classes"], d, LOGIT_STD)}
