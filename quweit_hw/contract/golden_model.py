"""The whole-model golden model: the integer ViT from its exported integer arrays, in numpy int64.

A *program* is the model as integers (`quweit_hw.model.integer_vit.integer_program` makes one):

    {"config": {"patch", "heads", "pool", "mlp", "d", "classes", ...},
     "input":  {"zero_point": 128, "mean", "std"}        # informative: folded into "embed"
     "embed":  {"w" (d, C*p*p), "b" (N, d), "m" (d,), "s" (d,), "cls" (d,) or None},
     "blocks": [{"ln1": LN, "qkv": LIN, "softmax": {"m", "s"}, "ctx": {"m", "s"},
                 "proj": LIN, "ln2": LN, "mlp": DENSE or LUT}, ...],
     "ln_f": LN, "head": LIN}
    LN    = {"g" (d,), "b" (d,), "m" (d,), "s" (d,), "bits"}
    LIN   = {"w" (C, K) int8, "b" (C,) int32, "m" (C,), "s" (C,)}
    DENSE = {"kind": "dense", "fc": LIN, "gelu": (256,) int8 table, "proj": LIN}
    LUT   = {"kind": "lut", "block": bundle.Block, "affine": {"a" (d,), "b" (d,), "m" (d,), "s" (d,)}}

Dataflow (every op as `contract.integer` states it; widths: int8 into every matrix product,
int16 residual stream, uint8 attention probabilities, int16-range logits returned as int32):

    x = requant16(patches(pixels) @ embed.w^T + embed.b); prepend embed.cls   # (B, T, d)
    per block:
      h = layernorm(x, ln1) int8;  q|k|v = requant8(h @ qkv.w^T + qkv.b)     # (B, T, 3d)
      p = softmax(q_h @ k_h^T) per head; ctx = requant8(p @ v_h)              # (B, T, d)
      x = add_aligned16(x, ctx @ proj.w^T + proj.b)
      h = layernorm(x, ln2)   (the LUT's signed b-bit tokens q for a LUT MLP)
      dense: x = add_aligned16(x, lookup(requant8(h @ fc.w^T + fc.b), gelu) @ proj.w^T + proj.b)
      lut:   c = golden.counts(block, h); x = add_aligned16(x, c * affine.a + affine.b)
    h = layernorm(x, ln_f); pooled = h[:, 0] (cls) or round_half_up(mean over tokens) (mean)
    logits = requant16(pooled @ head.w^T + head.b)

Imports no torch.
"""

import numpy as np

from . import golden
from . import integer as I

RESIDUAL_BITS = 16
LOGIT_BITS = 16


def _ln(x, p):
    return I.layernorm(x, p["g"], p["b"], p["m"], p["s"], p["bits"])


def _lin(x, p, bits=8):
    return I.requantize(I.linear(x, p["w"], p["b"]), p["m"], p["s"], bits)


def embed(program, pixels):
    """uint8 pixels (B, C, H, W) -> the int16 residual stream (B, T, d)."""
    e = program["embed"]
    x = I.requantize(I.linear(I.patches(pixels, program["config"]["patch"]), e["w"]) + e["b"],
                     e["m"], e["s"], RESIDUAL_BITS)  # (B, N, d)
    if e["cls"] is not None:
        cls = np.broadcast_to(np.asarray(e["cls"], np.int64), (len(x), 1, x.shape[2]))
        x = np.concatenate([cls, x], axis=1)  # (B, N+1, d)
    return x


def attention(program, blk, x):
    """The attention branch's accumulators before the residual add: (B, T, d) int64."""
    B, T, d = x.shape
    heads = program["config"]["heads"]
    qkv = _lin(_ln(x, blk["ln1"]), blk["qkv"])  # (B, T, 3d)
    q, k, v = (t.reshape(B, T, heads, d // heads).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=2))
    p = I.softmax(np.matmul(q, k.transpose(0, 1, 3, 2)), blk["softmax"]["m"], blk["softmax"]["s"])  # (B, h, T, T)
    ctx = I.requantize(np.matmul(p, v), blk["ctx"]["m"], blk["ctx"]["s"], 8)  # (B, h, T, d/h)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, d)
    return I.linear(ctx, blk["proj"]["w"], blk["proj"]["b"])


def mlp(blk, x, trace=None):
    """The MLP branch's accumulators before the residual add: (B, T, d) int64. `trace`: a
    list that gets the block's LayerNorm output, the MLP's input (B*T, d) tokens."""
    h = _ln(x, blk["ln2"])  # (B, T, d)
    if trace is not None:
        trace.append(h.reshape(-1, h.shape[-1]))
    p = blk["mlp"]
    if p["kind"] == "dense":
        g = I.lookup(_lin(h, p["fc"]), p["gelu"])  # (B, T, 4d)
        return I.linear(g, p["proj"]["w"], p["proj"]["b"])
    c = golden.counts(p["block"], h.reshape(-1, h.shape[-1])).reshape(h.shape)
    return c * np.asarray(p["affine"]["a"], np.int64) + np.asarray(p["affine"]["b"], np.int64)


def mlp_alignment(blk):
    """The (m, s) that align a block's MLP branch to the residual stream: the dense proj's or the LUT affine's."""
    p = blk["mlp"]
    return (p["proj"] if p["kind"] == "dense" else p["affine"])


def logits(program, pixels, *, chunk=512):
    """uint8 pixels (B, C, H, W) -> (B, classes) int32 logits, in chunks of `chunk` images."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {pixels.dtype}")
    out = [_logits(program, pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)]
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, program["config"]["classes"]), np.int32)


def lut_inputs(program, pixels):
    """Per model block, the (B*T, d) tokens its MLP reads for uint8 `pixels` (B, C, H, W)."""
    trace = []
    _logits(program, np.asarray(pixels), trace)
    return trace


def _logits(program, pixels, trace=None):
    x = embed(program, pixels)
    for blk in program["blocks"]:
        x = I.add_aligned(x, attention(program, blk, x), blk["proj"]["m"], blk["proj"]["s"], RESIDUAL_BITS)
        a = mlp_alignment(blk)
        x = I.add_aligned(x, mlp(blk, x, trace), a["m"], a["s"], RESIDUAL_BITS)
    h = _ln(x, program["ln_f"])  # (B, T, d)
    if program["config"]["pool"] == "cls":
        pooled = h[:, 0]
    else:
        T = h.shape[1]
        pooled = (h.sum(1) + T // 2) // T  # round half up: floor((sum + T/2) / T) for even T too
    return _lin(pooled, program["head"], LOGIT_BITS)


def predictions(program, pixels):
    """argmax of the logits, lowest class index on ties (numpy's argmax)."""
    return logits(program, pixels).argmax(-1)
