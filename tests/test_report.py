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
