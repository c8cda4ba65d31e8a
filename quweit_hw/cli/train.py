"""`quweit-hw train`."""

from __future__ import annotations

import argparse

from .options import (dropout_rate, input_file, input_path, int_list, nonnegative_float, nonnegative_int,
                      open_fraction, positive_float, positive_int, run_folder)


# Options whose default is filled in by `run`, so that an option given on the command line
# is known as given (--resume refuses those that differ from the run's own).
DEFAULTS = {"mlp": "dense", "lr": 1e-3, "weight_decay": 0.05, "warmup": 100, "seed": 0, "device": "cpu",
            "calib_batches": 8, "val_fraction": 0.1,
            "augment": "none", "distill_weight": 0.5, "distill_temperature": 2.0, "distill_mlp": 0.0}
# What --resume takes from the command line rather than from the stored run.
RESUME_OPTIONS = ("out", "resume", "epochs", "device", "threads", "no_progress")


# LUTMLPConfig's defaults, for the help (tests/test_cli.py checks they match the dataclass)
LUT_DEFAULTS = {"bits": 8, "thresholds": 16, "thermometer": "distributive", "n": 6, "hidden": (2048,),
                "group_size": 16, "mapping": "local", "deep_mapping": "local", "window": 32,
                "bit_order": "feature", "efd": "exp"}


def _lut(text, name):
    value = LUT_DEFAULTS[name]
    return f"{text} (default: {','.join(map(str, value)) if isinstance(value, tuple) else value})"


def _default(name):
    return f"(default: {DEFAULTS[name]})"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="fashion-mnist (ViT) or text (character GPT) (no default: required, except with --resume)")
    parser.add_argument("--mlp", help=f"dense (hidden 4d, GELU) or lut (QuWeiT LUT-MLP) {_default('mlp')}")
    parser.add_argument("--out", type=run_folder, help="run folder for checkpoint.pt and metrics.json (default runs/TASK-MLP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out up to --epochs, with the options it was started with "
                             "(an option given that differs from the run's is refused)")
    parser.add_argument("--init-from", type=input_file, metavar="CKPT",
                        help="start from a trained checkpoint of the same task: copy every weight outside the MLPs "
                             "(default: random initialisation)")
    k = parser.add_argument_group("distillation (off without --distill-from)")
    k.add_argument("--distill-from", type=input_file, metavar="CKPT",
                   help="a trained checkpoint of the same task (the dense twin) whose logits are soft targets: "
                        "loss = (1 - W) cross-entropy + W T^2 KL(teacher || student) (default: no teacher)")
    k.add_argument("--distill-weight", type=nonnegative_float, metavar="W",
                   help=f"W, between 0 and 1 {_default('distill_weight')}")
    k.add_argument("--distill-temperature", type=positive_float, metavar="T",
                   help=f"T, the softmax temperature of both models' logits {_default('distill_temperature')}")
    k.add_argument("--distill-mlp", type=nonnegative_float, metavar="M",
                   help="add M x the squared error of each LUT-MLP against the teacher's MLP of the same block "
                        "on the LUT-MLP's own input, relative to the target's energy (needs --mlp lut and a "
                        f"teacher of the same d and depth) {_default('distill_mlp')}")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=None, help="default 5 (--resume: the run's own)")
    t.add_argument("--batch-size", type=positive_int, default=None, help="default 128 (fashion-mnist), 64 (text)")
    t.add_argument("--lr", type=positive_float, help=f"peak AdamW learning rate (warm-up, cosine decay) {_default('lr')}")
    t.add_argument("--lut-lr", type=positive_float, default=None, help="learning rate of LUT tables and mappings (default 10 x --lr)")
    t.add_argument("--weight-decay", type=nonnegative_float,
                   help=f"AdamW weight decay of the matrices outside the LUT-MLPs {_default('weight_decay')}")
    t.add_argument("--warmup", type=nonnegative_int, help=f"linear warm-up steps {_default('warmup')}")
    t.add_argument("--seed", type=nonnegative_int, help=f"seed of initialisation, batch order and noise {_default('seed')}")
    t.add_argument("--device", help=f"cpu, cuda or cuda:N {_default('device')}")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy machine)")
    t.add_argument("--train-limit", type=positive_int, default=None,
                   help="use only the first N training examples, characters for text (default: all)")
    t.add_argument("--eval-limit", type=positive_int, default=None,
                   help="evaluate on the first N test examples only (default: all)")
    t.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="text: batches per epoch (default: one pass over the training characters)")
    t.add_argument("--augment", help="fashion-mnist training images: none, or crop-flip (shifted up to 2 pixels, "
                   f"mirrored at random) {_default('augment')}")
    t.add_argument("--calib-batches", type=positive_int,
                   help=f"batches used to calibrate LUT-MLP quantizers {_default('calib_batches')}")
    t.add_argument("--text", type=input_path, default=None, help="text task: a file or folder (default /usr/share/games/fortunes)")
    t.add_argument("--val-fraction", type=open_fraction,
                   help=f"text task: held-out tail of the text {_default('val_fraction')}")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none anyway when stderr is not a terminal)")
    m = parser.add_argument_group("model shape (default: --init-from's, else the built-in default)")
    m.add_argument("--d", type=positive_int, help="model width (default 64)")
    m.add_argument("--depth", type=positive_int, help="transformer blocks (default 2)")
    m.add_argument("--heads", type=positive_int, help="attention heads (default 4)")
    m.add_argument("--dropout", type=dropout_rate, help="dropout (default 0)")
    m.add_argument("--patch", type=positive_int, help="ViT patch size (default 7)")
    m.add_argument("--pool", help="ViT pooling: cls or mean (default cls)")
    m.add_argument("--block-size", type=positive_int, help="GPT context in characters (default 64)")
    m.add_argument("--integer", action="store_true", default=None,
                   help="ViT: integer-only (I-ViT style): fake quantization in training, integers in eval "
                        "(default: --init-from's, else float)")
    lut = parser.add_argument_group("LUT-MLP (--mlp lut; defaults: LUTMLPConfig's)")
    lut.add_argument("--bits", type=positive_int, help=_lut("signed quantizer bits b", "bits"))
    lut.add_argument("--thresholds", type=positive_int, help=_lut("thermometer thresholds T per feature", "thresholds"))
    lut.add_argument("--thermometer", help=_lut("uniform, gaussian or distributive", "thermometer"))
    lut.add_argument("--n", type=positive_int, help=_lut("LUT fan-in", "n"))
    lut.add_argument("--hidden", type=int_list,
                     help=_lut("LUT layer widths before the last, e.g. 1024 or 2048,1024", "hidden"))
    lut.add_argument("--group-size", type=positive_int, help=_lut("k: LUTs per output channel", "group_size"))
    lut.add_argument("--mapping", help=_lut("first layer: random, learnable, local or arange", "mapping"))
    lut.add_argument("--deep-mapping", help=_lut("later layers: local or random", "deep_mapping"))
    lut.add_argument("--window", type=positive_int, help=_lut("window of local mappings", "window"))
    lut.add_argument("--bit-order", help=_lut("thermometer order the first layer sees: feature or threshold",
                                              "bit_order"))
    lut.add_argument("--efd", help=_lut("EFD gradient: exp or linear", "efd"))


def run(args) -> int:
    from ..model.train import run_train

    # what was given on the command line (for --resume), then the defaults of what was not
    args.given = {k: v for k, v in vars(args).items()
                  if k not in RESUME_OPTIONS and k != "command" and v is not None}
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return run_train(args)
