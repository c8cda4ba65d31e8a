"""`quweit-hw train`: train a ViT (Fashion-MNIST) or a character GPT (text), dense or LUT MLP;
checkpoints that rebuild themselves, and `load_checkpoint`/`evaluate` for the later stages."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import QuweitError
from .data import CharText, calibrate_lut_mlps, load_fashion_mnist, random_windows, read_text, sequential_windows
from .gpt import GPT, GPTConfig
from .vit import MLP_KINDS, ViT, ViTConfig

CHECKPOINT_FORMAT = "quweit-hw-checkpoint"
CHECKPOINT_VERSION = 1
TASKS = {"fashion-mnist": "vit", "text": "gpt"}
ARCHS = {"vit": (ViT, ViTConfig), "gpt": (GPT, GPTConfig)}

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


# --- models and checkpoints ------------------------------------------------------------------


def build_model(arch: str, config) -> torch.nn.Module:
    """Build a model from its arch name and config (a config dataclass or the dict `asdict` made)."""
    if arch not in ARCHS:
        raise QuweitError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHS)}")
    model_cls, config_cls = ARCHS[arch]
    if isinstance(config, dict):
        config = config_cls(**config)
    return model_cls(config)


def save_checkpoint(path, ckpt: dict) -> None:
    """Write atomically: a temporary file in the same folder, renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict at `path`; QuweitError if it is not a quweit-hw checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise QuweitError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and truncation errors all mean "not a torch checkpoint"
        raise QuweitError(f"{str(path)!r} is not a torch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise QuweitError(f"{str(path)!r} is not a quweit-hw checkpoint (format {got!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise QuweitError(
            f"{str(path)!r} is checkpoint version {ckpt.get('version')!r}; this quweit-hw reads {CHECKPOINT_VERSION}"
        )
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model stored at `path` in eval mode: returns (model, ckpt dict)."""
    ckpt = read_checkpoint(path, map_location)
    try:
        model = build_model(ckpt["arch"], ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QuweitError(f"{str(path)!r}: cannot rebuild the model: {msg}") from None
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), ckpt


# --- data for a task -------------------------------------------------------------------------


def load_text_task(text_path=None, vocab=None, val_fraction=0.1) -> CharText:
    return CharText.from_text(read_text(text_path), val_fraction=val_fraction, vocab=vocab)


def test_inputs(ckpt: dict, split: str = "test", limit: int | None = None):
    """The evaluation inputs and targets of a checkpoint's task, in a fixed order.

    fashion-mnist: images (N, 1, 28, 28) float and labels (N,); split "train" or "test".
    text: non-overlapping windows (N, block_size) and next-character targets (N, block_size)
    of the text the model was trained on; split "train" or "val" ("test" = "val").
    """
    task = ckpt["task"]
    if task == "fashion-mnist":
        x, y = load_fashion_mnist("train" if split == "train" else "test" if split in ("test", "val") else split)
    elif task == "text":
        args = ckpt.get("args", {})
        text = load_text_task(args.get("text"), ckpt.get("vocab"), args.get("val_fraction", 0.1))
        x, y = sequential_windows(text.split(split), ckpt["config"]["block_size"])
    else:
        raise QuweitError(f"unknown task {task!r}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


@torch.no_grad()
def evaluate_arrays(model, x, y, batch_size: int = 256, progress: bool = True, desc: str = "eval") -> dict:
    """Loss, accuracy (classifier) or bits per character (language model) of `model` on (x, y)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, count, preds = 0.0, 0, 0, []
    try:
        for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = model(xb)  # (B, classes) or (B, T, vocab)
            loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten(), reduction="sum")
            p = logits.argmax(-1)
            total_loss += loss.item()
            correct += (p == yb).sum().item()
            count += yb.numel()
            preds.append(p.cpu())
    finally:
        model.train(was_training)
    loss = total_loss / max(count, 1)
    out = {"loss": loss, "accuracy": correct / max(count, 1), "n": count,
           "predictions": torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)}
    if y.dim() == 2:  # language model: per-character figures
        out["bits_per_char"] = loss / math.log(2)
        out["perplexity"] = math.exp(loss)
    return out


def evaluate(model, ckpt: dict, split: str = "test", batch_size: int = 256, limit: int | None = None,
             progress: bool = True) -> dict:
    """Evaluate `model` on its checkpoint's task: {"loss", "accuracy", "n", "predictions"} and, for
    text, "bits_per_char" and "perplexity" (per character; accuracy = next-character accuracy).
    With the LUT blocks' `backend` set, the model is evaluated through that backend."""
    x, y = test_inputs(ckpt, split, limit)
    out = evaluate_arrays(model, x, y, batch_size, progress, desc=f"eval {split}")
    out["split"] = split
    return out


# --- the command -----------------------------------------------------------------------------


def _hidden(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated ints, not {value!r}") from None
    return widths


def configure_train(parser: argparse.ArgumentParser) -> None:
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


def _shape_config(args, arch: str, source: dict | None) -> dict:
    """Model-shape fields from the command line, the --init-from config, then the defaults."""
    fields = {}
    for name, defaults in SHAPE_DEFAULTS.items():
        if arch not in defaults:
            given = getattr(args, name, None)
            if given is not None:
                raise QuweitError(f"--{name.replace('_', '-')} does not apply to the {arch} model")
            continue
        given = getattr(args, name, None)
        if given is not None and source is not None and source.get(name) != given:
            raise QuweitError(
                f"--{name.replace('_', '-')} {given!r} differs from the --init-from model's {source.get(name)!r}"
            )
        fields[name] = given if given is not None else source[name] if source is not None else defaults[arch]
    return fields


def model_config(args, arch: str, source: dict | None = None, vocab_size: int | None = None):
    """The model config a training command asks for (source: the --init-from checkpoint's config)."""
    fields = _shape_config(args, arch, source)
    lut_given = {k: getattr(args, k) for k in LUT_OPTIONS if getattr(args, k, None) is not None}
    if args.mlp == "lut":
        from .nn import LUTMLPConfig

        try:
            fields["lut"] = LUTMLPConfig(d=fields["d"], **lut_given)
        except (TypeError, ValueError) as e:
            raise QuweitError(f"bad LUT-MLP option: {e}") from None
    elif lut_given:
        raise QuweitError(f"--{next(iter(lut_given)).replace('_', '-')} needs --mlp lut")
    if arch == "gpt":
        fields["vocab_size"] = vocab_size
    _, config_cls = ARCHS[arch]
    try:
        return config_cls(mlp=args.mlp, **fields)
    except (TypeError, ValueError) as e:
        raise QuweitError(f"bad model option: {e}") from None


def copy_non_mlp_weights(model, source_state: dict, source_path) -> int:
    """Copy every parameter and buffer outside the blocks' MLPs; QuweitError on any mismatch."""
    copied = 0
    state = model.state_dict()
    for key, value in state.items():
        if ".mlp." in key:
            continue
        if key not in source_state:
            raise QuweitError(f"--init-from {str(source_path)!r} has no {key!r}")
        if source_state[key].shape != value.shape:
            raise QuweitError(
                f"--init-from {str(source_path)!r}: {key!r} has shape {tuple(source_state[key].shape)} "
                f"there but {tuple(value.shape)} here"
            )
        value.copy_(source_state[key])
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
        raise QuweitError(f"--task is required: choose one of {', '.join(TASKS)}")
    if args.task not in TASKS:
        raise QuweitError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    if args.mlp not in MLP_KINDS:
        raise QuweitError(f"unknown --mlp {args.mlp!r}; choose dense or lut")
    for name in ("epochs", "batch_size", "calib_batches", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise QuweitError(f"--{name.replace('_', '-')} must be at least 1, not {v!r}")
    if args.lr <= 0:
        raise QuweitError(f"--lr must be positive, not {args.lr!r}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise QuweitError(f"unknown --device {args.device!r}; choose cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise QuweitError(f"--device {args.device!r}: no CUDA device is available")


class _Task:
    """Training and evaluation data of one task, with a batch iterator per epoch."""

    def __init__(self, args, vocab=None):
        self.name = args.task
        self.batch_size = args.batch_size
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
                yield self.train_x[idx], self.train_y[idx]
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


def run_train(args) -> int:
    resume_ckpt = None
    if args.out is None and args.resume:
        raise QuweitError("--resume needs --out (the run folder to continue)")
    if args.resume:
        resume_ckpt = read_checkpoint(args.out / "checkpoint.pt")
        stored = resume_ckpt["args"]
        keep = {"epochs": args.epochs or stored["epochs"], "device": args.device, "threads": args.threads,
                "out": args.out, "resume": True, "no_progress": args.no_progress}
        args = argparse.Namespace(**{**stored, **keep})
        args.hidden = tuple(args.hidden) if args.hidden is not None else None
        args.init_from = Path(args.init_from) if args.init_from else None
    if args.epochs is None:
        args.epochs = 5
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    arch = TASKS[args.task]
    if args.batch_size is None:
        args.batch_size = 128 if arch == "vit" else 64
    if args.out is None:
        args.out = Path("runs") / f"{args.task}-{args.mlp}"
    ckpt_path = args.out / "checkpoint.pt"
    if not args.resume and ckpt_path.exists():
        raise QuweitError(f"{str(ckpt_path)!r} exists; pass --resume to continue it or choose another --out")

    source = None
    if args.init_from is not None and resume_ckpt is None:
        source = read_checkpoint(args.init_from)
        if source["task"] != args.task:
            raise QuweitError(
                f"--init-from {str(args.init_from)!r} was trained on task {source['task']!r}, not {args.task!r}"
            )
    vocab = resume_ckpt.get("vocab") if resume_ckpt else source.get("vocab") if source else None
    task = _Task(args, vocab)

    torch.manual_seed(args.seed)
    if resume_ckpt is not None:
        model = build_model(arch, resume_ckpt["config"])
    else:
        vocab_size = len(task.vocab) if task.vocab is not None else None
        config = model_config(args, arch, source["config"] if source else None, vocab_size)
        model = build_model(arch, config)
    config = model.config
    task.configure(getattr(config, "block_size", None))
    device = torch.device(args.device)

    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        metrics, start_epoch = list(resume_ckpt["metrics"]), resume_ckpt["epoch"]
    else:
        metrics, start_epoch = [], 0
        if source is not None:
            n = copy_non_mlp_weights(model, source["state_dict"], args.init_from)
            print(f"copied {n} tensors outside the MLPs from {args.init_from}")
        if model.lut_mlps():
            calibrate_lut_mlps(model, task.calibration_inputs(args.calib_batches, args.seed),
                               progress=not args.no_progress)
    model.to(device)
    optimizer = make_optimizer(model, args)
    if resume_ckpt is not None and resume_ckpt.get("optimizer") is not None:  # shipped checkpoints drop it
        optimizer.load_state_dict(resume_ckpt["optimizer"])
    if start_epoch >= args.epochs:
        print(f"{str(ckpt_path)!r} already holds {start_epoch} epochs (--epochs {args.epochs}); nothing to do")
        return 0

    total_steps = args.epochs * task.steps_per_epoch
    tokens_per_example = getattr(config, "tokens", None) or config.block_size
    plain_args = {k: _plain(v) for k, v in vars(args).items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{arch} {args.mlp}: {n_params} parameters, {task.steps_per_epoch} steps per epoch, out {args.out}")
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout and LUT training noise, per epoch
        model.train()
        t0 = time.perf_counter()
        seen, loss_sum, correct, count = 0, 0.0, 0, 0
        bar = tqdm(task.batches(epoch, args.seed), total=task.steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress, mininterval=1.0)
        for i, (xb, yb) in enumerate(bar):
            step = epoch * task.steps_per_epoch + i
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, args.lr, args.warmup) * g.get("lr_scale", 1.0)
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for _, mlp in model.lut_mlps():
                if hasattr(mlp, "clamp_"):
                    mlp.clamp_()
            n = yb.numel()
            loss_sum += loss.item() * n
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
        train_seconds = time.perf_counter() - t0
        ev = evaluate_arrays(model, task.eval_x, task.eval_y, batch_size=256, progress=not args.no_progress,
                             desc=f"eval {task.eval_split}")
        row = {"epoch": epoch + 1, "train_loss": loss_sum / count, "train_accuracy": correct / count,
               f"{task.eval_split}_loss": ev["loss"], f"{task.eval_split}_accuracy": ev["accuracy"],
               "train_seconds": round(train_seconds, 1), "tokens_per_second": round(seen / train_seconds)}
        if arch == "gpt":
            row["val_bits_per_char"] = ev["bits_per_char"]
        metrics.append(row)
        ckpt = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": args.task, "arch": arch,
            "config": dataclasses.asdict(config), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "vocab": task.vocab, "metrics": metrics, "args": plain_args, "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
        }
        save_checkpoint(ckpt_path, ckpt)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print(" ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    print(f"wrote {ckpt_path}")
    return 0
