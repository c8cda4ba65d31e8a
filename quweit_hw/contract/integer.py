"""The integer ops of the integer-only ViT, in vectorised int64 numpy: the written-down semantics.

Follows I-ViT (Li and Gu, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", ICCV 2023) in spirit: dyadic requantization, a shift-based softmax (Shiftmax's
base-2 rewrite of exp), a LayerNorm with an integer square root. The algorithms below are
this project's own statement of them; `quweit_hw.model.quant` implements the same ops on torch
int64 tensors and `golden_naive` once more in plain Python integers, and all three agree bit
for bit (tests/test_integer.py, tests/test_golden_model.py).

Conventions, everywhere:
- every op takes and returns int64 arrays; no float is used at inference;
- `>>` is an arithmetic shift (floor division by a power of two, also for negatives);
- rounding is half up (ties toward +inf): round(x / 2**s) = (x + 2**(s-1)) >> s;
- saturation clamps to the signed range of the stated bit width.

Ranges that keep every int64 product exact are stated per op; `dyadic` never returns a
multiplier >= 2**31, so acc * m is exact for |acc| < 2**31.

Imports no torch.
"""

import numpy as np

from ..errors import UserError

MULT_BITS = 31          # dyadic multipliers m lie in [0, 2**31)
MAX_SHIFT = 62          # shifts s lie in [0, 62]
ACC_LIMIT = 1 << 31     # accumulators fed to requantize satisfy |acc| < ACC_LIMIT

# softmax: exp(z) = 2**(z * log2 e); the fractional part of the exponent is looked up in
# EXP2_TABLE with EXP_FRAC_BITS bits, the integer part is a right shift
EXP_FRAC_BITS = 6
EXP_ONE_BITS = 15       # EXP2_TABLE[0] = 2**15 stands for exp(0) = 1
EXP2_TABLE = np.floor(2.0**EXP_ONE_BITS * 2.0 ** (-np.arange(2**EXP_FRAC_BITS) / 2**EXP_FRAC_BITS) + 0.5).astype(np.int64)
EXP_U_MAX = (EXP_ONE_BITS + 1) << EXP_FRAC_BITS  # u >= this: exp underflows to 0 (shift >= 16)
PROB_MAX = 255          # probabilities are unsigned 8-bit, p = round(255 * e / sum e)
PROB_RECIP_BITS = 30    # the one division per row: R = floor(255 * 2**30 / sum e)
DELTA_MAX = (1 << 31) - 1  # (row max - score) saturates here before the multiply

# LayerNorm
LN_FRAC_BITS = 10       # z = (x - mean) / std is carried with 10 fractional bits
LN_RECIP_BITS = 40      # the one division per token: r = floor(2**40 / sigma)
ISQRT_ITERATIONS = 8    # Newton steps from a power-of-two start; exact floor sqrt below 2**62


def signed_limits(bits):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(x, bits):
    """Clamp to the signed `bits`-bit range [-2**(bits-1), 2**(bits-1)-1]."""
    lo, hi = signed_limits(bits)
    return np.clip(np.asarray(x, np.int64), lo, hi)


def rshift_round(x, s):
    """round(x / 2**s), ties toward +inf: (x + 2**(s-1)) >> s for s >= 1, x for s = 0.

    x, s int64 (broadcast); |x| + 2**(s-1) must stay below 2**63."""
    x, s = np.asarray(x, np.int64), np.asarray(s, np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return (x + half) >> s


def requantize(acc, m, s, bits=8):
    """Dyadic requantization: saturate(round_half_up(acc * m / 2**s), bits).

    acc (..., C) int64 with |acc| < 2**31; m, s broadcast against it (per output channel:
    shape (C,)), 0 <= m < 2**31, 0 <= s <= 62. The product acc * m is exact in int64."""
    acc, m = np.asarray(acc, np.int64), np.asarray(m, np.int64)
    return saturate(rshift_round(acc * m, s), bits)


def dyadic(M):
    """(m, s) int64 with m / 2**s the nearest dyadic number to the real multiplier M >= 0.

    m has 31 significant bits (2**30 <= m < 2**31) where that fits the shift range; M below
    2**-32 gets s = 62 and a smaller m (0 for M < 2**-63). Not at inference: export time, float64.
    Raises UserError for M >= 2**31 or a negative or non-finite M (no right shift can express it)."""
    M = np.asarray(M, np.float64)
    if not np.isfinite(M).all() or (M < 0).any():
        raise UserError("a requantization multiplier is negative or not finite")
    if (M >= 2.0**MULT_BITS).any():
        raise UserError(f"a requantization multiplier {float(M.max())!r} is >= 2**31")
    f, e = np.frexp(M)  # M = f * 2**e, f in [0.5, 1)
    s = np.clip(MULT_BITS - e, 0, MAX_SHIFT).astype(np.int64)
    m = np.floor(M * np.exp2(s) + 0.5).astype(np.int64)
    over = m >= (1 << MULT_BITS)  # rounding reached 2**31: one bit less of shift
    m = np.where(over, np.floor(M * np.exp2(s - 1) + 0.5), m).astype(np.int64)
    s = np.where(over, s - 1, s)
    return m, s


def linear(x, w, b=None):
    """x (..., K) int @ w (C, K) int -> (..., C) int64 accumulators, plus bias b (C,) or (..., C)."""
    acc = np.matmul(np.asarray(x, np.int64), np.asarray(w, np.int64).T)
    return acc if b is None else acc + np.asarray(b, np.int64)


def add_aligned(x, acc, m, s, bits=16):
    """Residual add with scale alignment: saturate(x + round_half_up(acc * m / 2**s), bits).

    x is the residual stream at its scale s_x; acc is a branch accumulator at scale s_acc
    (per channel); m / 2**s ~ s_acc / s_x aligns it to the stream before the add. One rounding."""
    return saturate(np.asarray(x, np.int64) + rshift_round(np.asarray(acc, np.int64) * m, s), bits)


def isqrt(n):
    """floor(sqrt(n)) for int64 n in [0, 2**62), exactly, with ISQRT_ITERATIONS Newton steps.

    Start x0 = 2**ceil(bitlen(n)/2) >= sqrt(n); step x <- min(x, (x + n // x) // 2). From
    above, Newton's integer step never goes below floor(sqrt(n)) and decreases until it gets
    there; the min keeps it there (the plain step can oscillate to x + 1 when n + 1 is a
    square). The start is within a factor 2 of sqrt(n), so the error squares each step and
    8 steps reach the floor for every n < 2**62 (tests check against math.isqrt)."""
    n = np.asarray(n, np.int64)
    if n.size and (n.min() < 0 or n.max() >= (1 << 62)):
        raise ValueError("isqrt needs 0 <= n < 2**62")
    x = np.left_shift(np.int64(1), (_bit_length(n) + 1) >> 1)  # 2**ceil(bitlen/2)
    for _ in range(ISQRT_ITERATIONS):
        x = np.minimum(x, (x + n // np.maximum(x, 1)) >> 1)
    return x


def _bit_length(n):
    """Bit length of int64 n >= 0 (0 for 0), by a branch-free binary search over 32, 16, ..., 1."""
    n = np.asarray(n, np.int64).copy()
    length = np.zeros(n.shape, np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = n >= (np.int64(1) << step)
        n = np.where(big, n >> step, n)
        length += np.where(big, step, 0)
    return length + (n > 0)


def layernorm(x, g, b, m, s, bits=8):
    """Integer LayerNorm over the last axis: x (..., C) int -> saturate(requant(z * g + b), bits).

    With S = sum x, d = C*x - S (C times the deviation from the mean, exact), V = sum d**2,
    sigma = max(1, isqrt(V // C)) (C times the standard deviation, floored), r = 2**40 // sigma
    (the one division per token), z = round_half_up(d * r / 2**30) = (x - mean)/std with 10
    fractional bits. Then the affine step gamma * z + beta as acc = z * g + b (g int per channel,
    b int per channel at g's scale times 2**-10) requantized by (m, s) per channel.
    A constant token (V = 0) gives d = 0, z = 0: out = requant(b). |x| <= 2**15 (the int16
    residual stream) and C <= 1024 keep V < 2**62 exact; |d| <= 2 sqrt(C) sigma bounds d * r
    by 2**46 and |z| by 2 sqrt(C) 2**10."""
    x = np.asarray(x, np.int64)
    C = x.shape[-1]
    d = C * x - x.sum(-1, keepdims=True)  # (..., C)
    V = (d * d).sum(-1, keepdims=True)  # (..., 1)
    sigma = np.maximum(isqrt(V // C), 1)
    r = (np.int64(1) << LN_RECIP_BITS) // sigma  # (..., 1)
    z = rshift_round(d * r, LN_RECIP_BITS - LN_FRAC_BITS)  # (..., C)
    return requantize(z * np.asarray(g, np.int64) + np.asarray(b, np.int64), m, s, bits)


def softmax(scores, m, s):
    """Integer softmax over the last axis: int scores (..., T) -> uint8-valued probabilities (..., T).

    Base-2 exponent as in I-ViT's Shiftmax, with a table for the fraction instead of its
    linear fit. (m, s) is the dyadic multiplier of score units * log2(e) * 2**6. Per row:
    delta = min(max(row) - score, 2**31 - 1) >= 0; u = min(round_half_up(delta * m / 2**s), 16 * 64)
    (the exponent, -u / 64, in 1/64 bits); e = EXP2_TABLE[u & 63] >> (u >> 6) with
    EXP2_TABLE[f] = round(2**15 * 2**(-f/64)) (64 entries, 2**15 = 1); Z = sum e >= 2**15 (the
    row max has e = 2**15); R = 255 * 2**30 // Z (the one division per row);
    p = (e * R + 2**29) >> 30, in [0, 255] because e <= Z. The p's scale is 1/255."""
    scores = np.asarray(scores, np.int64)
    delta = np.minimum(scores.max(-1, keepdims=True) - scores, DELTA_MAX)
    u = np.minimum(rshift_round(delta * np.asarray(m, np.int64), s), EXP_U_MAX)
    e = EXP2_TABLE[u & (2**EXP_FRAC_BITS - 1)] >> (u >> EXP_FRAC_BITS)
    Z = e.sum(-1, keepdims=True)
    R = (np.int64(PROB_MAX) << PROB_RECIP_BITS) // Z
    return rshift_round(e * R, PROB_RECIP_BITS)


def lookup(x, table, lo=-128):
    """table[x - lo]: a 256-entry (for int8) activation table such as the dense twin's GELU."""
    return np.asarray(table, np.int64)[np.asarray(x, np.int64) - lo]


def patches(pixels, patch):
    """uint8 pixels (B, C, H, W) -> int8-valued patches (B, N, C*p*p) of p - 128 (zero point 128).

    Patch order is row-major over the (H/p, W/p) grid; within a patch (channel, row, column),
    the order of a Conv2d weight (d, C, p, p) flattened."""
    x = np.asarray(pixels, np.int64) - 128
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // patch) * (W // patch), C * patch * patch)
