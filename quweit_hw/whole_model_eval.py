"""`eval BUNDLE --backend golden|rtl`: a version 2 (whole integer model) bundle on Fashion-MNIST
pixels, by the golden model or by the whole-model engine's Verilog under Verilator (checked
against the golden model), optionally beside torch's integer eval of its source checkpoint."""

import numpy as np

from .contract import golden_model
from .contract.fashion_mnist import fashion_mnist_pixels
from .contract.model_bundle import load_model_bundle
from .errors import UserError

WHOLE_MODEL_BACKENDS = ("golden", "rtl")


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


def backpressure_permille(backpressure):
    """The harness's per-mille chance that a clock offers a pixel (and raises o.ready) when a
    fraction `backpressure` in [0, 1) of the clocks gap i.valid (and drop o.ready)."""
    if not 0 <= backpressure < 1:
        raise UserError(f"--backpressure must lie in [0, 1), got {backpressure!r}")
    return max(1, 1000 - round(1000 * backpressure))


def rtl_logits(bundle_path, pixels, lanes=32, *, backpressure=0.0, seed=1):
    """(logits, labels, cycles, info) of the whole-model engine's Verilog under Verilator; with
    `backpressure` that fraction of the clocks gaps i.valid and drops o.ready at random (`seed`).
    info: the generator's cycles per image, the run's clocks, wall and Verilator build seconds,
    the gap and stall counts."""
    import sys
    import tempfile
    from pathlib import Path

    from .gateware.model_rtl import write_model_rtl
    from .gateware.model_rtlsim import VerilatedModel

    with tempfile.TemporaryDirectory(prefix="quweit-rtl-") as tmp:
        print(f"rtl: generating the whole-model Verilog ({lanes} lanes) ...", file=sys.stderr, flush=True)
        summary = write_model_rtl(bundle_path, Path(tmp) / "rtl", lanes=lanes)
        print("rtl: compiling it with Verilator (minutes for a large model) ...", file=sys.stderr, flush=True)
        sim = VerilatedModel(Path(tmp) / "rtl" / "model_engine.v", summary["classes"], pixels[0].size, Path(tmp) / "sim")
        print(f"rtl: running {len(pixels)} images ...", file=sys.stderr, flush=True)
        permille = backpressure_permille(backpressure)
        logits, labels, cycles = sim.run(pixels, valid_permille=permille, ready_permille=permille, seed=seed)
    return logits, labels, cycles, {"cycles_per_image": summary["cycles_per_image"], "lanes": lanes,
                                    "generation_seconds": summary["generation_seconds"],
                                    "build_seconds": round(sim.build_seconds, 1), "backpressure": backpressure,
                                    **sim.last_run}


def evaluate_model_bundle(bundle_path, backend="golden", *, split="test", limit=None, compare=False, lanes=32,
                          backpressure=0.0, seed=1):
    """{"accuracy", "n", "predictions", "logits"}; rtl also "differing_from_golden" (logits),
    "cycles" (the engine's counter, per image), "rtl" (run figures, rtl_logits' info; `backpressure`
    and `seed` go to it); with compare:
    "differing_logits", "differing_predictions", "torch_accuracy"."""
    if backend not in WHOLE_MODEL_BACKENDS:
        raise UserError(f"unknown whole-model backend {backend!r}; expected one of {WHOLE_MODEL_BACKENDS}")
    program, manifest, _ = load_model_bundle(bundle_path)
    if manifest.get("model", {}).get("task") != "fashion-mnist":
        raise UserError(f"bundle {bundle_path}: whole-model evaluation supports the fashion-mnist ViT only")
    pixels, labels = fashion_mnist_pixels(split, limit=limit)
    logits = golden_model.logits(program, pixels)
    extra = {}
    if backend == "rtl":
        gold = logits
        logits, classes, cycles, info = rtl_logits(bundle_path, pixels, lanes, backpressure=backpressure, seed=seed)
        extra = {"differing_from_golden": int((logits != gold).sum()), "cycles": cycles, "rtl": info,
                 "class_output_differs": int((classes != logits.argmax(-1)).sum())}
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == labels).mean()), "n": len(labels), "predictions": pred, "logits": logits, **extra}
    if compare:
        theirs = torch_integer_logits(manifest, pixels)
        out["differing_logits"] = int((theirs != logits).sum())
        out["differing_predictions"] = int((theirs.argmax(-1) != pred).sum())
        out["torch_accuracy"] = float((theirs.argmax(-1) == labels).mean())
    return out
