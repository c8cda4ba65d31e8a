"""`quweit-hw train`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _hidden(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated ints, not {value!r}") from None
    return widths


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="fashion-mnist (ViT) or text (character GPT)")
    parser.add_argument("--mlp", default="dense", help="dense (hidden 4d, GELU) or lut (QuWeiT LUT-MLP); default dense")
    parser.add_argument("--out", type=Path, help="run folder for checkpoint.pt and metrics.json (default runs/TASK-MLP)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    parser.add_argument("--init-from", type=Path, metavar="CKPT",
                        help="start from a trained checkpoint of the same task: copy every weight outside the MLPs")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="default 5 (--resume: the run's own)")
    t.add_argument("--batch-size", type=int, default=None, help="default 128 (fashion-mnist), 64 (text)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warm-up, cosine decay)")
    t.add_argument("--lut-lr", type=float, default=None, help="learning rate of LUT tables and mappings (default 10 x --lr)")
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy machine)")
    t.add_argument("--train-limit", type=int, default=None, help="use only the first N training examples (quick runs)")
    t.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test examples only")
    t.add_argument("--steps-per-epoch", type=int, default=None,
                   help="text: batches per epoch (default: one pass over the training characters)")
    t.add_argument("--calib-batches", type=int, default=8, help="batches used to calibrate LUT-MLP quantizers")
    t.add_argument("--text", default=None, help="text task: a file or folder (default /usr/share/games/fortunes)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="text task: held-out tail of the text")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    m = parser.add_argument_group("model shape (default: --init-from's, else the built-in default)")
    m.add_argument("--d", type=int, help="model width (64)")
    m.add_argument("--depth", type=int, help="transformer blocks (2)")
    m.add_argument("--heads", type=int, help="attention heads (4)")
    m.add_argument("--dropout", type=float, help="dropout (0)")
    m.add_argument("--patch", type=int, help="ViT patch size (7)")
    m.add_argument("--pool", help="ViT pooling: cls or mean (cls)")
    m.add_argument("--block-size", type=int, help="GPT context in characters (64)")
    m.add_argument("--integer", action="store_true", default=None,
                   help="ViT: integer-only (I-ViT style): fake quantization in training, integers in eval")
    lut = parser.add_argument_group("LUT-MLP (--mlp lut; default: LUTMLPConfig's)")
    lut.add_argument("--bits", type=int, help="signed quantizer bits b")
    lut.add_argument("--thresholds", type=int, help="thermometer thresholds T per feature")
    lut.add_argument("--thermometer", help="uniform, gaussian or distributive")
    lut.add_argument("--n", type=int, help="LUT fan-in")
    lut.add_argument("--hidden", type=_hidden, help="LUT layer widths before the last, e.g. 1024 or 2048,1024")
    lut.add_argument("--group-size", type=int, help="k: LUTs per output channel")
    lut.add_argument("--mapping", help="first layer: random, learnable, local or arange")
    lut.add_argument("--deep-mapping", help="later layers: local or random")
    lut.add_argument("--window", type=int, help="window of local mappings")
    lut.add_argument("--bit-order", help="thermometer order the first layer sees: feature or threshold")
    lut.add_argument("--efd", help="EFD gradient: exp or linear")


def run(args) -> int:
    from ..model.train import run_train

    return run_train(args)
