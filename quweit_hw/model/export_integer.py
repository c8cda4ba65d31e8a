"""Export of an integer-only model: its whole integer program to a version 2 bundle."""

from pathlib import Path

from .. import __version__
from ..contract.bundle_files import file_sha256
from ..contract.model_bundle import write_model_bundle
from ..errors import UserError
from .integer_program import integer_program


def write_integer_bundle(model, ckpt: dict, ckpt_path, out_dir, *, force=False):
    """Write `model` (an IntegerViT loaded from `ckpt_path`) as a version 2 bundle; returns its path."""

    if not model.calibrated():
        raise UserError(f"{str(ckpt_path)!r}: the integer model's scales are not calibrated (train it first)")
    metrics = ckpt.get("metrics") or []
    manifest = {
        "model": {"arch": ckpt["arch"], "task": ckpt["task"], "config": ckpt["config"]},
        "source_checkpoint": {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path)},
        "metrics": metrics[-1] if isinstance(metrics, list) and metrics else metrics,
        "exporter": f"quweit-hw {__version__}",
    }
    return write_model_bundle(Path(out_dir), integer_program(model), manifest, force=force)
