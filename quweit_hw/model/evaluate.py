"""Evaluation of a checkpoint's model on its task: the inputs in a fixed order, loss and accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from .data import CharText, load_fashion_mnist, read_text, sequential_windows


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
        raise UserError(f"unknown task {task!r}")
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
