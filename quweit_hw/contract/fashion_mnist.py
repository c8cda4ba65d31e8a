"""Fashion-MNIST as the integer model sees it: uint8 pixels and labels straight from Debian's idx
files, read with numpy (the one idx reader; model/data normalises these for torch). No torch."""

import gzip
from pathlib import Path

import numpy as np

from ..errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
SPLITS = {"train": "train", "test": "t10k"}  # split -> the files' prefix


def read_idx(path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed): big-endian header, unsigned byte data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{str(path)!r} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{str(path)!r} holds {data.size} bytes of data, its header says {shape}")
    return data.reshape(shape)


def fashion_mnist_pixels(split="train", root=None, limit=None):
    """(pixels (N, 1, 28, 28) uint8, labels (N,) int64) of a split ("train": 60000, "test": 10000),
    the first `limit` only if given; UserError naming the Debian package if a file is missing."""
    if split not in SPLITS:
        raise UserError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    paths = [root / f"{SPLITS[split]}-images-idx3-ubyte.gz", root / f"{SPLITS[split]}-labels-idx1-ubyte.gz"]
    for p in paths:
        if not p.is_file():
            raise UserError(f"Fashion-MNIST file {str(p)!r} is missing; install the Debian package "
                            f"{FASHION_MNIST_PACKAGE} (sudo apt-get install {FASHION_MNIST_PACKAGE})")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UserError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    return np.ascontiguousarray(images[:limit, None]), labels[:limit].astype(np.int64)
