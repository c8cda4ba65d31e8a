"""Training data: Fashion-MNIST from Debian's idx files, character text, and LUT-MLP calibration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..contract.fashion_mnist import FASHION_MNIST_DIR, fashion_mnist_pixels
from ..errors import UserError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_PACKAGE = "fortunes-min"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Pixel statistics of the Fashion-MNIST training set (of x / 255).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


_FASHION_CACHE: dict = {}


def load_fashion_mnist(split: str = "train", root=None):
    """Return (images, labels): images (N, 1, 28, 28) float32 normalised, labels (N,) int64.

    split is "train" (60000 images) or "test" (10000); the pixels are contract.fashion_mnist's.
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    key = (str(root), split)
    if key not in _FASHION_CACHE:
        pixels, labels = fashion_mnist_pixels(split, root)
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # (N, 1, 28, 28)
        _FASHION_CACHE[key] = (x, torch.from_numpy(labels))
    return _FASHION_CACHE[key]


AUGMENTATIONS = ("none", "crop-flip")
CROP_PAD = 2  # crop-flip: pixels of background added on each side before the 28x28 crop


def augment_fashion_mnist(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A training batch (B, 1, 28, 28), normalised, augmented as `kind` names: "none" returns it
    as it is; "crop-flip" shifts each image by up to CROP_PAD pixels in each direction (the
    uncovered border is background, pixel 0) and mirrors it left-right with probability 1/2,
    the usual augmentation of small ViTs on 28x28 images. Random draws come from `generator`
    only, so a run stays a function of its seed."""
    if kind == "none":
        return x
    if kind != "crop-flip":
        raise UserError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    b, _, h, w = x.shape
    background = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * CROP_PAD + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = dx + torch.arange(w)  # (B, W)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


# --- text ------------------------------------------------------------------------------------


def text_files(path=None) -> list[Path]:
    """The files a text path names: a file, or a folder's plain files (fortune's .dat indexes and .u8 links skipped)."""
    path = Path(path) if path is not None else FORTUNES_DIR
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
        )
        if files:
            return files
    hint = f"; install the Debian package {FORTUNES_PACKAGE}" if path == FORTUNES_DIR else ""
    raise UserError(f"no text found at {str(path)!r}{hint}")


def read_text(path=None) -> str:
    """All text under `path` (default: Debian's fortunes), files joined in name order."""
    parts = []
    for f in text_files(path):
        parts.append(f.read_bytes().decode("utf-8", errors="replace"))
    text = "".join(parts)
    if len(text) < 2:
        raise UserError(f"text at {str(path)!r} is too short to train on ({len(text)} characters)")
    return text


@dataclass(frozen=True)
class CharText:
    """A character corpus encoded with its vocabulary; the last `val_fraction` is the validation split."""

    vocab: str                  # the characters, sorted; token i is vocab[i]
    train: torch.Tensor         # (N_train,) int64
    val: torch.Tensor           # (N_val,) int64

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1, vocab: str | None = None) -> "CharText":
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"val_fraction must be in (0, 1), not {val_fraction!r}")
        if vocab is None:
            vocab = "".join(sorted(set(text)))
        missing = sorted(set(text) - set(vocab))
        if missing:
            raise UserError(f"text holds characters outside the vocabulary: {''.join(missing[:10])!r}")
        ids = encode(text, vocab)
        n_val = max(1, int(len(ids) * val_fraction))
        return cls(vocab=vocab, train=ids[:-n_val], val=ids[-n_val:])

    def split(self, name: str) -> torch.Tensor:
        """"train", or "val"/"test" (one held-out split; "test" is an alias of "val")."""
        if name == "train":
            return self.train
        if name in ("val", "test"):
            return self.val
        raise UserError(f"text split must be 'train', 'val' or 'test', not {name!r}")


def encode(text: str, vocab: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids, vocab: str) -> str:
    return "".join(vocab[int(i)] for i in ids)


def random_windows(ids: torch.Tensor, batch_size: int, block_size: int, generator=None):
    """A batch of random windows: inputs (B, T) and next-character targets (B, T)."""
    if len(ids) < block_size + 1:
        raise UserError(f"text split of {len(ids)} characters is shorter than block_size + 1 = {block_size + 1}")
    start = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)  # (T,)
    x = ids[start[:, None] + offsets]  # (B, T)
    y = ids[start[:, None] + offsets + 1]  # (B, T)
    return x, y


def sequential_windows(ids: torch.Tensor, block_size: int):
    """Non-overlapping windows covering the split once (evaluation): inputs and targets (N, T)."""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise UserError(f"text split of {len(ids)} characters is shorter than block_size + 1 = {block_size + 1}")
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    return x, y


# --- calibration -----------------------------------------------------------------------------


class _Captured(Exception):
    """Raised by a forward pre-hook to stop the forward pass once the block input is captured."""


@torch.no_grad()
def calibrate_lut_mlps(model, batches, progress: bool = False) -> int:
    """Fit every LUT-MLP block's quantizer and thermometer thresholds on its real input.

    Block by block, in order: run the model on every batch of `batches` (a list of model
    inputs) until the block is reached, capture the LayerNorm output the block receives
    (flattened to (N, d)), and call its `calibrate`. Later blocks see the outputs of the
    blocks calibrated before them, as in inference. Returns the number of tokens per block.
    """
    blocks = model.lut_mlps()
    was_training = model.training
    model.eval()
    n = 0
    try:
        for name, mlp in blocks:
            captured = []

            def hook(module, args):
                captured.append(args[0].detach().reshape(-1, args[0].shape[-1]))
                raise _Captured

            handle = mlp.register_forward_pre_hook(hook)
            try:
                for x in batches:
                    try:
                        model(x)
                    except _Captured:
                        pass
            finally:
                handle.remove()
            h = torch.cat(captured)  # (N, d)
            mlp.calibrate(h)
            n = len(h)
            if progress:
                print(f"calibrated {name} on {n} tokens")
    finally:
        model.train(was_training)
    return n
