"""Vision transformer for small images, with a dense or a LUT MLP in every block.

nanoGPT style: one frozen config, every module takes it. The transformer block
(`Block`: pre-LayerNorm attention and MLP) is defined here once and reused by
the character GPT in `gpt.py` with a causal mask, so the two models and their
dense and LUT variants differ only where they must.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # lutmlp.py is imported lazily: dense models never need it
    from .lutmlp import LUTMLP, LUTMLPConfig

MLP_KINDS = ("dense", "lut")


def lut_config(value, d: int):
    """Return `value` (a LUTMLPConfig, a dict from `asdict`, or None) as a LUTMLPConfig for width d."""
    from .lutmlp import LUTMLPConfig

    if isinstance(value, dict):
        value = dict(value)
        if "hidden" in value:
            value["hidden"] = tuple(value["hidden"])
        value = LUTMLPConfig(**value)
    if value is None:
        value = LUTMLPConfig(d=d)
    if not isinstance(value, LUTMLPConfig):
        raise TypeError(f"lut must be a LUTMLPConfig, a dict or None, not {value!r}")
    if value.d != d:
        raise ValueError(f"lut.d must equal the model width d={d}, not {value.d!r}")
    return value


def check_transformer(config) -> None:
    """Checks shared by ViTConfig and GPTConfig; converts `lut` into a LUTMLPConfig in place."""
    for name in ("d", "depth", "heads"):
        v = getattr(config, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, not {v!r}")
    if config.d % config.heads:
        raise ValueError(f"d={config.d} must be divisible by heads={config.heads!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {config.dropout!r}")
    if config.mlp not in MLP_KINDS:
        raise ValueError(f"mlp must be one of {MLP_KINDS}, not {config.mlp!r}")
    if config.mlp == "lut":
        object.__setattr__(config, "lut", lut_config(config.lut, config.d))
    elif config.lut is not None:
        raise ValueError(f"lut must be None for mlp='dense', not {config.lut!r}")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 28
    channels: int = 1
    patch: int = 4
    classes: int = 10
    d: int = 64
    depth: int = 4
    heads: int = 4
    pool: str = "cls"           # "cls": read the class token; "mean": average all tokens
    dropout: float = 0.0
    mlp: str = "dense"          # "dense": Linear(d, 4d), GELU, Linear(4d, d); "lut": LUTMLP(lut)
    lut: Optional["LUTMLPConfig"] = None   # mlp="lut": the LUT-MLP block (None: its defaults at width d)
    integer: bool = False       # True: integer-only (I-ViT style), built as integer_vit.IntegerViT

    def __post_init__(self):
        check_transformer(self)
        for name in ("image_size", "channels", "patch", "classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        if self.image_size % self.patch:
            raise ValueError(f"patch={self.patch!r} must divide image_size={self.image_size}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {self.pool!r}")
        if not isinstance(self.integer, bool):
            raise ValueError(f"integer must be True or False, not {self.integer!r}")

    @property
    def tokens(self) -> int:
        """Tokens per image seen by the blocks (patches, plus the class token for pool='cls')."""
        return (self.image_size // self.patch) ** 2 + (self.pool == "cls")


class SelfAttention(nn.Module):
    def __init__(self, config, causal: bool):
        super().__init__()
        self.heads = config.heads
        self.causal = causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d, 3 * config.d)
        self.proj = nn.Linear(config.d, config.d)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, C/h)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, C/h)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class DenseMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.d, 4 * config.d)
        self.proj = nn.Linear(4 * config.d, config.d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return self.dropout(self.proj(F.gelu(self.fc(x))))


def make_mlp(config) -> nn.Module:
    if config.mlp == "lut":
        from .lutmlp import LUTMLP

        return LUTMLP(config.lut)
    return DenseMLP(config)


class Block(nn.Module):
    """Pre-LayerNorm transformer block; `mlp` reads ln2's output, the input a LUTMLP is calibrated on."""

    def __init__(self, config, causal: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d)
        self.attn = SelfAttention(config, causal)
        self.ln2 = nn.LayerNorm(config.d)
        self.mlp = make_mlp(config)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def lut_mlps(blocks) -> list[tuple[str, "LUTMLP"]]:
    return [(f"blocks.{i}.mlp", b.mlp) for i, b in enumerate(blocks) if not isinstance(b.mlp, DenseMLP)]


def init_weights(model: nn.Module, depth: int) -> None:
    """GPT-2 style: N(0, 0.02) linear and embedding weights, zero biases, residual projections
    scaled by 1/sqrt(2 depth). Modules inside a LUTMLP keep the LUTMLP's own initialisation."""
    lut = {id(m) for _, mlp in lut_mlps(model.blocks) for m in mlp.modules()}
    for name, m in model.named_modules():
        if id(m) in lut:
            continue
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * depth) if name.endswith("proj") else 0.02
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, not {config!r}")
        self.config = config
        c = config
        self.patch_embed = nn.Conv2d(c.channels, c.d, kernel_size=c.patch, stride=c.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d)) if c.pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, c.tokens, c.d))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.ln_f = nn.LayerNorm(c.d)
        self.head = nn.Linear(c.d, c.classes)
        init_weights(self, c.depth)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x):  # (B, channels, H, W) float -> (B, classes) logits
        x = self.patch_embed(x)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, C)
        x = self.drop(x + self.pos)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.ln_f(x)
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, C)
        return self.head(x)  # (B, classes)

    def lut_mlps(self) -> list[tuple[str, "LUTMLP"]]:
        """The LUT-MLP blocks in block order, named as in the state dict ("blocks.0.mlp", ...)."""
        return lut_mlps(self.blocks)

