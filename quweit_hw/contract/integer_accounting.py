"""Accounting of the integer-only model: operations and energy of one inference of a program
(contract.golden_model), counted from its arrays' shapes, beside its integer dense twin.

What one operation is, per op of contract.integer (T tokens, width C):
- a *MAC* is one 8-bit multiply (int8 x int8, or the uint8 probability or LUT count x int8)
  and its accumulating add: the matrix products, and the LUT affine step c * a + b;
- a *wide multiply* is any other product: acc * m of every requantization and residual
  alignment, the softmax's delta * m and e * R, the LayerNorm's C * x, d * d, d * r and z * g;
- an *add* is an addition outside a MAC: biases, residual adds, the sums of LayerNorm and
  softmax, delta = max - score, the mean pool; a rounding shift's own half-add is in the shift;
- a *shift* is a rounding right shift (requantization, alignment, LayerNorm's z, the
  softmax's u, e and p);
- a *division*: the softmax's one per row, the LayerNorm's two per token (V // C and
  2**40 // sigma), the mean pool's one per channel; an *isqrt* (one per LayerNorm token) is
  ISQRT_ITERATIONS Newton steps, each a division, an add and a shift;
- *comparisons*: the LUT blocks' thermometer comparators (those some LUT reads), the
  softmax's row maximum (T - 1 per row) and the argmax over the logits;
- *LUT lookups* (one per LUT node), *table lookups* (exp2 per score, GELU per hidden unit),
  *popcount adds* (group_size - 1 per group).
Not counted: saturation clamps, the pixel zero point (p - 128 flips the top bit) and the
class token (a constant). With pool="cls" the final LayerNorm and the head see only the
class token. Imports no torch.
"""

from dataclasses import dataclass, fields

from . import integer as I
from .energy import COMPARE_PJ, DIVISION_PJ, ENERGY_PJ, LUT_LOOKUP_PJ, POPCOUNT_ADD_PJ, SHIFT_PJ, TABLE_LOOKUP_PJ

TWIN_HIDDEN = 4  # the dense twin's MLP: Linear(d, 4d), GELU table, Linear(4d, d) (model/vit.py DenseMLP)
PARTS = ("embed", "layernorm", "qkv", "scores", "softmax", "context", "proj", "mlp in", "mlp out", "head")


@dataclass
class IntOps:
    macs: int = 0
    wide_mults: int = 0
    adds: int = 0
    shifts: int = 0
    divisions: int = 0
    isqrts: int = 0
    compares: int = 0
    lut_lookups: int = 0
    table_lookups: int = 0
    popcount_adds: int = 0

    def __iadd__(self, other):
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def energy_pj(self):
        """pJ by the constants of contract/energy.py: a MAC an int8 mult and add, a wide multiply
        and an add the 32-bit rows, an isqrt its Newton steps."""
        i8, i32 = ENERGY_PJ["int8"], ENERGY_PJ["int32"]
        isqrt = I.ISQRT_ITERATIONS * (DIVISION_PJ + i32["add"] + SHIFT_PJ)
        return (self.macs * (i8["mult"] + i8["add"]) + self.wide_mults * i32["mult"] + self.adds * i32["add"]
                + self.shifts * SHIFT_PJ + self.divisions * DIVISION_PJ + self.isqrts * isqrt
                + self.compares * COMPARE_PJ + self.lut_lookups * LUT_LOOKUP_PJ
                + self.table_lookups * TABLE_LOOKUP_PJ + self.popcount_adds * POPCOUNT_ADD_PJ)


def requantize(n):
    """n outputs of a requantization (or a residual alignment, without its add): acc * m, shift."""
    return IntOps(wide_mults=n, shifts=n)


def linear(rows, out, k, bias=True):
    """rows x (out, k) int8 products, plus a bias per output."""
    return IntOps(macs=rows * out * k, adds=rows * out if bias else 0)


def residual(tokens, d):
    """add_aligned: the alignment (acc * m, shift) and the add, per element."""
    ops = requantize(tokens * d)
    ops.adds += tokens * d
    return ops


def layernorm(tokens, c):
    """Per token: S (C-1 adds), d = C x - S (C mults, C adds), V (C mults, C-1 adds), V // C and
    2**40 // sigma (2 divisions), one isqrt, z (C mults, C shifts), z g + b (C mults, C adds),
    the requantization (C mults, C shifts)."""
    return IntOps(wide_mults=5 * c * tokens, adds=(4 * c - 2) * tokens, shifts=2 * c * tokens,
                  divisions=2 * tokens, isqrts=tokens)


def softmax(rows, t):
    """Per row of t scores: max (t-1 compares), delta (t adds), u = delta * m (t mults, t shifts),
    exp2 (t lookups, t shifts), Z (t-1 adds), R (1 division), p = e * R (t mults, t shifts)."""
    return IntOps(compares=(t - 1) * rows, adds=(2 * t - 1) * rows, wide_mults=2 * t * rows,
                  shifts=3 * t * rows, table_lookups=t * rows, divisions=rows)


def _mlp(mlp, tokens, d, twin):
    """(mlp in, mlp out) of one block's MLP; `twin`: a LUT MLP counted as the dense twin's."""
    if mlp["kind"] == "dense" or twin:
        hidden = len(mlp["fc"]["w"]) if mlp["kind"] == "dense" else TWIN_HIDDEN * d
        fc = linear(tokens, hidden, d)
        fc += requantize(tokens * hidden)
        fc.table_lookups += tokens * hidden  # GELU
        return fc, linear(tokens, d, hidden)
    block = mlp["block"]
    lut = IntOps(compares=tokens * int(block.used_thresholds().sum()), lut_lookups=tokens * block.lut_nodes,
                 popcount_adds=tokens * d * (block.group_size - 1))
    return lut, IntOps(macs=tokens * d)  # c * a + b: the add is the MAC's


def account_program(program, *, twin=False):
    """{part: IntOps} of one inference of `program`; twin=True counts every LUT MLP as the integer
    dense twin's MLP (the comparison the paper makes). Parts are PARTS."""
    c = program["config"]
    w = program["embed"]["w"]
    d, k = w.shape
    patches = (c["image_size"] // c["patch"]) ** 2
    tokens = patches + (program["embed"]["cls"] is not None)
    heads, classes = c["heads"], len(program["head"]["w"])
    parts = {name: IntOps() for name in PARTS}
    parts["embed"] += linear(patches, d, k)
    parts["embed"] += requantize(patches * d)
    for blk in program["blocks"]:
        parts["layernorm"] += layernorm(2 * tokens, d)
        parts["qkv"] += linear(tokens, 3 * d, d)
        parts["qkv"] += requantize(tokens * 3 * d)
        parts["scores"] += linear(tokens * heads, tokens, d // heads, bias=False)
        parts["softmax"] += softmax(tokens * heads, tokens)
        parts["context"] += linear(tokens * heads, d // heads, tokens, bias=False)
        parts["context"] += requantize(tokens * d)
        parts["proj"] += linear(tokens, d, d)
        parts["proj"] += residual(tokens, d)
        mlp_in, mlp_out = _mlp(blk["mlp"], tokens, d, twin)
        parts["mlp in"] += mlp_in
        parts["mlp out"] += mlp_out
        parts["mlp out"] += residual(tokens, d)
    pooled = 1 if c["pool"] == "cls" else tokens
    parts["layernorm"] += layernorm(pooled, d)
    if c["pool"] == "mean":  # (sum + T // 2) // T per channel
        parts["head"] += IntOps(adds=tokens * d, divisions=d)
    parts["head"] += linear(1, classes, d)
    parts["head"] += requantize(classes)
    parts["head"].compares += classes - 1  # argmax
    return parts


def total(parts):
    t = IntOps()
    for ops in parts.values():
        t += ops
    return t


def multiplications(ops):
    """Every multiplication: the MACs' and the wide ones."""
    return ops.macs + ops.wide_mults


def program_report(program, source):
    """The accounts of `program` and of its integer dense twin; `source` names the model."""
    return {"source": source, "config": program["config"], "model": account_program(program),
            "dense": account_program(program, twin=True)}


def bundle_report(path):
    """program_report of the version 2 bundle at `path` (UserError for any other bundle); no torch."""
    from .model_bundle import load_model_bundle

    program, _, _ = load_model_bundle(path)
    return program_report(program, f"bundle {path}")


LABELS = {"embed": "embedding", "layernorm": "LayerNorms", "qkv": "qkv", "scores": "scores q k^T",
          "softmax": "softmax", "context": "context p v", "proj": "attention proj",
          "mlp in": "mlp fc | LUTs", "mlp out": "mlp proj | LUT affine", "head": "pool and head"}
KINDS = (("wide_mults", "wide multiplies"), ("adds", "adds"), ("shifts", "rounding shifts"),
         ("divisions", "divisions"), ("isqrts", f"isqrts ({I.ISQRT_ITERATIONS} steps)"),
         ("compares", "comparisons"), ("lut_lookups", "LUT lookups"), ("table_lookups", "table lookups"),
         ("popcount_adds", "popcount adds"))


def format_program_report(r):
    """The report as text: MACs by part, the other operations, the share of multiplications
    removed and the energy, this model against its integer dense twin."""
    model, dense = r["model"], r["dense"]
    row = lambda label, a, b: f"{label:28}{a:>16,}{b:>16,}"  # noqa: E731
    lines = [f"{r['source']}: integer vit, mlp={r['config']['mlp']}: integer operations per inference (one image)",
             "", f"{'int8 MACs by part':28}{'this model':>16}{'dense twin':>16}"]
    lines += [row("  " + LABELS[p], model[p].macs, dense[p].macs) for p in PARTS if model[p].macs or dense[p].macs]
    mt, dt = total(model), total(dense)
    lines.append(row("int8 MACs", mt.macs, dt.macs))
    lines += [row(label, getattr(mt, kind), getattr(dt, kind)) for kind, label in KINDS]
    lines.append(row("all multiplications", multiplications(mt), multiplications(dt)))
    removed = 1 - multiplications(mt) / multiplications(dt)
    removed_macs = 1 - mt.macs / dt.macs
    em, ed = mt.energy_pj(), dt.energy_pj()
    lines += ["", f"multiplications removed: {removed * 100:.1f} % (int8 MACs: {removed_macs * 100:.1f} %) "
              "against the integer dense twin (paper, I-ViT-T: about 55 %)",
              f"energy, integer arithmetic: {em / 1e6:.4g} uJ vs {ed / 1e6:.4g} uJ dense twin: "
              f"{ed / em:.2f}x more efficient (paper: 2.2x)",
              "energy constants: Horowitz, ISSCC 2014, 45 nm (int8 and int32 rows); lookups, shifts, divisions: "
              "assumptions, see quweit_hw/contract/energy.py"]
    return "\n".join(lines)
