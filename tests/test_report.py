"""Multiplication accounting on configurations small enough to count by hand."""

import pytest

from quweit_hw.model import accounting

VIT = dict(image_size=8, channels=1, patch=4, classes=3, d=8, depth=2, heads=2, pool="cls", mlp="lut",
           lut=dict(hidden=[32], group_size=4, thresholds=5))


def test_dense_mlp_and_attention_by_hand():
    tokens, d = 5, 8  # 4 patches + class token
    dense = accounting.account("vit", VIT, mlp="dense")
    assert dense.parts["mlp"].mult == 2 * 2 * (tokens * d * 4 * d)  # 2 blocks x (fc, proj)
    # qkv 3d^2, out proj d^2 per token; q k^T and att v: T^2 d; scale and normalise: 2 T^2 h
    per_block = tokens * 4 * d * d + 2 * tokens * tokens * d + 2 * tokens * tokens * 2
    assert dense.parts["attention"].mult == 2 * per_block


def test_lut_mlp_has_only_quantize_and_affine_mults():
    tokens, d = 5, 8
    lut = accounting.account("vit", VIT, comparators=[30, 40])
    mlp = lut.parts["mlp"]
    assert mlp.mult == 2 * tokens * d * 2
    assert mlp.lookups == 2 * tokens * (32 + d * 4)
    assert mlp.compares == tokens * (30 + 40)
    assert mlp.popcount_adds == 2 * tokens * d * 3
    dense = accounting.account("vit", VIT, mlp="dense")
    assert lut.parts["attention"].mult == dense.parts["attention"].mult
    removed = 1 - lut.total.mult / dense.total.mult
    assert 0 < removed < 1


def test_causal_attention_counts_half_the_pairs():
    gpt = dict(vocab_size=10, block_size=4, d=8, depth=1, heads=2, mlp="dense", lut=None)
    ops = accounting.account("gpt", gpt).parts["attention"]
    pairs = 4 * 5 // 2
    assert ops.mult == 4 * 4 * 8 * 8 + 2 * pairs * 8 + 2 * pairs * 2


def test_energy_uses_the_documented_constants():
    acc = accounting.Account()
    acc.parts["mlp"] = accounting.Ops(mult=10, add=100, lookups=1000, compares=7, popcount_adds=3)
    assert acc.energy_pj("fp32") == pytest.approx(10 * 3.7 + 100 * 0.9 + 1000 * 0.1 + 10 * 0.03)
    assert acc.energy_pj("int8") == pytest.approx(10 * 0.2 + 100 * 0.03 + 1000 * 0.1 + 10 * 0.03)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch 'cnn'"):
        accounting.account("cnn", VIT)


def test_report_command_on_the_reference(capsys):
    from quweit_hw.cli import main
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert "mlp=lut" in out and "multiplications removed:" in out
    removed = float(out.split("multiplications removed: ")[1].split(" %")[0])
    assert 0 < removed < 100


# --- the integer model's accounting (contract.integer_accounting), from its program -------------

def tiny_integer_model(mlp="lut", pool="cls"):
    """8x8 images in 4x4 patches: 4 patches (+ the class token), d=8, 2 heads, 1 block, 3 classes;
    LUT MLP: 2 thresholds per feature, 16 hidden LUTs, groups of 2 (16 + 8*2 = 32 nodes)."""
    import torch

    from quweit_hw.model import data
    from quweit_hw.model.checkpoint import build_model
    from quweit_hw.model.lutmlp import LUTMLPConfig
    from quweit_hw.model.vit import ViTConfig

    torch.manual_seed(0)
    lut = LUTMLPConfig(d=8, thresholds=2, hidden=(16,), group_size=2, window=8) if mlp == "lut" else None
    config = ViTConfig(image_size=8, patch=4, d=8, depth=1, heads=2, classes=3, pool=pool, mlp=mlp, lut=lut,
                       integer=True)
    model = build_model("vit", config)
    x = torch.randn(16, 1, 8, 8)
    data.calibrate_lut_mlps(model, [x])
    model.train()
    model(x)  # one fake-quant forward sets every activation scale
    return model.eval()


def test_integer_accounting_by_hand():
    from quweit_hw.contract import integer_accounting as A
    from quweit_hw.model.integer_program import integer_program

    program = integer_program(tiny_integer_model())
    comparators = int(program["blocks"][0]["mlp"]["block"].used_thresholds().sum())
    assert 1 <= comparators <= 16
    lut, dense = A.account_program(program), A.account_program(program, twin=True)
    T, d = 5, 8
    # embed 4 patches x 8 x 16 pixels; qkv T x 3d x d; scores and context T^2 d; proj T d^2;
    # LUT affine T d; head 3 x d; the twin's fc and proj T x 4d x d each
    macs = {"embed": 512, "layernorm": 0, "qkv": 960, "scores": 200, "softmax": 0, "context": 200,
            "proj": 320, "mlp in": 0, "mlp out": 40, "head": 24}
    assert {p: ops.macs for p, ops in lut.items()} == macs
    assert {p: ops.macs for p, ops in dense.items()} == {**macs, "mlp in": 1280, "mlp out": 1280}
    t, td = A.total(lut), A.total(dense)
    # 11 LayerNorm tokens (ln1, ln2 on 5 tokens, ln_f on the class token), 10 softmax rows of 5
    assert t.wide_mults == 32 + 11 * 5 * d + 120 + 10 * 2 * T + 40 + 40 + 40 + 3 == 815
    assert td.wide_mults == 815 + T * 4 * d  # the fc's requantization
    assert t.adds == 32 + 11 * (4 * d - 2) + 120 + 10 * (2 * T - 1) + 40 + 40 + 40 + 3 == 695
    assert td.adds == 695 + T * 4 * d + T * d  # fc and proj biases
    assert t.shifts == 32 + 11 * 2 * d + 120 + 10 * 3 * T + 40 + 40 + 40 + 3 == 601
    assert (t.divisions, t.isqrts) == (10 + 2 * 11, 11)
    assert t.compares == 10 * (T - 1) + (3 - 1) + T * comparators
    assert (t.lut_lookups, t.popcount_adds, t.table_lookups) == (T * 32, T * d * 1, 10 * T)
    assert (td.lut_lookups, td.popcount_adds, td.table_lookups, td.compares) == (0, 0, 10 * T + T * 4 * d, 42)
    assert A.multiplications(t) == 2256 + 815 and A.multiplications(td) == 4776 + 975
    # a dense model's twin is itself
    program = integer_program(tiny_integer_model("dense"))
    assert A.account_program(program) == A.account_program(program, twin=True)


def test_integer_accounting_mean_pool():
    from quweit_hw.contract import integer_accounting as A
    from quweit_hw.model.integer_program import integer_program

    parts = A.account_program(integer_program(tiny_integer_model(pool="mean")))
    T, d = 4, 8  # no class token; ln_f on all 4 tokens, (sum + 2) // 4 per channel
    assert parts["head"].adds == T * d + 3 and parts["head"].divisions == d
    assert parts["layernorm"].isqrts == 2 * T + T
    assert parts["scores"].macs == T * T * d


def test_integer_energy_uses_the_documented_constants():
    from quweit_hw.contract.integer_accounting import IntOps

    ops = IntOps(macs=10, wide_mults=2, adds=3, shifts=4, divisions=5, isqrts=1, compares=6, lut_lookups=7,
                 table_lookups=8, popcount_adds=9)
    isqrt = 8 * (32 * 0.1 + 0.1 + 0.1)  # 8 Newton steps: division, add, shift
    assert ops.energy_pj() == pytest.approx(10 * 0.23 + 2 * 3.1 + 3 * 0.1 + 4 * 0.1 + 5 * 3.2 + isqrt + 6 * 0.03
                                            + 7 * 0.1 + 8 * 0.1 + 9 * 0.03)


def test_report_command_on_an_integer_checkpoint_and_its_bundle(tmp_path, capsys):
    import dataclasses

    from quweit_hw.cli import main
    from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from quweit_hw.model.export import export_checkpoint

    model = tiny_integer_model()
    ckpt = tmp_path / "int.pt"
    save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config),
                           "state_dict": model.state_dict(), "metrics": [], "args": {}})
    assert main(["report", str(ckpt)]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["report", str(export_checkpoint(ckpt, tmp_path / "v2"))]) == 0
    from_bundle = capsys.readouterr().out
    assert from_ckpt.splitlines()[1:] == from_bundle.splitlines()[1:]  # only the source line differs
    assert f"{'int8 MACs':28}{'2,256':>16}{'4,776':>16}" in from_bundle.splitlines()
    removed = 100 * (1 - 3071 / 5751)
    assert f"multiplications removed: {removed:.1f} %" in from_bundle
    from quweit_hw.resources import REFERENCE

    assert main(["report", str(REFERENCE)]) == 2  # a version 1 bundle has no whole model
    assert "version 1" in capsys.readouterr().err
