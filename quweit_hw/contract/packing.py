"""How tokens and counts lie on an engine's ports (docs/bundle-format.md, "Engine ports"):
feature f of a token at bits [f*b, (f+1)*b) of `i.payload`, two's complement; count j at
bits [j*w, (j+1)*w) of `o.payload`. The one home of these layouts, for every simulator
harness and testbench: as Python integers (`token_word`, `count_fields`) and as 32-bit
word arrays (`pack_tokens`, `unpack_counts`)."""

import math

import numpy as np


def token_word(row, bits):
    """One token (d signed ints) as the integer on `i.payload`."""
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (f * bits) for f, v in enumerate(row))


def count_fields(word, d, width):
    """The integer on `o.payload` as its d counts."""
    mask = (1 << width) - 1
    return tuple((int(word) >> (j * width)) & mask for j in range(d))


def words32(value_bits):
    """32-bit words that hold a `value_bits`-bit port."""
    return max(1, math.ceil(value_bits / 32))


def pack_tokens(q, bits):
    """(N, d) signed tokens -> (N, words) uint32, feature f at bits [f*bits, (f+1)*bits) of the port."""
    q = np.asarray(q, np.int64)
    n, d = q.shape
    width = d * bits
    out = np.zeros((n, words32(width)), np.uint64)
    field = (q & ((1 << bits) - 1)).astype(np.uint64)
    for f in range(d):
        lo = f * bits
        for w in range(lo // 32, (lo + bits - 1) // 32 + 1):
            shift = lo - 32 * w
            part = (field << np.uint64(shift)) if shift >= 0 else (field >> np.uint64(-shift))
            out[:, w] |= part[:, f] & np.uint64(0xFFFFFFFF)
    return out.astype(np.uint32)


def unpack_counts(words, d, width):
    """(N, words) uint32 output words -> (N, d) int64 counts of `width` bits each."""
    words = np.asarray(words, np.uint64)
    out = np.zeros((len(words), d), np.int64)
    mask = (1 << width) - 1
    for j in range(d):
        lo = j * width
        value = np.zeros(len(words), np.uint64)
        for w in range(lo // 32, (lo + width - 1) // 32 + 1):
            shift = lo - 32 * w
            part = words[:, w]
            value |= (part >> np.uint64(shift)) if shift >= 0 else (part << np.uint64(-shift))
        out[:, j] = (value & np.uint64(mask)).astype(np.int64)
    return out
