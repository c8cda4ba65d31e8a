"""A deliberately naive second golden model: the same program, one Python integer at a time.

Written apart from `golden_model` and `integer` (it shares only the table EXP2_TABLE and the
constants that define the semantics), with plain loops, Python's unbounded ints and
`math.isqrt`, so that a vectorisation slip, an int64 overflow or a wrong axis in the fast
model shows up as a difference. Slow: for tests on tiny models only. Imports no torch.
"""

import math

from . import integer as spec


def _round_shift(x, s):
    return (x + (1 << (s - 1))) >> s if s > 0 else x


def _sat(x, bits):
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, x))


def _requant(acc, m, s, bits):
    return _sat(_round_shift(acc * int(m), int(s)), bits)


def _vec(a):
    return [int(v) for v in a]


def _matvec(w, b, x):
    """One output per row of w: sum_k w[o][k] * x[k] + b[o] (b None: no bias)."""
    return [sum(int(wk) * xk for wk, xk in zip(row, x)) + (int(b[o]) if b is not None else 0)
            for o, row in enumerate(w)]


def _layernorm(x, p):
    C = len(x)
    S = sum(x)
    d = [C * v - S for v in x]
    V = sum(v * v for v in d)
    sigma = max(1, math.isqrt(V // C))
    r = (1 << spec.LN_RECIP_BITS) // sigma
    z = [_round_shift(v * r, spec.LN_RECIP_BITS - spec.LN_FRAC_BITS) for v in d]
    return [_requant(zc * int(p["g"][c]) + int(p["b"][c]), p["m"][c], p["s"][c], p["bits"]) for c, zc in enumerate(z)]


def _softmax(row, m, s):
    top = max(row)
    e = []
    for v in row:
        u = min(_round_shift(min(top - v, spec.DELTA_MAX) * int(m), int(s)), spec.EXP_U_MAX)
        e.append(int(spec.EXP2_TABLE[u % (1 << spec.EXP_FRAC_BITS)]) >> (u // (1 << spec.EXP_FRAC_BITS)))
    R = (spec.PROB_MAX << spec.PROB_RECIP_BITS) // sum(e)
    return [_round_shift(v * R, spec.PROB_RECIP_BITS) for v in e]


def _lin_out(x, p, bits):
    return [_requant(a, p["m"][o], p["s"][o], bits) for o, a in enumerate(_matvec(p["w"], p["b"], x))]


def _lut_counts(block, q):
    """One token's group popcounts, by the bundle's definition, bit by bit."""
    bits = [1 if q[f] > int(block.thresholds[f, t]) else 0 for f in range(block.d) for t in range(block.T)]
    for layer in block.layers:
        bits = [int(layer.table[j, sum(bits[int(layer.mapping[j, l])] << l for l in range(layer.n))])
                for j in range(layer.out_features)]
    k = block.group_size
    return [sum(bits[j * k:(j + 1) * k]) for j in range(block.d)]


def _block(blk, xs, heads):
    T, d = len(xs), len(xs[0])
    dh = d // heads
    qkv = [_lin_out(_layernorm(x, blk["ln1"]), blk["qkv"], 8) for x in xs]
    ctx = [[0] * d for _ in range(T)]
    for h in range(heads):
        q = [r[h * dh:(h + 1) * dh] for r in qkv]
        k = [r[d + h * dh:d + (h + 1) * dh] for r in qkv]
        v = [r[2 * d + h * dh:2 * d + (h + 1) * dh] for r in qkv]
        for i in range(T):
            p = _softmax([sum(a * b for a, b in zip(q[i], k[j])) for j in range(T)], blk["softmax"]["m"],
                         blk["softmax"]["s"])
            for c in range(dh):
                ctx[i][h * dh + c] = _requant(sum(p[j] * v[j][c] for j in range(T)), blk["ctx"]["m"],
                                              blk["ctx"]["s"], 8)
    pr = blk["proj"]
    xs = [[_sat(x[o] + _round_shift(a * int(pr["m"][o]), int(pr["s"][o])), 16)
           for o, a in enumerate(_matvec(pr["w"], pr["b"], c))] for x, c in zip(xs, ctx)]
    out = []
    for x in xs:
        h = _layernorm(x, blk["ln2"])
        p = blk["mlp"]
        if p["kind"] == "dense":
            f = _lin_out(h, p["fc"], 8)
            g = [int(p["gelu"][v + 128]) for v in f]
            al, acc = p["proj"], _matvec(p["proj"]["w"], p["proj"]["b"], g)
        else:
            al = p["affine"]
            acc = [c * int(al["a"][j]) + int(al["b"][j]) for j, c in enumerate(_lut_counts(p["block"], h))]
        out.append([_sat(x[o] + _round_shift(a * int(al["m"][o]), int(al["s"][o])), 16) for o, a in enumerate(acc)])
    return out


def logits(program, pixels):
    """uint8 pixels (B, C, H, W) (nested sequences or an array) -> list of B lists of int logits."""
    cfg, e = program["config"], program["embed"]
    p = cfg["patch"]
    result = []
    for img in pixels:
        C, H, W = len(img), len(img[0]), len(img[0][0])
        xs = []
        for gy in range(H // p):
            for gx in range(W // p):
                patch = [int(img[c][gy * p + i][gx * p + j]) - 128 for c in range(C) for i in range(p) for j in range(p)]
                n = len(xs)
                acc = _matvec(e["w"], None, patch)
                xs.append([_requant(a + int(e["b"][n][o]), e["m"][o], e["s"][o], 16) for o, a in enumerate(acc)])
        if e["cls"] is not None:
            xs.insert(0, _vec(e["cls"]))
        for blk in program["blocks"]:
            xs = _block(blk, xs, cfg["heads"])
        hs = [_layernorm(x, program["ln_f"]) for x in xs]
        if cfg["pool"] == "cls":
            pooled = hs[0]
        else:
            T = len(hs)
            pooled = [(sum(h[c] for h in hs) + T // 2) // T for c in range(len(hs[0]))]
        result.append(_lin_out(pooled, program["head"], 16))
    return result
