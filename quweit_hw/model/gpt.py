"""Causal character-level GPT with a dense or a LUT MLP in every block (nanoGPT style).

The block is `vit.Block` with a causal mask: both models share one definition, so
the dense and LUT variants of either differ only in the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from .vit import Block, check_transformer, init_weights, lut_mlps

if TYPE_CHECKING:
    from .lutmlp import LUTMLP, LUTMLPConfig


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 96
    block_size: int = 64        # context length in characters
    d: int = 64
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0
    mlp: str = "dense"          # "dense" | "lut", as in ViTConfig
    lut: Optional["LUTMLPConfig"] = None

    def __post_init__(self):
        check_transformer(self)
        for name in ("vocab_size", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, not {config!r}")
        self.config = config
        c = config
        self.tok = nn.Embedding(c.vocab_size, c.d)
        self.pos = nn.Embedding(c.block_size, c.d)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, causal=True) for _ in range(c.depth))
        self.ln_f = nn.LayerNorm(c.d)
        self.head = nn.Linear(c.d, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying (nanoGPT)
        init_weights(self, c.depth)

    def forward(self, idx):  # (B, T) long -> (B, T, vocab_size) logits
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T!r} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok(idx) + self.pos(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.ln_f(x))  # (B, T, vocab_size)

    def lut_mlps(self) -> list[tuple[str, "LUTMLP"]]:
        """The LUT-MLP blocks in block order, named as in the state dict ("blocks.0.mlp", ...)."""
        return lut_mlps(self.blocks)

    @torch.no_grad()
    def generate(self, idx, steps: int, temperature: float = 1.0, generator=None):
        """Append `steps` sampled characters to idx (B, T) and return it (B, T + steps)."""
        for _ in range(steps):
            logits = self(idx[:, -self.config.block_size :])[:, -1] / temperature  # (B, vocab)
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
