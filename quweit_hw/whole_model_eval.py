"""`eval BUNDLE --backend golden|rtl|board`: a version 2 (whole integer model) bundle on
Fashion-MNIST pixels, by the golden model, by the whole-model engine's Verilog under Verilator
or by the whole-model board top over its UART (both checked against the golden model),
optionally beside torch's integer eval of its source checkpoint."""

import numpy as np

from .contract import golden_model
from .contract.fashion_mnist import fashion_mnist_pixels
from .contract.model_bundle import load_model_bundle
from .errors import UserError

WHOLE_MODEL_BACKENDS = ("golden", "rtl", "board")


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


def evaluate_on_board(bundle_path, program, manifest, pixels, port, bench, link, progress):
    """The board backend: (logits, classes, cycles, link figures, benchmark figures or None) of
    every image over the link (on `port`, or `link`, a ModelLink), once the board's model id
    matches the bundle's; then the batch benchmark with `bench` repeats when not 0."""
    from .contract.boards import load_board
    from .host_model import ModelLink, board_bench, board_logits, check_board_bundle

    if link is None:
        if not port:
            raise UserError("--backend board needs --port (the board's serial port)")
        link = ModelLink(port, baud=load_board("ulx3s").baud)
    with link:
        info = check_board_bundle(link, manifest, bundle_path)
        logits, classes, cycles, figures = board_logits(link, pixels, progress)
        figures["cycles_per_image"] = info.cycles_per_image
        bench_figures = board_bench(link, program, pixels[:info.batch], bench) if bench else None
    return logits, classes, cycles, figures, bench_figures


def evaluate_model_bundle(bundle_path, backend="golden", *, split="test", limit=None, compare=False, lanes=32,
                          backpressure=0.0, seed=1, port=None, bench=0, link=None, progress=None):
    """{"accuracy", "n", "predictions", "logits"}; rtl and board also "differing_from_golden"
    (logits), "class_output_differs", "cycles" (the engine's counter, per image), "rtl" or
    "board" (run figures; rtl's from rtl_logits, which `backpressure` and `seed` go to); board with `bench` repeats also "bench" (`host_model.board_bench`
    on the first images, as many as the board's batch memory holds); with compare:
    "differing_logits", "differing_predictions", "torch_accuracy". The board is on serial
    `port` (or `link`, a ModelLink)."""
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
    elif backend == "board":
        gold = logits
        logits, classes, cycles, figures, bench_figures = evaluate_on_board(bundle_path, program, manifest, pixels, port,
                                                                    bench, link, progress)
        extra = {"differing_from_golden": int((logits != gold).sum()), "cycles": cycles, "board": figures,
                 "class_output_differs": int((classes != logits.argmax(-1)).sum()),
                 **({"bench": bench_figures} if bench else {})}
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == labels).mean()), "n": len(labels), "predictions": pred, "logits": logits, **extra}
    if compare:
        theirs = torch_integer_logits(manifest, pixels)
        out["differing_logits"] = int((theirs != logits).sum())
        out["differing_predictions"] = int((theirs.argmax(-1) != pred).sum())
        out["torch_accuracy"] = float((theirs.argmax(-1) == labels).mean())
    return out
