"""Training: a ViT (Fashion-MNIST) or a character GPT (text), dense or LUT MLP, with AdamW,
warm-up and cosine decay; one checkpoint per epoch, resumable exactly."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from . import distributed
from .checkpoint import ARCHS, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_model, read_checkpoint, save_checkpoint
from .data import AUGMENTATIONS, augment_fashion_mnist, calibrate_lut_mlps, load_fashion_mnist, random_windows, sequential_windows
from .distill import Distiller
from .evaluate import evaluate_arrays, load_text_task
from .vit import MLP_KINDS

TASKS = {"fashion-mnist": "vit", "text": "gpt"}

# Model-shape options: CLI name -> (config field, default per arch). None on the command line
# means "not given": the --init-from checkpoint's value, else this default.
SHAPE_DEFAULTS = {
    "d": {"vit": 64, "gpt": 64},
    "depth": {"vit": 2, "gpt": 2},
    "heads": {"vit": 4, "gpt": 4},
    "dropout": {"vit": 0.0, "gpt": 0.0},
    "patch": {"vit": 7},
    "pool": {"vit": "cls"},
    "block_size": {"gpt": 64},
}
# LUT-MLP options: CLI name -> LUTMLPConfig field (None: LUTMLPConfig's own default).
LUT_OPTIONS = ("bits", "thresholds", "thermometer", "n", "hidden", "group_size", "mapping",
               "deep_mapping", "window", "bit_order", "efd")


def _shape_config(args, arch: str, source: dict | None) -> dict:
    """Model-shape fields from the command line, the --init-from config, then the defaults."""
    fields = {}
    for name, defaults in SHAPE_DEFAULTS.items():
        if arch not in defaults:
            given = getattr(args, name, None)
            if given is not None:
                raise UserError(f"--{name.replace('_', '-')} does not apply to the {arch} model")
            continue
        given = getattr(args, name, None)
        if given is not None and source is not None and source.get(name) != given:
            raise UserError(
                f"--{name.replace('_', '-')} {given!r} differs from the --init-from model's {source.get(name)!r}"
            )
        fields[name] = given if given is not None else source[name] if source is not None else defaults[arch]
    return fields


def model_config(args, arch: str, source: dict | None = None, vocab_size: int | None = None):
    """The model config a training command asks for (source: the --init-from checkpoint's config)."""
    fields = _shape_config(args, arch, source)
    fields.update(integer_fields(args, arch))
    lut_given = {k: getattr(args, k) for k in LUT_OPTIONS if getattr(args, k, None) is not None}
    if args.mlp == "lut":
        from .lutmlp import LUTMLPConfig

        try:
            fields["lut"] = LUTMLPConfig(d=fields["d"], **lut_given)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad LUT-MLP option: {e}") from None
    elif lut_given:
        raise UserError(f"--{next(iter(lut_given)).replace('_', '-')} needs --mlp lut")
    if arch == "gpt":
        fields["vocab_size"] = vocab_size
    _, config_cls = ARCHS[arch]
    try:
        return config_cls(mlp=args.mlp, **fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad model option: {e}") from None


def copy_non_mlp_weights(model, source_state: dict, source_path) -> int:
    """Copy every parameter and buffer outside the blocks' MLPs; UserError on any mismatch."""
    copied = 0
    state = model.state_dict()
    for key, value in state.items():
        if ".mlp." in key or _fresh_quant_state(key, source_state):
            continue
        if key not in source_state:
            raise UserError(f"--init-from {str(source_path)!r} has no {key!r}")
        if source_state[key].shape != value.shape:
            raise UserError(
                f"--init-from {str(source_path)!r}: {key!r} has shape {tuple(source_state[key].shape)} "
                f"there but {tuple(value.shape)} here"
            )
        value.copy_(source_state[key])
        copied += 1
    return copied


# --- the integer-only ViT (--integer); kept apart from the rest of training ---------------------


def integer_fields(args, arch: str) -> dict:
    """--integer: the integer-only ViT (ViTConfig.integer); a float --init-from may seed it."""
    if not getattr(args, "integer", None):
        return {}
    if arch != "vit":
        raise UserError("--integer applies to the ViT (--task fashion-mnist) only")
    return {"integer": True}


def _fresh_quant_state(key: str, source_state: dict) -> bool:
    """An integer model's activation scale that a float source lacks: left to training to set."""
    from .integer_vit import is_quant_state

    return is_quant_state(key) and key not in source_state


def copy_integer_mlps(model, source: dict) -> int:
    """An integer model seeded from a checkpoint with the same MLP (kind and LUT config) takes
    its MLP weights too (the float twin of the same model); returns the tensors copied."""
    config, theirs = model.config, source["config"]
    if not getattr(config, "integer", False) or theirs.get("mlp") != config.mlp:
        return 0
    if config.mlp == "lut" and dataclasses.asdict(config)["lut"] != theirs.get("lut"):
        return 0
    state, copied = model.state_dict(), 0
    for key, value in state.items():
        if ".mlp." in key and key in source["state_dict"] and source["state_dict"][key].shape == value.shape:
            value.copy_(source["state_dict"][key])
            copied += 1
    return copied


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 0.1 x peak at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args) -> torch.optim.Optimizer:
    """AdamW: weight decay on matrices outside the LUT-MLPs; the LUT blocks' tables and mappings
    at --lut-lr without decay; their affine output step and all vectors at --lr without decay."""
    lut_ids = {id(p) for _, mlp in model.lut_mlps() for p in mlp.parameters()}
    decay, no_decay, lut = [], [], []
    for p in model.parameters():
        if id(p) in lut_ids:
            (lut if p.dim() >= 2 else no_decay).append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    lut_lr = args.lut_lr if args.lut_lr is not None else 10 * args.lr
    groups = [
        {"params": decay, "weight_decay": args.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": lut, "weight_decay": 0.0, "lr_scale": lut_lr / args.lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, betas=(0.9, 0.99))


def _plain(value):
    """argparse values as JSON-friendly Python (Path -> str, tuple -> list)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _check_args(args) -> None:
    if args.task is None:
        raise UserError(f"--task is required: choose one of {', '.join(TASKS)}")
    if args.task not in TASKS:
        raise UserError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    if args.mlp not in MLP_KINDS:
        raise UserError(f"unknown --mlp {args.mlp!r}; choose dense or lut")
    for name in ("epochs", "batch_size", "calib_batches", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {v!r}")
    augment = getattr(args, "augment", None) or "none"
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if augment != "none" and args.task != "fashion-mnist":
        raise UserError(f"--augment {augment} is for the fashion-mnist task, not {args.task!r}")
    if args.lr <= 0:
        raise UserError(f"--lr must be positive, not {args.lr!r}")
    _check_distill_args(args)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise UserError(f"unknown --device {args.device!r}; choose cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device!r}: no CUDA device is available")


def _check_distill_args(args) -> None:
    given = getattr(args, "given", {})
    if getattr(args, "distill_from", None) is None:
        extra = [n for n in ("distill_weight", "distill_temperature", "distill_mlp") if n in given]
        if extra:
            raise UserError(f"--{extra[0].replace('_', '-')} weighs distillation: add --distill-from CKPT")
        return
    if not 0 <= args.distill_weight <= 1:
        raise UserError(f"--distill-weight must be between 0 and 1, not {args.distill_weight!r}")


class _Task:
    """Training and evaluation data of one task, with a batch iterator per epoch."""

    def __init__(self, args, vocab=None):
        self.name = args.task
        self.batch_size = args.batch_size
        self.augment = getattr(args, "augment", None) or "none"  # runs from before --augment had none
        if self.name == "fashion-mnist":
            self.train_x, self.train_y = load_fashion_mnist("train")
            self.eval_x, self.eval_y = load_fashion_mnist("test")
            self.vocab = None
            self.eval_split = "test"
        else:
            self.text = load_text_task(args.text, vocab, args.val_fraction)
            self.vocab = self.text.vocab
            self.train_ids = self.text.train
            self.eval_split = "val"
        if args.train_limit is not None:
            if self.name == "fashion-mnist":
                self.train_x, self.train_y = self.train_x[: args.train_limit], self.train_y[: args.train_limit]
            else:
                self.train_ids = self.train_ids[: args.train_limit]
        self.args = args

    def configure(self, block_size: int | None):
        """Fix what depends on the model config (the text windows)."""
        self.block_size = block_size
        if self.name == "text":
            self.eval_x, self.eval_y = sequential_windows(self.text.val, block_size)
            default = max(1, len(self.train_ids) // (self.batch_size * block_size))
            self.steps_per_epoch = self.args.steps_per_epoch or default
        else:
            self.steps_per_epoch = math.ceil(len(self.train_x) / self.batch_size)
        if self.args.eval_limit is not None:
            self.eval_x, self.eval_y = self.eval_x[: self.args.eval_limit], self.eval_y[: self.args.eval_limit]

    def batches(self, epoch: int, seed: int):
        """The epoch's training batches, a function of (seed, epoch) only (so --resume is exact)."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        if self.name == "fashion-mnist":
            order = torch.randperm(len(self.train_x), generator=g)
            for i in range(self.steps_per_epoch):
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield augment_fashion_mnist(self.train_x[idx], self.augment, g), self.train_y[idx]
        else:
            for _ in range(self.steps_per_epoch):
                yield random_windows(self.train_ids, self.batch_size, self.block_size, generator=g)

    def calibration_inputs(self, n_batches: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed * 100_003 + 99_991)
        if self.name == "fashion-mnist":
            idx = torch.randperm(len(self.train_x), generator=g)[: n_batches * self.batch_size]
            return list(self.train_x[idx].split(self.batch_size))
        return [random_windows(self.train_ids, self.batch_size, self.block_size, generator=g)[0]
                for _ in range(n_batches)]


def _resume_args(args):
    """(args, checkpoint) of the run in --out that --resume continues: the stored options, with
    those --resume takes from the command line (RESUME_KEEPS); any other option given
    (args.given, from the CLI) must equal the run's own, else UserError."""
    if args.out is None:
        raise UserError("--resume needs --out (the run folder to continue)")
    ckpt = read_checkpoint(args.out / "checkpoint.pt")
    stored = ckpt["args"]
    for name, value in sorted(getattr(args, "given", {}).items()):
        if name in stored and _plain(value) != stored[name]:
            raise UserError(f"--resume continues {str(args.out)!r} with the options it was started with: "
                            f"--{name.replace('_', '-')} {_plain(value)!r} differs from the run's "
                            f"{stored[name]!r} (drop it, or start a new run with another --out)")
    keep = {"epochs": args.epochs or stored["epochs"], "device": args.device, "threads": args.threads,
            "out": args.out, "resume": True, "no_progress": args.no_progress}
    args = argparse.Namespace(**{**stored, **keep})
    args.hidden = tuple(args.hidden) if args.hidden is not None else None
    args.init_from = Path(args.init_from) if args.init_from else None
    args.distill_from = Path(args.distill_from) if getattr(args, "distill_from", None) else None
    return args, ckpt


def _prepare_args(args):
    """(args, resume checkpoint or None): the options checked and their run-dependent defaults set."""
    resume_ckpt = None
    if args.resume:
        args, resume_ckpt = _resume_args(args)
    if args.epochs is None:
        args.epochs = 5
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.batch_size is None:
        args.batch_size = 128 if TASKS[args.task] == "vit" else 64
    if args.out is None:
        args.out = Path("runs") / f"{args.task}-{args.mlp}"
    if not args.resume and (args.out / "checkpoint.pt").exists():
        raise UserError(f"{str(args.out / 'checkpoint.pt')!r} exists; pass --resume to continue it or choose another --out")
    return args, resume_ckpt


def _init_source(args, resume_ckpt):
    """The --init-from checkpoint (None without it, or when resuming), checked to be of the task."""
    if args.init_from is None or resume_ckpt is not None:
        return None
    source = read_checkpoint(args.init_from)
    if source["task"] != args.task:
        raise UserError(f"--init-from {str(args.init_from)!r} was trained on task {source['task']!r}, not {args.task!r}")
    return source


def _start_model(args, arch, task, resume_ckpt, source, progress):
    """(model, metrics so far, first epoch): the resumed model, or a new one (weights copied
    from --init-from, LUT-MLP quantizers calibrated)."""
    torch.manual_seed(args.seed)
    if resume_ckpt is not None:
        model = build_model(arch, resume_ckpt["config"])
    else:
        vocab_size = len(task.vocab) if task.vocab is not None else None
        model = build_model(arch, model_config(args, arch, source["config"] if source else None, vocab_size))
    task.configure(getattr(model.config, "block_size", None))
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        return model, list(resume_ckpt["metrics"]), resume_ckpt["epoch"]
    if source is not None:
        n = copy_non_mlp_weights(model, source["state_dict"], args.init_from) + copy_integer_mlps(model, source)
        print(f"copied {n} tensors outside the MLPs from {args.init_from}")
    if model.lut_mlps():
        calibrate_lut_mlps(model, task.calibration_inputs(args.calib_batches, args.seed), progress=progress)
    return model, [], 0


def _train_epoch(model, optimizer, task, args, epoch, device, progress, world=distributed.World(), distiller=None):
    """One epoch of training: {"loss_sum", "correct", "count", "seen", "seconds"}, summed over the
    ranks (the loss is the cross-entropy, with or without a `distiller`). `model` is the module
    to step (DDP under torchrun); each rank takes its share of every batch."""
    core = getattr(model, "module", model)
    arch, config = TASKS[args.task], core.config
    total_steps = args.epochs * task.steps_per_epoch
    tokens_per_example = getattr(config, "tokens", None) or config.block_size
    torch.manual_seed(args.seed * 100_003 + epoch)  # dropout and LUT training noise, per epoch
    model.train()
    t0 = time.perf_counter()
    seen, loss_sum, correct, count = 0, 0.0, 0, 0
    bar = tqdm(task.batches(epoch, args.seed), total=task.steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
               disable=not progress, mininterval=1.0)
    for i, (xb, yb) in enumerate(bar):
        step = epoch * task.steps_per_epoch + i
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, total_steps, args.lr, args.warmup) * g.get("lr_scale", 1.0)
        xb, yb = distributed.shard(xb, world).to(device), distributed.shard(yb, world).to(device)
        if distiller is None:
            logits = model(xb)
            loss = ce = F.cross_entropy(logits.flatten(0, -2), yb.flatten())
        else:
            with distiller.capture(core) as mlp_pairs:
                logits = model(xb)
            ce = F.cross_entropy(logits.flatten(0, -2), yb.flatten())
            loss = distiller.loss(ce, logits, xb, mlp_pairs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for _, mlp in core.lut_mlps():
            if hasattr(mlp, "clamp_"):
                mlp.clamp_()
        n = yb.numel()
        loss_sum += ce.item() * n
        correct += (logits.argmax(-1) == yb).sum().item()
        count += n
        seen += len(xb) * tokens_per_example
        if i % 10 == 0 or i == task.steps_per_epoch - 1:
            avg = loss_sum / count
            post = {"loss": f"{avg:.4f}"}
            if arch == "vit":
                post["acc"] = f"{correct / count:.4f}"
            else:
                post["ppl"] = f"{math.exp(avg):.2f}"
            post["tok/s"] = f"{seen / (time.perf_counter() - t0):.0f}"
            bar.set_postfix(post, refresh=False)
    bar.close()
    loss_sum, correct, count, seen = distributed.total([loss_sum, correct, count, seen], world)
    return {"loss_sum": loss_sum, "correct": int(correct), "count": int(count), "seen": int(seen),
            "seconds": time.perf_counter() - t0}


def _epoch_row(epoch, stats, ev, eval_split, arch):
    """The metrics.json row of one epoch, from its training `stats` and evaluation `ev`."""
    count, seconds = stats["count"], stats["seconds"]
    row = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / count, "train_accuracy": stats["correct"] / count,
           f"{eval_split}_loss": ev["loss"], f"{eval_split}_accuracy": ev["accuracy"],
           "train_seconds": round(seconds, 1), "tokens_per_second": round(stats["seen"] / seconds)}
    if arch == "gpt":
        row["val_bits_per_char"] = ev["bits_per_char"]
    return row


def run_train(args) -> int:
    """The `train` command: a new run in --out (default runs/TASK-MLP), or --resume of one."""
    args, resume_ckpt = _prepare_args(args)
    progress = not args.no_progress and sys.stderr.isatty()
    arch = TASKS[args.task]
    ckpt_path = args.out / "checkpoint.pt"
    source = _init_source(args, resume_ckpt)
    vocab = resume_ckpt.get("vocab") if resume_ckpt else source.get("vocab") if source else None
    task = _Task(args, vocab)
    model, metrics, start_epoch = _start_model(args, arch, task, resume_ckpt, source, progress)
    device = torch.device(args.device)
    world = distributed.start(device, args.batch_size)
    progress = progress and world.writes
    model.to(device)
    distiller = Distiller.from_args(args, model, device)
    optimizer = make_optimizer(model, args)
    if resume_ckpt is not None and resume_ckpt.get("optimizer") is not None:  # shipped checkpoints drop it
        optimizer.load_state_dict(resume_ckpt["optimizer"])
    if start_epoch >= args.epochs:
        print(f"{str(ckpt_path)!r} already holds {start_epoch} epochs (--epochs {args.epochs}); nothing to do")
        distributed.finish(world)
        return 0

    plain_args = {k: _plain(v) for k, v in vars(args).items() if k != "given"}
    n_params = sum(p.numel() for p in model.parameters())
    if world.writes:
        print(f"{arch} {args.mlp}: {n_params} parameters, {task.steps_per_epoch} steps per epoch, out {args.out}"
              + (f", {world.size} processes" if world.size > 1 else ""))
    stepped = distributed.wrap(model, world, device)
    for epoch in range(start_epoch, args.epochs):
        stats = _train_epoch(stepped, optimizer, task, args, epoch, device, progress, world, distiller)
        ev = evaluate_arrays(model, task.eval_x, task.eval_y, batch_size=256, progress=progress,
                             desc=f"eval {task.eval_split}")
        row = _epoch_row(epoch, stats, ev, task.eval_split, arch)
        metrics.append(row)
        if not world.writes:  # every rank holds the same model; one writes it
            continue
        ckpt = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": args.task, "arch": arch,
            "config": dataclasses.asdict(model.config),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "vocab": task.vocab, "metrics": metrics, "args": plain_args, "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
        }
        save_checkpoint(ckpt_path, ckpt)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print(" ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    if world.writes:
        print(f"wrote {ckpt_path}")
    distributed.finish(world)
    return 0
