"""Export of an integer-only model: its whole integer program to a version 2 bundle."""

from pathlib import Path

from ..contract.model_bundle import write_model_bundle
from ..errors import UserError
from .checkpoint import source_manifest
from .integer_program import integer_program


def write_integer_bundle(model, ckpt: dict, ckpt_path, out_dir, *, force=False):
    """Write `model` (an IntegerViT loaded from `ckpt_path`) as a version 2 bundle; returns its path."""

    if not model.calibrated():
        raise UserError(f"{str(ckpt_path)!r}: the integer model's scales are not calibrated (train it first)")
    manifest = source_manifest(ckpt, ckpt_path)
    return write_model_bundle(Path(out_dir), integer_program(model), manifest, force=force)
