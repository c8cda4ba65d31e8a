"""The integer-only ViT (I-ViT style): fake quantization in training, integers only in eval.

`IntegerViT` has the float ViT's parameters (same state-dict names, so a float checkpoint
initialises it) plus one `ActQuant` per activation that is quantized, under `quant.`:

- train mode, float input: the float ViT with every quantization point simulated
  (`quant.fake_quant`, straight-through): int8 weights per output channel, int8 LayerNorm
  outputs, q, k, v, context, dense hidden and GELU outputs, uint8 attention probabilities
  (scale 1/255), the int16 residual stream; a LUT MLP quantizes its own input (its
  `input_scale` and bits are then LayerNorm 2's output grid);
- eval mode: `integer_program()` turns weights and scales into integers once (float64 at
  that step only, like an export), and the forward runs `forward_program`: int64 tensors,
  the ops of `quant` (= `contract.integer`), uint8 pixels in, int32 logits out. Given float
  (normalised) images, eval converts them back to pixels, runs the integers and returns
  logits * logit scale as float, so training's evaluation reports the integer model.

Until every quantizer has seen a batch (amax = 0, e.g. while the LUT MLPs are calibrated),
eval mode runs the float path, where uncalibrated quantizers are the identity.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..contract import integer as spec
from ..contract.golden_model import LOGIT_BITS, RESIDUAL_BITS
from . import quant as Q
from .data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from .integer_program import integer_program, program_tensors
from .vit import DenseMLP, ViT

QUANT_PREFIX = "quant."
LN_EPS = 1e-5
# The 16-bit grids (residual stream, logits) keep their amax at twice the batch maxima seen in
# training: with headroom 1 about 0.25 % of test logits saturated (none beyond 1.05x amax, on
# the short-trained integer QuWeiT of docs/results.md); one bit of 16 is cheap.
WIDE_HEADROOM = 2.0


def is_quant_state(key: str) -> bool:
    """True for the state-dict entries only an IntegerViT has (its activation scales)."""
    return key.startswith(QUANT_PREFIX)


def _names(depth: int, dense: bool) -> dict:
    names = {"res": RESIDUAL_BITS, "logits": LOGIT_BITS, "ln_f": 8}
    for i in range(depth):
        for part in ("ln1", "q", "k", "v", "ctx"):
            names[f"b{i}_{part}"] = 8
        if dense:
            for part in ("ln2", "hidden", "gelu"):
                names[f"b{i}_{part}"] = 8
    return names


class IntegerViT(ViT):
    """ViT with `config.integer`: see the module docstring."""

    def __init__(self, config):
        super().__init__(config)
        dense = config.mlp == "dense"
        self.quant = nn.ModuleDict({k: Q.ActQuant(b, headroom=WIDE_HEADROOM if b > 8 else 1.0)
                                    for k, b in _names(config.depth, dense).items()})
        self._program = None

    # -- mode and caching ------------------------------------------------------------------------

    def train(self, mode: bool = True):
        self._program = None  # weights or scales may change: rebuild the integers on next use
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._program = None
        return super().load_state_dict(*args, **kwargs)

    def calibrated(self) -> bool:
        """Every activation quantizer has seen a batch (else eval mode runs the float path)."""
        return all(q.calibrated for q in self.quant.values())

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            if self.training:
                raise ValueError("uint8 pixels are the integer (eval-mode) input; call eval() first")
            return self.integer_logits(x)
        if self.training or not self.calibrated():
            return self.fake_quant_forward(x)
        pixels = to_pixels(x)
        return self.integer_logits(pixels).float() * self.quant["logits"].scale()

    def integer_logits(self, pixels: Tensor) -> Tensor:
        """uint8 pixels (B, C, H, W) -> int32 logits (B, classes), integers only.

        Runs on the CPU whatever the model's device (torch has no int64 matmul on CUDA)."""
        if self._program is None:
            self._program = program_tensors(integer_program(self), "cpu")
        return forward_program(self._program, pixels.cpu(), self._lut_counts).to(torch.int32).to(pixels.device)

    def _lut_counts(self, index: int, q: Tensor) -> Tensor:
        """Counts of block `index`'s LUT MLP for int tokens q (N, d): its backend if attached, else torch."""
        mlp = self.blocks[index].mlp
        if mlp.backend is not None:
            return torch.as_tensor(np.asarray(mlp.backend(q)), dtype=torch.int64, device=q.device)
        with torch.no_grad():
            device = mlp.input_scale.device
            return torch.round(mlp.counts(q.to(device, torch.float32))).long().cpu()

    # -- train mode: fake quantization -----------------------------------------------------------

    def fake_quant_forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) normalised float -> (B, classes)
        c, q = self.config, self.quant
        w = Q.fake_weight(self.patch_embed.weight)
        x = F.conv2d(x, w, self.patch_embed.bias, stride=c.patch).flatten(2).transpose(1, 2)  # (B, N, d)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, d)
        x = q["res"](self.drop(x + self.pos))
        for i, block in enumerate(self.blocks):
            x = q["res"](x + self._fq_attention(i, block, x))
            x = q["res"](x + self._fq_mlp(i, block, x))
        h = q["ln_f"](F.layer_norm(x, (c.d,), self.ln_f.weight, self.ln_f.bias, LN_EPS))
        h = h[:, 0] if self.cls_token is not None else h.mean(dim=1)  # (B, d)
        return q["logits"](F.linear(h, Q.fake_weight(self.head.weight), self.head.bias))

    def _fq_attention(self, i, block, x):  # (B, T, d) -> (B, T, d)
        q, attn = self.quant, block.attn
        B, T, C = x.shape
        h = q[f"b{i}_ln1"](F.layer_norm(x, (C,), block.ln1.weight, block.ln1.bias, LN_EPS))
        qkv = F.linear(h, Q.fake_weight(attn.qkv.weight), attn.qkv.bias)  # (B, T, 3C)
        parts = [q[f"b{i}_{n}"](t) for n, t in zip("qkv", qkv.split(C, dim=2))]
        qh, kh, vh = (t.view(B, T, attn.heads, C // attn.heads).transpose(1, 2) for t in parts)  # (B, h, T, C/h)
        p = torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(C // attn.heads), dim=-1)  # (B, h, T, T)
        p = Q.fake_quant(p, 1.0 / spec.PROB_MAX, 0, spec.PROB_MAX)
        ctx = q[f"b{i}_ctx"]((p @ vh).transpose(1, 2).reshape(B, T, C))
        return attn.resid_dropout(F.linear(ctx, Q.fake_weight(attn.proj.weight), attn.proj.bias))

    def _fq_mlp(self, i, block, x):  # (B, T, d) -> (B, T, d)
        h = F.layer_norm(x, (x.shape[-1],), block.ln2.weight, block.ln2.bias, LN_EPS)
        mlp = block.mlp
        if not isinstance(mlp, DenseMLP):
            return mlp(h)  # quantizes h on its own input grid, then y = a * c + b
        q = self.quant
        h = q[f"b{i}_ln2"](h)
        f = q[f"b{i}_hidden"](F.linear(h, Q.fake_weight(mlp.fc.weight), mlp.fc.bias))
        g = q[f"b{i}_gelu"](F.gelu(f))
        return mlp.dropout(F.linear(g, Q.fake_weight(mlp.proj.weight), mlp.proj.bias))


def to_pixels(x: Tensor) -> Tensor:
    """Normalised Fashion-MNIST images back to uint8 pixels: round_half_up((x * std + mean) * 255)."""
    p = Q.round_half_up((x.float() * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255.0)
    return p.clamp(0, 255).to(torch.uint8)


def forward_program(P: dict, pixels: Tensor, lut_counts) -> Tensor:
    """The integer forward on torch int64 tensors, op for op `contract.golden_model._logits`.

    P: `program_tensors(integer_program(model))`; lut_counts(block index, q (N, d)) -> counts."""
    x = _embed(P, pixels)  # (B, T, d) int16 values
    for i, blk in enumerate(P["blocks"]):
        x = Q.add_aligned(x, _attention(P, blk, x), blk["proj"]["m"], blk["proj"]["s"], RESIDUAL_BITS)
        h = _ln(x, blk["ln2"])  # (B, T, d)
        p = blk["mlp"]
        if p["kind"] == "dense":
            g = Q.lookup(_lin(h, p["fc"]), p["gelu"])  # (B, T, 4d)
            x = Q.add_aligned(x, Q.linear(g, p["proj"]["w"], p["proj"]["b"]), p["proj"]["m"], p["proj"]["s"],
                              RESIDUAL_BITS)
        else:
            c = lut_counts(i, h.reshape(-1, h.shape[-1])).reshape(h.shape)
            a = p["affine"]
            x = Q.add_aligned(x, c * a["a"] + a["b"], a["m"], a["s"], RESIDUAL_BITS)
    h = _ln(x, P["ln_f"])  # (B, T, d)
    if P["config"]["pool"] == "cls":
        pooled = h[:, 0]
    else:
        T = h.shape[1]
        pooled = torch.div(h.sum(1) + T // 2, T, rounding_mode="floor")
    return _lin(pooled, P["head"], LOGIT_BITS)  # (B, classes)


def _ln(x, p):
    return Q.layernorm(x, p["g"], p["b"], p["m"], p["s"], p["bits"])


def _lin(x, p, bits=8):
    return Q.requantize(Q.linear(x, p["w"], p["b"]), p["m"], p["s"], bits)


def _embed(P, pixels):
    e = P["embed"]
    x = Q.requantize(Q.linear(Q.patches(pixels, P["config"]["patch"]), e["w"]) + e["b"], e["m"], e["s"],
                     RESIDUAL_BITS)  # (B, N, d)
    if e["cls"] is not None:
        x = torch.cat([e["cls"].expand(x.shape[0], 1, -1), x], dim=1)  # (B, N+1, d)
    return x


def _attention(P, blk, x):  # (B, T, d) -> (B, T, d) accumulators of the output projection
    B, T, d = x.shape
    heads = P["config"]["heads"]
    qkv = _lin(_ln(x, blk["ln1"]), blk["qkv"])  # (B, T, 3d)
    q, k, v = (t.reshape(B, T, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=2))  # (B, h, T, d/h)
    p = Q.softmax(q @ k.transpose(-2, -1), blk["softmax"]["m"], blk["softmax"]["s"])  # (B, h, T, T)
    ctx = Q.requantize(p @ v, blk["ctx"]["m"], blk["ctx"]["s"], 8).transpose(1, 2).reshape(B, T, d)
    return Q.linear(ctx, blk["proj"]["w"], blk["proj"]["b"])

