"""`eval`: a checkpoint evaluated with its LUT-MLP blocks on a backend, optionally beside torch."""

import tempfile
from pathlib import Path

from .backends import BACKENDS, Agreement, attach, detach, make_backend
from .contract.bundle import Bundle, bundle_id, first_difference
from .contract.bundle_files import load_bundle
from .errors import UserError
from .model.checkpoint import load_checkpoint
from .model.evaluate import evaluate
from .model.blocks import model_blocks
from .model.export import export_checkpoint


def bundle_for(ckpt_path, bundle_path, workdir, model=None):
    """The bundle to evaluate `ckpt_path` with: `bundle_path`, or a fresh export into `workdir`.

    A given bundle must be the checkpoint's: its blocks are compared with the ones the
    checkpoint's model implies (`model_blocks`), and its `bundle_id` with theirs; the first
    difference is a UserError. The manifest's `source_checkpoint` is neither trusted nor needed.
    `model` is the checkpoint's model when the caller has loaded it already.
    """
    if bundle_path is None:
        return load_bundle(export_checkpoint(ckpt_path, Path(workdir) / "bundle"))
    bundle = load_bundle(bundle_path)
    if model is None:
        model, _ = load_checkpoint(ckpt_path)
    expected = Bundle(None, {}, tuple(model_blocks(model)))
    difference = first_difference(bundle.blocks, expected.blocks, ("bundle", "checkpoint"))
    if difference is None and bundle_id(bundle) != bundle_id(expected):
        difference = f"bundle id {bundle_id(bundle)[:12]} != {bundle_id(expected)[:12]}"
    if difference is not None:
        raise UserError(f"bundle {str(bundle_path)!r} was not exported from {str(ckpt_path)!r}: {difference}")
    return bundle


def evaluate_with_backend(ckpt_path, backend_name="golden", *, bundle_path=None, split="test", limit=None,
                          compare=False, port=None, sim=None, batch_size=256, progress=True):
    """Evaluate a checkpoint with its MLP blocks on `backend_name`.

    Returns {"metrics": ..., "agreement": Agreement or None, "torch_metrics": ... (compare only),
    "same_predictions": bool (compare only)}.
    """
    if backend_name not in BACKENDS:
        raise UserError(f"unknown MLP backend {backend_name!r}; expected one of {BACKENDS}")
    model, ckpt = load_checkpoint(ckpt_path)
    result = {"agreement": None}
    if backend_name == "torch":
        result["metrics"] = evaluate(model, ckpt, split, batch_size, limit, progress)
        return result
    if not model.lut_mlps():
        raise UserError(f"{str(ckpt_path)!r} is a dense-only checkpoint: --mlp-backend {backend_name} needs LUT-MLP blocks")
    with tempfile.TemporaryDirectory(prefix="quweit-eval-") as workdir:
        backend = make_backend(backend_name, bundle_for(ckpt_path, bundle_path, workdir, model), port=port, sim=sim)
        try:
            agreement = Agreement(len(model.lut_mlps())) if compare else None
            attach(model, backend, agreement=agreement)
            result["metrics"] = evaluate(model, ckpt, split, batch_size, limit, progress)
            result["agreement"] = agreement
        finally:
            detach(model)
            backend.close()
    if compare:
        result["torch_metrics"] = evaluate(model, ckpt, split, batch_size, limit, progress)
        result["same_predictions"] = bool(
            (result["metrics"]["predictions"] == result["torch_metrics"]["predictions"]).all())
    return result


def summary_line(metrics):
    if "bits_per_char" in metrics:
        return f"loss {metrics['loss']:.4f}, {metrics['bits_per_char']:.4f} bits/char, next-char accuracy {metrics['accuracy']:.4f}"
    return f"accuracy {metrics['accuracy'] * 100:.2f} % ({round(metrics['accuracy'] * metrics['n'])}/{metrics['n']}), loss {metrics['loss']:.4f}"
