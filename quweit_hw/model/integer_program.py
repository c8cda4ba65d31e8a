"""An IntegerViT's weights and frozen scales as integers: the *program* of contract.golden_model.

The only float step of the integer model, done once per eval (like an export), in float64:
weights to int8 with one scale per output channel (`quant.weight_int`, the grid training
used), biases to int32 at the accumulator's scale (round half up, saturated to +-2**30),
every scale ratio to a dyadic multiplier (`contract.integer.dyadic`), the input
normalisation folded into the patch embedding, the GELU into a 256-entry table.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import integer as spec
from ..contract.golden_model import RESIDUAL_BITS
from . import quant as Q
from .blocks import block_from_lut_mlp
from .data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from .vit import DenseMLP

BIAS_LIMIT = 1 << 30


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _round(x) -> np.ndarray:
    """round half up to int64, saturated to +-2**30 (a bias that large would saturate anyway)."""
    return np.clip(np.floor(np.asarray(x, np.float64) + 0.5), -BIAS_LIMIT, BIAS_LIMIT).astype(np.int64)


def _weights(w: torch.Tensor):
    """(w_int (out, K) int64, scale (out,) float64) on the training grid."""
    w_int, scale = Q.weight_int(w.detach().float())
    return _np(w_int).reshape(w.shape[0], -1).astype(np.int64), _np(scale)


def _mult(M) -> dict:
    m, s = spec.dyadic(M)
    return {"m": m, "s": s}


def linear_op(weight, bias, s_in: float, s_out) -> dict:
    """LIN: acc = x @ w^T + b at scale s_in * sw (per channel), requantized (or aligned) to s_out."""
    w, sw = _weights(weight)
    b = _round(_np(bias) / (s_in * sw)) if bias is not None else np.zeros(len(w), np.int64)
    return {"w": w, "b": b, **_mult(s_in * sw / np.asarray(s_out, np.float64))}


def layernorm_op(ln, s_out: float, bits: int) -> dict:
    """LN: gamma as int8 per channel (scale sg), beta at sg * 2**-10, out to s_out."""
    g, sg = _weights(ln.weight.view(-1, 1))
    unit = sg * 2.0**-spec.LN_FRAC_BITS
    return {"g": g[:, 0], "b": _round(_np(ln.bias) / unit), **_mult(unit / s_out), "bits": bits}


def embed_op(model, s_res: float) -> dict:
    """The patch embedding with the pixel normalisation folded in, pos (and cls) added to the bias.

    x_norm = (p/255 - mean)/std = s_x * (p - 128) + c0, so conv(x_norm) = s_x * sw * (w_int . x0)
    + c0 * sw * sum(w_int) + bias; pos[t] joins that bias, one rounding for the whole sum."""
    s_x = 1.0 / (255.0 * FASHION_MNIST_STD)
    c0 = (128.0 / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    w, sw = _weights(model.patch_embed.weight)
    pos = _np(model.pos)[0]  # (T, d)
    first = 1 if model.cls_token is not None else 0
    real = c0 * sw * w.sum(1) + _np(model.patch_embed.bias) + pos[first:]  # (N, d)
    cls = None
    if model.cls_token is not None:
        cls = spec.saturate(_round((_np(model.cls_token)[0, 0] + pos[0]) / s_res), RESIDUAL_BITS)
    return {"w": w, "b": _round(real / (s_x * sw)), **_mult(s_x * sw / s_res), "cls": cls}


def gelu_table(s_in: float, s_out: float) -> np.ndarray:
    """T[i + 128] = saturate8(round_half_up(gelu(i * s_in) / s_out)), i in -128..127 (float64 erf GELU)."""
    i = torch.arange(-128, 128, dtype=torch.float64)
    return spec.saturate(_round(_np(F.gelu(i * s_in)) / s_out), 8)


def block_op(model, i: int, block, s_res: float) -> dict:
    q = lambda name: model.quant[f"b{i}_{name}"].scale()  # noqa: E731
    d, heads = model.config.d, model.config.heads
    s_ln1, s_q, s_k, s_v, s_ctx = q("ln1"), q("q"), q("k"), q("v"), q("ctx")
    s_qkv = np.repeat([s_q, s_k, s_v], d)
    op = {
        "ln1": layernorm_op(block.ln1, s_ln1, 8),
        "qkv": linear_op(block.attn.qkv.weight, block.attn.qkv.bias, s_ln1, s_qkv),
        # scores * s_q s_k / sqrt(d/h) is the real logit; softmax wants it in 1/64 bits of log2
        "softmax": _mult(s_q * s_k / math.sqrt(d // heads) * math.log2(math.e) * 2**spec.EXP_FRAC_BITS),
        "ctx": _mult(s_v / spec.PROB_MAX / s_ctx),
        "proj": linear_op(block.attn.proj.weight, block.attn.proj.bias, s_ctx, s_res),
    }
    mlp = block.mlp
    if isinstance(mlp, DenseMLP):
        s_ln2, s_h, s_g = q("ln2"), q("hidden"), q("gelu")
        op["ln2"] = layernorm_op(block.ln2, s_ln2, 8)
        op["mlp"] = {"kind": "dense", "fc": linear_op(mlp.fc.weight, mlp.fc.bias, s_ln2, s_h),
                     "gelu": gelu_table(s_h, s_g), "proj": linear_op(mlp.proj.weight, mlp.proj.bias, s_g, s_res)}
    else:

        op["ln2"] = layernorm_op(block.ln2, float(mlp.input_scale), mlp.config.bits)
        a, sa = _weights(mlp.affine_a.view(-1, 1))
        op["mlp"] = {"kind": "lut", "block": block_from_lut_mlp(f"blocks.{i}.mlp", mlp),
                     "affine": {"a": a[:, 0], "b": _round(_np(mlp.affine_b) / sa), **_mult(sa / s_res)}}
    return op


@torch.no_grad()
def integer_program(model) -> dict:
    """The program (contract.golden_model) of an IntegerViT whose quantizers are calibrated."""
    if not model.calibrated():
        raise ValueError("the integer model's activation quantizers are not calibrated (train it first)")
    c, s_res = model.config, model.quant["res"].scale()
    s_lnf = model.quant["ln_f"].scale()
    return {
        "config": {"patch": c.patch, "heads": c.heads, "pool": c.pool, "mlp": c.mlp, "d": c.d,
                   "classes": c.classes, "depth": c.depth, "image_size": c.image_size, "channels": c.channels},
        "input": {"zero_point": 128, "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD},
        "embed": embed_op(model, s_res),
        "blocks": [block_op(model, i, b, s_res) for i, b in enumerate(model.blocks)],
        "ln_f": layernorm_op(model.ln_f, s_lnf, 8),
        "head": linear_op(model.head.weight, model.head.bias, s_lnf, model.quant["logits"].scale()),
    }


def program_tensors(program, device="cpu"):
    """The program with every array as an int64 torch tensor on `device` (LUT Blocks left out)."""
    if isinstance(program, dict):
        return {k: program_tensors(v, device) for k, v in program.items() if k != "block"}
    if isinstance(program, list):
        return [program_tensors(v, device) for v in program]
    if isinstance(program, np.ndarray):
        return torch.from_numpy(program.astype(np.int64)).to(device)
    return program
