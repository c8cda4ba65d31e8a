"""Accounting: multiplications, additions, LUT lookups, comparators and energy per inference.

Counts are analytic, from the model configuration, for one inference: one image (ViT) or
one full context of `block_size` characters (GPT). A multiply-accumulate is one
multiplication and one addition; a division by a constant (the quantizer's 1/s_in, the
attention's 1/sqrt(d_head)) is one multiplication. Exponentials, GELU, square roots and
the argmax are counted apart, as nonlinear operations, and carry no energy here.
"""

from dataclasses import dataclass, field

from ..contract.energy import COMPARE_PJ, ENERGY_PJ, LUT_LOOKUP_PJ, POPCOUNT_ADD_PJ
from ..errors import UserError

# Energy constants (and why): contract/energy.py, shared with the integer accounting.
FLOAT_PRECISIONS = ("fp32", "int8")


@dataclass
class Ops:
    mult: int = 0
    add: int = 0
    nonlinear: int = 0
    lookups: int = 0
    compares: int = 0
    popcount_adds: int = 0

    def __iadd__(self, other):
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def mac(self, n):
        self.mult += n
        self.add += n
        return self


@dataclass
class Account:
    parts: dict = field(default_factory=lambda: {"attention": Ops(), "mlp": Ops(), "rest": Ops()})

    @property
    def total(self):
        t = Ops()
        for ops in self.parts.values():
            t += ops
        return t

    def energy_pj(self, precision):
        e = ENERGY_PJ[precision]
        t = self.total
        return (t.mult * e["mult"] + t.add * e["add"] + t.lookups * LUT_LOOKUP_PJ
                + t.compares * COMPARE_PJ + t.popcount_adds * POPCOUNT_ADD_PJ)


def layer_norm(tokens, d):
    # mean and variance: 2d adds; normalise: d subtractions, d multiplications by 1/sigma;
    # affine: d multiplications and d adds; one square root per token
    return Ops(mult=2 * tokens * d, add=4 * tokens * d, nonlinear=tokens)


def attention(tokens, d, heads, causal):
    pairs = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    ops = Ops().mac(tokens * d * 3 * d)  # qkv projection
    ops.add += 3 * tokens * d  # biases
    ops.mac(pairs * d)  # q k^T over all heads
    ops.mult += pairs * heads  # scale by 1/sqrt(d_head)
    ops.nonlinear += pairs * heads  # exp
    ops.add += pairs * heads  # softmax denominator
    ops.mult += pairs * heads  # normalise
    ops.mac(pairs * d)  # att @ v
    ops.mac(tokens * d * d).add += tokens * d  # output projection and its bias
    return ops


def dense_mlp(tokens, d):
    ops = Ops().mac(tokens * d * 4 * d).mac(tokens * 4 * d * d)
    ops.add += tokens * 5 * d  # biases
    ops.nonlinear += tokens * 4 * d  # GELU
    return ops


def lut_mlp(tokens, d, lut, comparators=None):
    """The LUT-MLP block: quantize (d mults), comparators, lookups, popcounts, affine (d mults, d adds)."""
    nodes = sum(lut["hidden"]) + d * lut["group_size"]
    return Ops(
        mult=tokens * d * 2, add=tokens * d,
        lookups=tokens * nodes,
        compares=tokens * (comparators if comparators is not None else d * lut["thresholds"]),
        popcount_adds=tokens * d * (lut["group_size"] - 1),
    )


def account(arch, config, mlp=None, comparators=None):
    """The Account of one inference of a model `arch` ("vit"|"gpt") with `config` (a dict).

    `mlp` overrides the config's MLP kind (to count the dense twin); `comparators` lists the
    comparators each LUT block keeps (default: all d*T)."""
    c = dict(config)
    mlp = mlp or c["mlp"]
    d, depth = c["d"], c["depth"]
    acc = Account()
    if arch == "vit":
        side = c["image_size"] // c["patch"]
        patches = side * side
        tokens = patches + (c.get("pool", "cls") == "cls")
        acc.parts["rest"].mac(patches * c["channels"] * c["patch"] ** 2 * d).add += patches * d + tokens * d
        head_in = 1 if c.get("pool", "cls") == "cls" else tokens
        if c.get("pool") == "mean":
            acc.parts["rest"].add += tokens * d
            acc.parts["rest"].mult += d
        acc.parts["rest"] += layer_norm(head_in, d)
        acc.parts["rest"].mac(d * c["classes"]).add += c["classes"]
        causal = False
    elif arch == "gpt":
        tokens = c["block_size"]
        acc.parts["rest"].add += tokens * d  # token + position embedding
        acc.parts["rest"] += layer_norm(tokens, d)
        acc.parts["rest"].mac(tokens * d * c["vocab_size"])
        causal = True
    else:
        raise ValueError(f"unknown arch {arch!r}")
    for i in range(depth):
        acc.parts["rest"] += layer_norm(tokens, d)  # ln1
        acc.parts["rest"] += layer_norm(tokens, d)  # ln2
        acc.parts["rest"].add += 2 * tokens * d  # residual adds
        acc.parts["attention"] += attention(tokens, d, c["heads"], causal)
        if mlp == "lut":
            acc.parts["mlp"] += lut_mlp(tokens, d, c["lut"], None if comparators is None else comparators[i])
        else:
            acc.parts["mlp"] += dense_mlp(tokens, d)
    return acc


def model_report(ckpt_path, loaded=None):
    """Accounts of a checkpoint's model and of its dense twin, with the exact comparators kept.
    `loaded`: the (model, ckpt) of load_checkpoint(ckpt_path), if already loaded."""
    from .blocks import model_blocks
    from .checkpoint import load_checkpoint

    model, ckpt = loaded or load_checkpoint(ckpt_path)
    arch, config = ckpt["arch"], ckpt["config"]
    comparators = [int(b.used_thresholds().sum()) for b in model_blocks(model)] if config["mlp"] == "lut" else None
    return {
        "arch": arch, "task": ckpt["task"], "config": config,
        "model": account(arch, config, comparators=comparators),
        "dense": account(arch, config, mlp="dense"),
    }


def report_text(ckpt_path):
    """`quweit-hw report CHECKPOINT`: an integer model's program accounting
    (contract.integer_accounting), a float model's analytic one, each against its dense twin."""
    from ..contract.integer_accounting import format_program_report, program_report
    from .checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(ckpt_path)
    if not getattr(model.config, "integer", False):
        return format_report(model_report(ckpt_path, (model, ckpt)))
    from .integer_program import integer_program

    if not model.calibrated():
        raise UserError(f"{str(ckpt_path)!r}: the integer model's scales are not calibrated (train it first)")
    return format_program_report(program_report(integer_program(model), f"checkpoint {ckpt_path}"))


def _fmt(n):
    return f"{n:,}"


def format_report(r):
    model, dense = r["model"], r["dense"]
    unit = "image" if r["arch"] == "vit" else f"context of {r['config']['block_size']} characters"
    lines = [f"{r['arch']} ({r['task']}), mlp={r['config']['mlp']}: operations per inference (one {unit})", ""]
    lines.append(f"{'':24}{'this model':>16}{'dense twin':>16}")
    for part in ("attention", "mlp", "rest"):
        for kind in ("mult", "add"):
            lines.append(f"{part + ' ' + kind + 's':24}{_fmt(getattr(model.parts[part], kind)):>16}{_fmt(getattr(dense.parts[part], kind)):>16}")
    mt, dt = model.total, dense.total
    for kind in ("mult", "add", "nonlinear", "lookups", "compares", "popcount_adds"):
        label = {"lookups": "LUT lookups", "compares": "comparators", "popcount_adds": "popcount adds",
                 "nonlinear": "nonlinear ops"}.get(kind, f"total {kind}s")
        lines.append(f"{label:24}{_fmt(getattr(mt, kind)):>16}{_fmt(getattr(dt, kind)):>16}")
    removed = 1 - mt.mult / dt.mult
    lines += ["", f"multiplications removed: {removed * 100:.1f} % (paper, I-ViT-T: about 55 %)"]
    for precision in FLOAT_PRECISIONS:
        em, ed = model.energy_pj(precision), dense.energy_pj(precision)
        lines.append(f"energy, {precision} arithmetic: {em / 1e6:.3f} uJ vs {ed / 1e6:.3f} uJ dense: "
                     f"{ed / em:.2f}x more efficient (paper: 2.2x)")
    lines.append("energy constants: Horowitz, ISSCC 2014, 45 nm; LUT lookup 0.1 pJ, comparator and popcount add "
                 "0.03 pJ (assumptions, see quweit_hw/contract/energy.py)")
    return "\n".join(lines)
