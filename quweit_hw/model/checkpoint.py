"""Training checkpoints: a model's weights beside its arch and config, so it rebuilds itself."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .gpt import GPT, GPTConfig
from .vit import ViT, ViTConfig

CHECKPOINT_FORMAT = "quweit-hw-checkpoint"
CHECKPOINT_VERSION = 1
ARCHS = {"vit": (ViT, ViTConfig), "gpt": (GPT, GPTConfig)}


def build_model(arch: str, config) -> torch.nn.Module:
    """Build a model from its arch name and config (a config dataclass or the dict `asdict` made)."""
    if arch not in ARCHS:
        raise UserError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHS)}")
    model_cls, config_cls = ARCHS[arch]
    if isinstance(config, dict):
        config = config_cls(**config)
    if getattr(config, "integer", False):  # the integer-only ViT: same parameters, integer eval
        from .integer_vit import IntegerViT

        model_cls = IntegerViT
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
    """The checkpoint dict at `path`; UserError if it is not a quweit-hw checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and truncation errors all mean "not a torch checkpoint"
        raise UserError(f"{str(path)!r} is not a torch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{str(path)!r} is not a quweit-hw checkpoint (format {got!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(
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
        raise UserError(f"{str(path)!r}: cannot rebuild the model: {msg}") from None
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), ckpt


def source_manifest(ckpt: dict, ckpt_path) -> dict:
    """The manifest fields every bundle records of its source: the model, the checkpoint's path
    and sha256, its last metrics, and the exporter's version."""
    from .. import __version__
    from ..contract.bundle_files import file_sha256

    metrics = ckpt.get("metrics") or []
    return {
        "model": {"arch": ckpt["arch"], "task": ckpt["task"], "config": ckpt["config"]},
        "source_checkpoint": {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path)},
        "metrics": metrics[-1] if isinstance(metrics, list) and metrics else metrics,
        "exporter": f"quweit-hw {__version__}",
    }
