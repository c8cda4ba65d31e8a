"""The bundle on disk: `write_bundle` and `load_bundle`, the reader every command goes through."""

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..resources import REFERENCE
from .bundle import FORMAT, FORMAT_VERSION, Block, Bundle, Layer, block_arrays, unpack_table
from .folders import atomic_folder


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _not_bundle_file(name):
    # what a bundle folder may hold besides the bundle: its checkpoint, a README
    return name != "manifest.json" and not (name.startswith("block") and name[5:].isdigit())


def write_bundle(path, blocks, manifest=None, *, force=False):
    """Write blocks and a manifest to folder `path`, atomically (see `atomic_folder`).

    With force=True an existing bundle is replaced; other files in its folder (a checkpoint,
    a README) are kept.
    """
    if not blocks:
        raise UserError("nothing to export: no LUT-MLP blocks")
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
        raise UserError(f"bundle {root}: block {entry.get('name')!r} lists no file {stem!r}")
    file = root / info["path"]
    if not file.is_file():
        raise UserError(f"bundle {root}: missing file {info['path']!r}")
    digest = _sha256(file)
    if digest != info["sha256"]:
        raise UserError(f"bundle {root}: {info['path']!r} is corrupt (sha256 {digest[:12]} != manifest {info['sha256'][:12]})")
    array = np.load(file, allow_pickle=False)
    if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
        raise UserError(f"bundle {root}: {info['path']!r} has {array.dtype}{list(array.shape)}, manifest says {info['dtype']}{info['shape']}")
    return array


def load_bundle(path=REFERENCE):
    """Read and verify a bundle: format, version and the sha256 of every array file. UserError on any problem."""
    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise UserError(f"{str(root)!r} is not a bundle: no manifest.json")
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"bundle {root}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{str(root)!r} is not a quweit bundle (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") == 2:  # the whole integer model; its LUT blocks as in version 1
        from .model_bundle import load_model_bundle

        _, manifest, blocks = load_model_bundle(root)
        return Bundle(root, manifest, tuple(blocks))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"bundle {root} has format version {manifest.get('format_version')!r}; this quweit-hw reads version {FORMAT_VERSION}")
    blocks = []
    try:
        for entry in manifest["blocks"]:
            layers, width = [], entry["d"] * entry["thresholds_per_feature"]
            for i, spec in enumerate(entry["layers"]):
                mapping = _load_array(root, entry, f"layer{i}_mapping")
                table = unpack_table(_load_array(root, entry, f"layer{i}_table"), spec["n"])
                layers.append(Layer(mapping, table, width))
                width = layers[-1].out_features
            blocks.append(Block(
                name=entry["name"], d=entry["d"], bits=entry["bits"],
                thresholds=_load_array(root, entry, "thresholds"), layers=tuple(layers),
                group_size=entry["group_size"], input_scale=entry["input_scale"],
                affine_a=_load_array(root, entry, "affine_a"), affine_b=_load_array(root, entry, "affine_b"),
            ))
    except (KeyError, TypeError) as e:
        raise UserError(f"bundle {root}: manifest is missing or has a malformed field {e}") from None
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"bundle {root}: {e}") from None
    return Bundle(root, manifest, tuple(blocks))


