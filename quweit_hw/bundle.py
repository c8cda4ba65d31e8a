"""The bundle: a checkpoint's LUT-MLP blocks as versioned integer arrays (docs/bundle-format.md).

Everything after export (golden model, HDL, board) reads only this. numpy only.
"""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import QuweitError

FORMAT = "quweit-bundle"
FORMAT_VERSION = 1
MAX_FAN_IN = 16
REFERENCE = Path(__file__).resolve().parent.parent / "export" / "reference"


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
        lo, hi = -(2 ** (self.bits - 1)) - 1, 2 ** (self.bits - 1) - 1
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
            raise QuweitError(f"block index {index!r} out of range: bundle {self.path} has {len(self.blocks)} block(s)")
        return self.blocks[index]


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pack_table(table):
    # bit k of a LUT's table is byte k // 8, bit k % 8 (little-endian bit order)
    return np.packbits(table.astype(np.uint8), axis=1, bitorder="little")


def _unpack_table(packed, n):
    return np.unpackbits(packed, axis=1, bitorder="little", count=2**n)


def block_arrays(block):
    """The arrays of one block under their bundle file stems."""
    arrays = {"thresholds": block.thresholds.astype(np.int32)}
    for i, layer in enumerate(block.layers):
        arrays[f"layer{i}_mapping"] = layer.mapping.astype(np.int32)
        arrays[f"layer{i}_table"] = _pack_table(layer.table)
    arrays["affine_a"] = block.affine_a.astype(np.float32)
    arrays["affine_b"] = block.affine_b.astype(np.float32)
    return arrays


@contextmanager
def atomic_folder(path, *, force=False, keep=()):
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename.

    An existing `path` is an error unless force=True; then the entries of the old folder named
    in `keep` (a predicate on names) move into the new one. On any error nothing is left behind.
    """
    path = Path(path)
    if path.exists() and not force:
        raise QuweitError(f"output folder {str(path)!r} exists (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            for entry in path.iterdir():
                if keep and keep(entry.name) and not (tmp / entry.name).exists():
                    shutil.copy2(entry, tmp / entry.name) if entry.is_file() else shutil.copytree(entry, tmp / entry.name)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _not_bundle_file(name):
    # what a bundle folder may hold besides the bundle: its checkpoint, a README
    return name != "manifest.json" and not (name.startswith("block") and name[5:].isdigit())


def write_bundle(path, blocks, manifest=None, *, force=False):
    """Write blocks and a manifest to folder `path`, atomically (see `atomic_folder`).

    With force=True an existing bundle is replaced; other files in its folder (a checkpoint,
    a README) are kept.
    """
    if not blocks:
        raise QuweitError("nothing to export: no LUT-MLP blocks")
    with atomic_folder(path, force=force, keep=_not_bundle_file) as tmp:
        entries = []
        for bi, block in enumerate(blocks):
            files = {}
            (tmp / f"block{bi}").mkdir()
            for stem, array in block_arrays(block).items():
                rel = f"block{bi}/{stem}.npy"
                np.save(tmp / rel, array, allow_pickle=False)
                files[stem] = {"path": rel, "sha256": _sha256(tmp / rel), "dtype": str(array.dtype), "shape": list(array.shape)}
            entries.append({
                "name": block.name, "d": block.d, "bits": block.bits, "thresholds_per_feature": block.T,
                "group_size": block.group_size, "count_width": block.count_width,
                "input_scale": float(block.input_scale),
                "layers": [{"in_features": l.in_features, "out_features": l.out_features, "n": l.n} for l in block.layers],
                "lut_nodes": block.lut_nodes, "comparators": int(block.used_thresholds().sum()),
                "files": files,
            })
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **(manifest or {}), "blocks": entries}
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path)


def _load_array(root, entry, stem):
    info = entry["files"].get(stem)
    if info is None:
        raise QuweitError(f"bundle {root}: block {entry.get('name')!r} lists no file {stem!r}")
    file = root / info["path"]
    if not file.is_file():
        raise QuweitError(f"bundle {root}: missing file {info['path']!r}")
    digest = _sha256(file)
    if digest != info["sha256"]:
        raise QuweitError(f"bundle {root}: {info['path']!r} is corrupt (sha256 {digest[:12]} != manifest {info['sha256'][:12]})")
    array = np.load(file, allow_pickle=False)
    if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
        raise QuweitError(f"bundle {root}: {info['path']!r} has {array.dtype}{list(array.shape)}, manifest says {info['dtype']}{info['shape']}")
    return array


def load_bundle(path=REFERENCE):
    """Read and verify a bundle: format, version and the sha256 of every array file. QuweitError on any problem."""
    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise QuweitError(f"{str(root)!r} is not a bundle: no manifest.json")
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuweitError(f"bundle {root}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise QuweitError(f"{str(root)!r} is not a quweit bundle (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise QuweitError(f"bundle {root} has format version {manifest.get('format_version')!r}; this quweit-hw reads version {FORMAT_VERSION}")
    blocks = []
    try:
        for entry in manifest["blocks"]:
            layers, width = [], entry["d"] * entry["thresholds_per_feature"]
            for i, spec in enumerate(entry["layers"]):
                mapping = _load_array(root, entry, f"layer{i}_mapping")
                table = _unpack_table(_load_array(root, entry, f"layer{i}_table"), spec["n"])
                layers.append(Layer(mapping, table, width))
                width = layers[-1].out_features
            blocks.append(Block(
                name=entry["name"], d=entry["d"], bits=entry["bits"],
                thresholds=_load_array(root, entry, "thresholds"), layers=tuple(layers),
                group_size=entry["group_size"], input_scale=entry["input_scale"],
                affine_a=_load_array(root, entry, "affine_a"), affine_b=_load_array(root, entry, "affine_b"),
            ))
    except (KeyError, TypeError) as e:
        raise QuweitError(f"bundle {root}: manifest is missing or has a malformed field {e}") from None
    except ValueError as e:
        if isinstance(e, QuweitError):
            raise
        raise QuweitError(f"bundle {root}: {e}") from None
    return Bundle(root, manifest, tuple(blocks))


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
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    th = np.sort(rng.integers(lo - 1, hi + 1, size=(d, thresholds)), axis=1).astype(np.int32)
    layers, width = [], d * thresholds
    for out in (*hidden, d * group_size):
        mapping = local_mapping(width, out, n, window, rng)
        layers.append(Layer(mapping, rng.integers(0, 2, size=(out, 2**n), dtype=np.uint8), width))
        width = out
    return Block(name=name, d=d, bits=bits, thresholds=th, layers=tuple(layers), group_size=group_size,
                 affine_a=rng.standard_normal(d).astype(np.float32), affine_b=rng.standard_normal(d).astype(np.float32))
