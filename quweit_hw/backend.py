"""MLP backends: where a model's LUT-MLP blocks are computed (torch, golden, rtl, board), and `eval`.

A backend maps (block index, quantized tokens q (N, d) int) to group counts (N, d) int.
The model quantizes and applies the affine step itself, so every backend is compared on
exactly the integers the hardware sees. New backends plug in through `make_backend`.
"""

import tempfile
from pathlib import Path

import numpy as np

from . import QuweitError
from .bundle import load_bundle

BACKENDS = ("torch", "golden", "rtl", "board")


class MLPBackend:
    """Base of the non-torch backends; `counts` is the whole interface."""

    name = "?"

    def __init__(self, bundle):
        self.bundle = bundle

    def counts(self, index, q):  # (N, d) int -> (N, d) int64
        raise NotImplementedError

    def close(self):
        pass


class GoldenBackend(MLPBackend):
    """The bundle's blocks computed by the integer golden model (quweit_hw.golden)."""

    name = "golden"

    def counts(self, index, q):
        from . import golden

        return golden.counts(self.bundle.blocks[index], q)


def make_backend(name, bundle, *, port=None, sim=None):
    """The backend called `name` over `bundle`."""
    if name == "golden":
        return GoldenBackend(bundle)
    if name == "rtl":
        from .hdl import RTLBackend

        return RTLBackend(bundle, **({"sim": sim} if sim else {}))
    if name == "board":
        from .host import BoardBackend

        if not port:
            raise QuweitError("--mlp-backend board needs --port (e.g. /dev/ttyUSB0)")
        return BoardBackend(bundle, port)
    raise QuweitError(f"unknown MLP backend {name!r}; expected one of {BACKENDS}")


class Agreement:
    """Counts, per block, the tokens whose backend counts differ from the torch eval counts."""

    def __init__(self, blocks):
        self.tokens = [0] * blocks
        self.mismatches = [0] * blocks

    def __str__(self):
        return ", ".join(f"block {i}: {m} of {t} tokens differ" for i, (t, m) in enumerate(zip(self.tokens, self.mismatches)))

    @property
    def exact(self):
        return not any(self.mismatches) and all(self.tokens)


def attach(model, backend, *, agreement=None):
    """Route the LUT-MLP blocks of `model` (in eval mode) through `backend`.

    With `agreement`, every call also computes the torch eval counts and records mismatches.
    """
    import torch

    mlps = model.lut_mlps()
    blocks = backend.bundle.blocks
    if len(mlps) != len(blocks):
        raise QuweitError(f"the model has {len(mlps)} LUT-MLP block(s), the bundle {len(blocks)}")
    for index, ((name, mlp), block) in enumerate(zip(mlps, blocks)):
        if mlp.config.d != block.d:
            raise QuweitError(f"model block {name!r} has d={mlp.config.d}, bundle block {block.name!r} has d={block.d}")

        def route(q, index=index, mlp=mlp):
            c = backend.counts(index, q.detach().cpu().numpy().astype(np.int64))
            c = torch.from_numpy(np.asarray(c, np.int64)).to(q.device)
            if agreement is not None:
                reference = mlp.counts(q.to(torch.float32)).round().long()
                agreement.tokens[index] += len(q)
                agreement.mismatches[index] += int((reference != c).any(dim=1).sum())
            return c

        mlp.backend = route


def detach(model):
    for _, mlp in model.lut_mlps():
        mlp.backend = None


def bundle_for(ckpt_path, bundle_path, workdir):
    """The bundle to evaluate `ckpt_path` with: `bundle_path`, or a fresh export into `workdir`.

    A bundle exported from another checkpoint is refused (its manifest records the source hash).
    """
    from .export import export_checkpoint, file_sha256

    if bundle_path is None:
        return load_bundle(export_checkpoint(ckpt_path, Path(workdir) / "bundle"))
    bundle = load_bundle(bundle_path)
    source = bundle.manifest.get("source_checkpoint", {}).get("sha256")
    if source != file_sha256(ckpt_path):
        raise QuweitError(f"bundle {str(bundle_path)!r} was not exported from {str(ckpt_path)!r} (checkpoint hash differs)")
    return bundle


def evaluate_with_backend(ckpt_path, backend_name="golden", *, bundle_path=None, split="test", limit=None,
                          compare=False, port=None, sim=None, batch_size=256, progress=True):
    """Evaluate a checkpoint with its MLP blocks on `backend_name`.

    Returns {"metrics": ..., "agreement": Agreement or None, "torch_metrics": ... (compare only),
    "same_predictions": bool (compare only)}.
    """
    from .train import evaluate, load_checkpoint

    if backend_name not in BACKENDS:
        raise QuweitError(f"unknown MLP backend {backend_name!r}; expected one of {BACKENDS}")
    model, ckpt = load_checkpoint(ckpt_path)
    result = {"agreement": None}
    if backend_name == "torch":
        result["metrics"] = evaluate(model, ckpt, split, batch_size, limit, progress)
        return result
    if not model.lut_mlps():
        raise QuweitError(f"{str(ckpt_path)!r} is a dense-only checkpoint: --mlp-backend {backend_name} needs LUT-MLP blocks")
    with tempfile.TemporaryDirectory(prefix="quweit-eval-") as workdir:
        backend = make_backend(backend_name, bundle_for(ckpt_path, bundle_path, workdir), port=port, sim=sim)
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


def _summary(metrics):
    if "bits_per_char" in metrics:
        return f"loss {metrics['loss']:.4f}, {metrics['bits_per_char']:.4f} bits/char, next-char accuracy {metrics['accuracy']:.4f}"
    return f"accuracy {metrics['accuracy'] * 100:.2f} % ({round(metrics['accuracy'] * metrics['n'])}/{metrics['n']}), loss {metrics['loss']:.4f}"


def configure_eval(parser):
    from .export import DEFAULT_CHECKPOINT

    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_CHECKPOINT), help="checkpoint (default: %(default)s)")
    parser.add_argument("--mlp-backend", choices=BACKENDS, default="torch",
                        help="where the LUT-MLP blocks run: torch eval, the golden model, the simulated Verilog, or the board")
    parser.add_argument("--bundle", help="bundle exported from the checkpoint (default: export it to a temporary folder)")
    parser.add_argument("--split", default="test", help="data split (fashion-mnist: train|test; text: train|val)")
    parser.add_argument("--limit", type=int, help="evaluate only the first LIMIT inputs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compare", action="store_true",
                        help="also run torch: check every token's counts and every prediction; exit 1 on any difference")
    parser.add_argument("--port", help="serial port of the board (--mlp-backend board)")
    parser.add_argument("--sim", choices=("verilator", "icarus"), help="simulator for --mlp-backend rtl (default verilator)")


def run_eval(args):
    if args.limit is not None and args.limit < 1:
        raise QuweitError(f"--limit must be positive, got {args.limit}")
    result = evaluate_with_backend(args.checkpoint, args.mlp_backend, bundle_path=args.bundle, split=args.split,
                                   limit=args.limit, compare=args.compare, port=args.port, sim=args.sim,
                                   batch_size=args.batch_size)
    print(f"{args.mlp_backend}: {_summary(result['metrics'])}")
    if not args.compare or args.mlp_backend == "torch":
        return 0
    agreement = result["agreement"]
    print(f"torch: {_summary(result['torch_metrics'])}")
    print(f"counts vs torch eval: {agreement}")
    same = result["same_predictions"]
    print(f"predictions: {'identical' if same else 'DIFFERENT'} on all {len(result['metrics']['predictions'])} outputs")
    return 0 if same and agreement.exact else 1
