"""The bundle on disk: `write_bundle` and `load_bundle`, the reader every command goes through
(its checks are `bundle_check.check_bundle`)."""

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..resources import REFERENCE
from .bundle import FORMAT, FORMAT_VERSION, Bundle, block_arrays
from .bundle_check import check_bundle
from .folders import atomic_folder


def file_sha256(path):
    """sha256 (hex) of a file, read in 1 MiB chunks (checkpoints may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def not_bundle_file(name):
    """True for a name a bundle folder may hold besides the bundle (its checkpoint, a README)."""
    # what a bundle folder may hold besides the bundle: its checkpoint, a README
    return name != "manifest.json" and not (name.startswith("block") and name[5:].isdigit())


def write_bundle(path, blocks, manifest=None, *, force=False):
    """Write blocks and a manifest to folder `path`, atomically (see `atomic_folder`).

    With force=True an existing bundle is replaced; other files in its folder (a checkpoint,
    a README) are kept.
    """
    if not blocks:
        raise UserError("nothing to export: no LUT-MLP blocks")
    with atomic_folder(path, force=force, keep=not_bundle_file) as tmp:
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


def load_bundle(path=REFERENCE):
    """Read a bundle, every manifest field and array checked against the format
    (`bundle_check.check_bundle`, docs/bundle-format.md "What a reader checks"). A version 2
    bundle (the whole integer model) is read by `model_bundle`, and its LUT blocks returned as
    version 1's. UserError on any problem."""
    if format_version(path) == 2:
        from .model_bundle import load_model_bundle

        _, manifest, blocks = load_model_bundle(Path(path))
        return Bundle(Path(path), manifest, tuple(blocks))
    manifest, blocks = check_bundle(path)
    return Bundle(Path(path), manifest, blocks)


def format_version(path):
    """The manifest's format_version, or None when it cannot be read (check_bundle says why)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("format_version") if isinstance(manifest, dict) else None
