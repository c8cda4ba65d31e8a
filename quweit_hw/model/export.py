"""Export: a checkpoint to a bundle (docs/bundle-format.md): the whole integer model (version 2) or its LUT-MLP blocks (1)."""

from pathlib import Path

from ..errors import UserError
from ..contract.bundle_files import write_bundle
from ..contract.folders import check_output_folder
from ..contract.model_bundle import FORMAT_VERSIONS
from ..resources import REFERENCE_CHECKPOINT
from .blocks import model_blocks
from .checkpoint import load_checkpoint, source_manifest
from .export_integer import write_integer_bundle


def export_checkpoint(ckpt_path=REFERENCE_CHECKPOINT, out_dir=None, *, force=False, format_version=None):
    """Write the bundle of checkpoint `ckpt_path` to `out_dir` (atomically); returns its path.

    format_version 2: the whole integer model (an integer checkpoint only); 1: the LUT-MLP
    blocks only (any checkpoint with some); None: 2 for an integer checkpoint, else 1."""
    if format_version not in (None, *FORMAT_VERSIONS):
        raise UserError(f"bundle format version must be one of {FORMAT_VERSIONS}, not {format_version!r}")
    ckpt_path = Path(ckpt_path)
    out_dir = Path(out_dir) if out_dir is not None else Path("export") / ckpt_path.resolve().parent.name
    check_output_folder(out_dir, force)  # fail before the slow part, and write nothing
    model, ckpt = load_checkpoint(ckpt_path)
    integer = getattr(model.config, "integer", False)
    if format_version == 2 and not integer:
        raise UserError(f"{str(ckpt_path)!r} is a float model: a version 2 bundle (the whole integer model) "
                        "needs an integer checkpoint (train --integer, or --init-from this one)")
    if integer and format_version != 1:
        return write_integer_bundle(model, ckpt, ckpt_path, out_dir, force=force)
    blocks = model_blocks(model)
    if not blocks:
        raise UserError(f"{str(ckpt_path)!r} is a dense-only checkpoint: no LUT-MLP block to export")
    manifest = source_manifest(ckpt, ckpt_path)
    return write_bundle(out_dir, blocks, manifest, force=force)
