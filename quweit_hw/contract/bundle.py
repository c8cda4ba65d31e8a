"""The bundle's types: a checkpoint's LUT-MLP blocks as integer arrays (docs/bundle-format.md).

Everything after export (golden model, gateware, board) reads only these. numpy only.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMAT = "quweit-bundle"
FORMAT_VERSION = 1
MAX_FAN_IN = 16


def signed_range(bits):
    """(lo, hi): the range of a signed two's-complement `bits`-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer of n-input LUTs: output j is table[j, sum_l x[mapping[j, l]] << l]."""

    mapping: np.ndarray  # (out, n) int32; column 0 is the address LSB
    table: np.ndarray  # (out, 2**n) uint8 0/1
    in_features: int

    def __post_init__(self):
        m, t = self.mapping, self.table
        if m.ndim != 2 or t.ndim != 2:
            raise ValueError(f"mapping and table must be 2-D, got shapes {m.shape} and {t.shape}")
        n = m.shape[1]
        if not 1 <= n <= MAX_FAN_IN:
            raise ValueError(f"LUT fan-in n must be in 1..{MAX_FAN_IN}, got {n}")
        if t.shape != (m.shape[0], 2**n):
            raise ValueError(f"table shape {t.shape} does not match mapping {m.shape}: expected {(m.shape[0], 2**n)}")
        if m.size and (m.min() < 0 or m.max() >= self.in_features):
            raise ValueError(f"mapping indices must be in [0, {self.in_features}), got [{m.min()}, {m.max()}]")
        if t.size and not np.isin(t, (0, 1)).all():
            raise ValueError("table entries must be 0 or 1")

    @property
    def n(self):
        return self.mapping.shape[1]

    @property
    def out_features(self):
        return self.mapping.shape[0]


@dataclass(frozen=True, eq=False)
class Block:
    """One LUT-MLP block: b-bit signed token in, d group popcounts out."""

    name: str
    d: int
    bits: int
    thresholds: np.ndarray  # (d, T) int32, nondecreasing per row; bit(f, t) = q_f > thresholds[f, t]
    layers: tuple
    group_size: int
    input_scale: float = 1.0
    affine_a: np.ndarray = field(default=None)  # (d,) float32, applied by the model, not the hardware
    affine_b: np.ndarray = field(default=None)

    def __post_init__(self):
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")
        th = self.thresholds
        if th.ndim != 2 or th.shape[0] != self.d or th.shape[1] < 1:
            raise ValueError(f"thresholds must have shape ({self.d}, T), got {th.shape}")
        lo, hi = signed_range(self.bits)
        lo -= 1  # a threshold one below the range: a constant-1 thermometer bit
        if th.min() < lo or th.max() > hi:
            raise ValueError(f"thresholds must be in [{lo}, {hi}] for {self.bits}-bit input, got [{th.min()}, {th.max()}]")
        if (np.diff(th, axis=1) < 0).any():
            raise ValueError("thresholds must be nondecreasing along each feature")
        if not self.layers:
            raise ValueError("a block needs at least one LUT layer")
        width = self.d * self.T
        for i, layer in enumerate(self.layers):
            if layer.in_features != width:
                raise ValueError(f"layer {i} reads {layer.in_features} bits but the previous stage has {width}")
            width = layer.out_features
        if self.group_size < 1 or width != self.d * self.group_size:
            raise ValueError(f"last layer has {width} LUTs, expected d*group_size = {self.d}*{self.group_size}")
        for name in ("affine_a", "affine_b"):
            v = getattr(self, name)
            object.__setattr__(self, name, np.ones(self.d, np.float32) if v is None and name == "affine_a"
                               else np.zeros(self.d, np.float32) if v is None else np.asarray(v, np.float32))
            if getattr(self, name).shape != (self.d,):
                raise ValueError(f"{name} must have shape ({self.d},), got {getattr(self, name).shape}")

    @property
    def T(self):
        return self.thresholds.shape[1]

    @property
    def count_width(self):
        return self.group_size.bit_length()

    @property
    def lut_nodes(self):
        return sum(layer.out_features for layer in self.layers)

    def used_thresholds(self):
        """(d, T) bool: the thermometer bits some layer-0 LUT reads (the comparators hardware keeps)."""
        used = np.zeros(self.d * self.T, bool)
        used[self.layers[0].mapping.ravel()] = True
        return used.reshape(self.d, self.T)


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    manifest: dict
    blocks: tuple

    def block(self, index):
        if not isinstance(index, int) or not 0 <= index < len(self.blocks):
            raise UserError(f"block index {index!r} out of range: bundle {self.path} has {len(self.blocks)} block(s)")
        return self.blocks[index]


def table_bytes(n):
    """Bytes per row of a packed table of n-input LUTs: ceil(2**n / 8)."""
    return (2**n + 7) // 8


def pack_table(table):
    # bit k of a LUT's table is byte k // 8, bit k % 8 (little-endian bit order)
    return np.packbits(table.astype(np.uint8), axis=1, bitorder="little")


def unpack_table(packed, n):
    return np.unpackbits(packed, axis=1, bitorder="little", count=2**n)


def block_arrays(block):
    """The arrays of one block under their bundle file stems."""
    arrays = {"thresholds": block.thresholds.astype(np.int32)}
    for i, layer in enumerate(block.layers):
        arrays[f"layer{i}_mapping"] = layer.mapping.astype(np.int32)
        arrays[f"layer{i}_table"] = pack_table(layer.table)
    arrays["affine_a"] = block.affine_a.astype(np.float32)
    arrays["affine_b"] = block.affine_b.astype(np.float32)
    return arrays


def bundle_id(bundle):
    """The bundle's identity: sha256 (hex) of what the hardware computes, and nothing else.

    Hashed: the format version and, per block in order, d, bits, T, group size, the
    thresholds and every layer's fan-in, mapping and table, as little-endian integers.
    Not hashed: names, paths, timestamps, the source checkpoint, the affine step (the
    consumer of the counts applies it). Two bundles with equal ids give the same counts
    for every input; the board carries the first 32 bits (`board_id`).
    """
    h = hashlib.sha256(f"{FORMAT} {FORMAT_VERSION}".encode())
    for block in bundle.blocks:
        h.update(np.array([block.d, block.bits, block.T, block.group_size, len(block.layers)], "<i8").tobytes())
        h.update(np.ascontiguousarray(block.thresholds, "<i8").tobytes())
        for layer in block.layers:
            h.update(np.array([layer.n, layer.out_features], "<i8").tobytes())
            h.update(np.ascontiguousarray(layer.mapping, "<i8").tobytes())
            h.update(np.ascontiguousarray(layer.table, "u1").tobytes())
    return h.hexdigest()


def first_difference(blocks, others, labels=("first", "second")):
    """None when two block sequences are equal in every field and array a bundle stores (but the
    names), else where the first difference is, one line: e.g. "block 0 ('blocks.0.mlp') layer1_table
    differs at [5, 17] (bundle 1, checkpoint 0)". `labels` name the two sides.

    What the hardware computes (what `bundle_id` hashes) is compared first, in every block; then
    what it does not: the input scale the model quantizes with and the affine step.
    """
    one, two = labels
    if len(blocks) != len(others):
        return f"{len(blocks)} block(s) ({one}) against {len(others)} ({two})"

    def arrays_differ(at, name, x, y):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return f"{at} {name} has shape {x.shape} ({one}) against {y.shape} ({two})"
        differ = np.argwhere(~((x == y) | (np.isnan(x) & np.isnan(y))) if x.dtype.kind == "f" else x != y)
        if differ.size:
            where = tuple(int(v) for v in differ[0])
            return f"{at} {name} differs at {list(where)} ({one} {x[where]}, {two} {y[where]})"
        return None

    pairs = [(f"block {i} ({a.name!r})", a, b) for i, (a, b) in enumerate(zip(blocks, others))]
    for at, a, b in pairs:
        for name in ("d", "bits", "T", "group_size"):
            if getattr(a, name) != getattr(b, name):
                return f"{at} {name} differs ({one} {getattr(a, name)}, {two} {getattr(b, name)})"
        if len(a.layers) != len(b.layers):
            return f"{at} has {len(a.layers)} layer(s) ({one}) against {len(b.layers)} ({two})"
        arrays = [("thresholds", a.thresholds, b.thresholds)]
        for li, (la, lb) in enumerate(zip(a.layers, b.layers)):
            arrays += [(f"layer{li}_mapping", la.mapping, lb.mapping), (f"layer{li}_table", la.table, lb.table)]
        for name, x, y in arrays:
            if (difference := arrays_differ(at, name, x, y)) is not None:
                return difference
    for at, a, b in pairs:
        if a.input_scale != b.input_scale:
            return f"{at} input_scale differs ({one} {a.input_scale!r}, {two} {b.input_scale!r})"
        for name in ("affine_a", "affine_b"):
            if (difference := arrays_differ(at, name, getattr(a, name), getattr(b, name))) is not None:
                return difference
    return None


def board_id(bundle):
    """The 32-bit id a board top carries for `bundle` (the first 4 bytes of `bundle_id`, little-endian)."""
    return int.from_bytes(bytes.fromhex(bundle_id(bundle))[:4], "little")
