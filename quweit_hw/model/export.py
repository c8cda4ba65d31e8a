"""Export: a checkpoint's LUT-MLP blocks to a bundle (docs/bundle-format.md)."""

import hashlib
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..contract.bundle import Block, Layer
from ..contract.bundle_files import write_bundle
from ..resources import REFERENCE_CHECKPOINT
from .checkpoint import load_checkpoint


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def block_from_lut_mlp(name, mlp):
    """The bundle Block of one trained LUTMLP, from its `export_arrays()`."""
    arrays = mlp.export_arrays()
    layers, width = [], int(np.asarray(arrays["thresholds"]).size)
    for spec in arrays["layers"]:
        layers.append(Layer(np.asarray(spec["mapping"], np.int32), np.asarray(spec["table"], np.uint8), width))
        width = layers[-1].out_features
    thresholds = np.asarray(arrays["thresholds"], np.int32)
    return Block(name=name, d=thresholds.shape[0], bits=int(arrays["bits"]), thresholds=thresholds,
                 layers=tuple(layers), group_size=int(arrays["group_size"]),
                 input_scale=float(arrays["input_scale"]),
                 affine_a=np.asarray(arrays["affine_a"], np.float32), affine_b=np.asarray(arrays["affine_b"], np.float32))


def model_blocks(model):
    """Every LUT-MLP block of a model as a bundle Block, in block order."""
    return [block_from_lut_mlp(name, mlp) for name, mlp in model.lut_mlps()]


def export_checkpoint(ckpt_path=REFERENCE_CHECKPOINT, out_dir=None, *, force=False):
    """Write the bundle of checkpoint `ckpt_path` to `out_dir` (atomically); returns its path."""
    ckpt_path = Path(ckpt_path)
    out_dir = Path(out_dir) if out_dir is not None else Path("export") / ckpt_path.parent.name
    if out_dir.exists() and not force:  # fail before the slow part, and write nothing
        raise UserError(f"output folder {str(out_dir)!r} exists (use --force to replace it)")
    model, ckpt = load_checkpoint(ckpt_path)
    if getattr(model.config, "integer", False):  # the whole integer model: bundle format version 2
        from .export_integer import write_integer_bundle

        return write_integer_bundle(model, ckpt, ckpt_path, out_dir, force=force)
    blocks = model_blocks(model)
    if not blocks:
        raise UserError(f"{str(ckpt_path)!r} is a dense-only checkpoint: no LUT-MLP block to export")
    metrics = ckpt.get("metrics") or []
    manifest = {
        "model": {"arch": ckpt["arch"], "task": ckpt["task"], "config": ckpt["config"]},
        "source_checkpoint": {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path)},
        "metrics": metrics[-1] if isinstance(metrics, list) and metrics else metrics,
        "exporter": f"quweit-hw {__version__}",
    }
    return write_bundle(out_dir, blocks, manifest, force=force)
