"""`eval BUNDLE --backend golden`: a version 2 (whole integer model) bundle on Fashion-MNIST pixels,
by the golden model, optionally beside torch's integer eval of its source checkpoint."""

import numpy as np

from .contract import golden_model
from .contract.fashion_mnist import fashion_mnist_pixels
from .contract.model_bundle import load_model_bundle
from .errors import UserError

WHOLE_MODEL_BACKENDS = ("golden",)


def torch_integer_logits(manifest, pixels, batch_size=500):
    """The source checkpoint's integer eval (torch int64) on `pixels`; the checkpoint's hash must match."""
    import torch

    from .model.checkpoint import load_checkpoint
    from .contract.bundle_files import file_sha256

    source = manifest.get("source_checkpoint", {})
    path = source.get("path")
    if not path:
        raise UserError("--compare: the bundle names no source checkpoint")
    if file_sha256(path) != source.get("sha256"):
        raise UserError(f"--compare: {path!r} is not the checkpoint the bundle was exported from (hash differs)")
    model, _ = load_checkpoint(path)
    pix = torch.from_numpy(np.array(pixels))  # a writable copy
    with torch.no_grad():
        return torch.cat([model(pix[i:i + batch_size]) for i in range(0, len(pix), batch_size)]).numpy()


def evaluate_model_bundle(bundle_path, backend="golden", *, split="test", limit=None, compare=False):
    """{"accuracy", "n", "predictions", "logits"} and with compare: "differing_logits",
    "differing_predictions", "torch_accuracy"."""
    if backend not in WHOLE_MODEL_BACKENDS:
        raise UserError(f"unknown whole-model backend {backend!r}; expected one of {WHOLE_MODEL_BACKENDS}")
    program, manifest, _ = load_model_bundle(bundle_path)
    if manifest.get("model", {}).get("task") != "fashion-mnist":
        raise UserError(f"bundle {bundle_path}: whole-model evaluation supports the fashion-mnist ViT only")
    pixels, labels = fashion_mnist_pixels(split, limit=limit)
    logits = golden_model.logits(program, pixels)
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == labels).mean()), "n": len(labels), "predictions": pred, "logits": logits}
    if compare:
        theirs = torch_integer_logits(manifest, pixels)
        out["differing_logits"] = int((theirs != logits).sum())
        out["differing_predictions"] = int((theirs.argmax(-1) != pred).sum())
        out["torch_accuracy"] = float((theirs.argmax(-1) == labels).mean())
    return out
