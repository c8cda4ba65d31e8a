"""Export: a checkpoint's LUT-MLP blocks to a bundle (docs/bundle-format.md)."""

from pathlib import Path

from ..errors import UserError
from ..contract.bundle_files import write_bundle
from ..contract.folders import check_output_folder
from ..resources import REFERENCE_CHECKPOINT
from .blocks import model_blocks
from .checkpoint import load_checkpoint, source_manifest
from .export_integer import write_integer_bundle


def export_checkpoint(ckpt_path=REFERENCE_CHECKPOINT, out_dir=None, *, force=False):
    """Write the bundle of checkpoint `ckpt_path` to `out_dir` (atomically); returns its path."""
    ckpt_path = Path(ckpt_path)
    out_dir = Path(out_dir) if out_dir is not None else Path("export") / ckpt_path.resolve().parent.name
    check_output_folder(out_dir, force)  # fail before the slow part, and write nothing
    model, ckpt = load_checkpoint(ckpt_path)
    if getattr(model.config, "integer", False):  # the whole integer model: bundle format version 2
        return write_integer_bundle(model, ckpt, ckpt_path, out_dir, force=force)
    blocks = model_blocks(model)
    if not blocks:
        raise UserError(f"{str(ckpt_path)!r} is a dense-only checkpoint: no LUT-MLP block to export")
    manifest = source_manifest(ckpt, ckpt_path)
    return write_bundle(out_dir, blocks, manifest, force=force)
