"""The whole-model golden model: torch's integer eval == contract.golden_model == golden_naive, bit
for bit, on small random integer ViTs (dense and LUT MLP, cls and mean pooling) and on edges."""

import numpy as np
import pytest
import torch

from quweit_hw.contract import golden_model, golden_naive
from quweit_hw.contract import integer as I
from quweit_hw.model import data
from quweit_hw.model.checkpoint import build_model
from quweit_hw.model.integer_program import integer_program
from quweit_hw.model.integer_vit import is_quant_state, to_pixels
from quweit_hw.model.vit import ViT, ViTConfig

from tiny_models import pixels, tiny_config, trained


def check_all_agree(model, pix, naive=4):
    """torch integer eval, the golden model and (on the first `naive` images) the naive loops."""
    torch_logits = model(pix)
    assert torch_logits.dtype == torch.int32
    program = integer_program(model)
    gold = golden_model.logits(program, pix.numpy())
    assert gold.dtype == np.int32
    assert np.array_equal(torch_logits.numpy(), gold), "torch integer eval differs from the golden model"
    assert np.array_equal(np.array(golden_naive.logits(program, pix.numpy()[:naive])), gold[:naive]), \
        "the golden model differs from the naive one"
    return gold


@pytest.mark.parametrize("mlp", ["dense", "lut"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_torch_integer_eval_equals_golden_and_naive(mlp, pool):
    model = trained(mlp, pool)
    gold = check_all_agree(model, pixels())
    assert len(np.unique(gold[2:], axis=0)) > 1, "logits must depend on the input"


@pytest.mark.parametrize("mlp", ["dense", "lut"])
def test_saturation_at_both_ends_of_every_requantization(mlp, monkeypatch):
    model = trained(mlp)
    for q in model.quant.values():  # every activation grid 50x too fine: everything clips
        q.amax.mul_(0.02)
    for _, lut in model.lut_mlps():  # LayerNorm 2's grid is the LUT's input grid
        lut.input_scale.mul_(0.02)
    model.eval()
    hits = {"requantize": [], "add_aligned": []}

    def recording(name, real):
        n, default = (3, 8) if name == "requantize" else (4, 16)  # where `bits` sits in the signature

        def op(*args, **kw):
            out = real(*args, **kw)
            lo, hi = I.signed_limits(args[n] if len(args) > n else kw.get("bits", default))
            hits[name].append((lo, bool((out == lo).any()), bool((out == hi).any())))
            return out
        return op

    pix = pixels(16)
    check_all_agree(model, pix)
    for name in hits:
        monkeypatch.setattr(I, name, recording(name, getattr(I, name)))
    golden_model.logits(integer_program(model), pix.numpy())
    # requantize: embed, per block ln1, qkv, ctx, ln2 (and fc, dense), then ln_f and head;
    # add_aligned: two residual adds per block
    assert len(hits["requantize"]) == 1 + model.config.depth * (5 if mlp == "dense" else 4) + 2
    assert len(hits["add_aligned"]) == 2 * model.config.depth
    for name, calls in hits.items():
        assert all(lo and hi for _, lo, hi in calls), f"some {name} did not saturate at both ends: {calls}"


def test_constant_tokens_give_variance_zero_layernorms_and_uniform_attention():
    model = trained("dense")
    with torch.no_grad():  # a zero stream: every token constant, every attention row all equal
        for p in (model.patch_embed.weight, model.patch_embed.bias, model.pos, model.cls_token):
            p.zero_()
    model.eval()
    gold = check_all_agree(model, pixels(6))
    assert (gold == gold[0]).all(), "a zero stream cannot depend on the pixels"
    program = integer_program(model)
    x = golden_model.embed(program, pixels(2).numpy())
    assert (x == 0).all()
    ln1 = program["blocks"][0]["ln1"]
    out = I.layernorm(x, ln1["g"], ln1["b"], ln1["m"], ln1["s"], 8)
    assert (out == I.requantize(ln1["b"], ln1["m"], ln1["s"])).all(), "LN of a constant token is beta"


def test_float_input_in_eval_runs_the_integers_and_train_mode_is_fake_quant():
    model = trained("dense")
    pix = pixels(8)
    x = (pix.float() / 255 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    assert torch.equal(to_pixels(x), pix)
    scaled = model(x)
    assert torch.equal(scaled.argmax(-1), model(pix).argmax(-1))
    assert torch.equal(scaled, model(pix).float() * model.quant["logits"].scale())
    # the fake-quant float path stays near the integers it simulates (a few logit steps)
    assert (model.fake_quant_forward(x) - scaled).abs().max() < 0.1 * scaled.abs().max()
    model.train()
    with pytest.raises(ValueError, match="eval"):
        model(pix)


def test_a_float_checkpoint_initialises_the_integer_model():
    torch.manual_seed(0)
    float_model = ViT(tiny_config(integer=False))
    int_model = build_model("vit", tiny_config())
    extra = [k for k in int_model.state_dict() if k not in float_model.state_dict()]
    assert extra and all(is_quant_state(k) for k in extra)
    missing, unexpected = int_model.load_state_dict(float_model.state_dict(), strict=False)
    assert sorted(missing) == sorted(extra) and not unexpected
    assert not int_model.calibrated()
    with pytest.raises(ValueError, match="not calibrated"):
        integer_program(int_model)


def write_ckpt(model, path):
    import dataclasses

    from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
                           "metrics": [], "args": {}})
    return path


def test_version_2_bundle_round_trip_and_bad_bundles(tmp_path):
    import json

    from quweit_hw.contract.bundle_files import load_bundle
    from quweit_hw.contract.model_bundle import load_model_bundle, write_model_bundle
    from quweit_hw.errors import UserError
    from quweit_hw.model.export import export_checkpoint

    model = trained("lut", "mean")
    path = export_checkpoint(write_ckpt(model, tmp_path / "int.pt"), tmp_path / "v2")
    program, manifest, blocks = load_model_bundle(path)
    pix = pixels(10)
    assert np.array_equal(golden_model.logits(program, pix.numpy()), model(pix).numpy())
    # the MLP-only flow reads the same LUT blocks from a version 2 bundle
    lut = load_bundle(path).blocks
    assert [b.name for b in lut] == ["blocks.0.mlp", "blocks.1.mlp"]
    q = np.random.default_rng(0).integers(-128, 128, (50, 16))
    from quweit_hw.contract import golden

    ref = integer_program(model)["blocks"][1]["mlp"]["block"]
    assert np.array_equal(golden.counts(lut[1], q), golden.counts(ref, q))
    # a version 1 bundle, an unknown version, other rules, out-of-range multipliers and shifts
    float_model = build_model("vit", tiny_config("lut", integer=False))
    data.calibrate_lut_mlps(float_model, [torch.randn(8, 1, 8, 8)])
    v1 = export_checkpoint(write_ckpt(float_model, tmp_path / "float.pt"), tmp_path / "v1")
    with pytest.raises(UserError, match="version 1 .*needs version 2"):
        load_model_bundle(v1)
    doc = json.loads((path / "manifest.json").read_text())
    for change, message in ((lambda d: d.update(format_version=3), "format version 3"),
                            (lambda d: d["rules"].update(exp_frac_bits=5), "other integer semantics")):
        bad = dict(json.loads(json.dumps(doc)))
        change(bad)
        (path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=message):
            load_model_bundle(path)
    for leaf, value, message in (("m", -1, "multiplier"), ("s", 63, "shift")):
        bad = integer_program(model)
        bad["head"][leaf] = np.full_like(bad["head"][leaf], value)
        out = write_model_bundle(tmp_path / f"bad-{leaf}", bad)
        with pytest.raises(UserError, match=message):
            load_model_bundle(out)


def test_eval_command_on_a_version_2_bundle(tmp_path, capsys):
    import json
    import subprocess
    import sys

    from quweit_hw.cli import main
    from quweit_hw.model.export import export_checkpoint

    if not data.FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    torch.manual_seed(0)
    config = ViTConfig(patch=7, d=16, depth=1, heads=2, integer=True)
    model = build_model("vit", config)
    x, _ = data.load_fashion_mnist("train")
    model.train()
    model(x[:64])
    bundle = export_checkpoint(write_ckpt(model.eval(), tmp_path / "int.pt"), tmp_path / "v2")
    assert main(["eval", str(bundle), "--backend", "golden", "--compare", "--limit", "40"]) == 0
    out = capsys.readouterr().out
    assert "logits differing from torch: 0 of 400; predictions differing: 0 of 40" in out
    # the golden eval (and the report) of a version 2 bundle load no torch: a fresh interpreter
    code = ("import json, sys\nfrom quweit_hw.cli import main\n"
            f"codes = [main(['eval', {str(bundle)!r}, '--backend', 'golden', '--limit', '40']), "
            f"main(['report', {str(bundle)!r}])]\n"
            "print(json.dumps([codes, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[0] == out.splitlines()[0]  # the same accuracy line as above
    assert json.loads(done.stdout.splitlines()[-1]) == [[0, 0], False]
    from quweit_hw.resources import REFERENCE

    assert main(["eval", str(REFERENCE), "--backend", "golden"]) == 2
    assert "version 1" in capsys.readouterr().err


def test_export_refuses_a_whole_model_bundle_of_a_float_checkpoint(tmp_path, capsys):
    from quweit_hw.cli import main
    from quweit_hw.contract.bundle_files import load_bundle
    from quweit_hw.contract.model_bundle import load_model_bundle
    from quweit_hw.errors import UserError
    from quweit_hw.model.export import export_checkpoint

    float_model = build_model("vit", tiny_config("lut", integer=False))
    data.calibrate_lut_mlps(float_model, [torch.randn(8, 1, 8, 8)])
    float_ckpt = write_ckpt(float_model, tmp_path / "float.pt")
    with pytest.raises(UserError, match="is a float model: a version 2 bundle .* needs an integer checkpoint"):
        export_checkpoint(float_ckpt, tmp_path / "a", format_version=2)
    assert main(["export", str(float_ckpt), "--format-version", "2", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "float model" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.pt"], "a refused export writes nothing"
    with pytest.raises(UserError, match="format version must be one of"):
        export_checkpoint(float_ckpt, tmp_path / "c", format_version=3)
    # an integer LUT checkpoint: version 2 by default, its LUT blocks alone on request
    int_ckpt = write_ckpt(trained("lut"), tmp_path / "int.pt")
    v2, v1 = export_checkpoint(int_ckpt, tmp_path / "v2"), export_checkpoint(int_ckpt, tmp_path / "v1", format_version=1)
    assert load_bundle(v1).manifest["format_version"] == 1
    _, _, blocks = load_model_bundle(v2)
    q = np.random.default_rng(0).integers(-128, 128, (40, 16))
    from quweit_hw.contract import golden

    for mine, theirs in zip(load_bundle(v1).blocks, blocks, strict=True):
        assert np.array_equal(golden.counts(mine, q), golden.counts(theirs, q))
    assert main(["eval", str(int_ckpt), "--backend", "golden"]) == 2
    assert "evaluates a version 2 bundle" in capsys.readouterr().err


@pytest.mark.parametrize("config", [{}, {"pool": "mean"}, {"mlp": "lut"},
                                    {"mlp": "lut", "pool": "mean", "depth": 1,
                                     "lut": {"bits": 4, "thresholds": 4, "n": 4, "hidden": (32,), "group_size": 4}}])
def test_random_programs_agree_with_the_naive_model_and_stay_mostly_unsaturated(config, tmp_path):
    """contract.synthetic.random_program: a valid program without torch (a bundle holds it), that
    the golden and the naive model compute alike, and whose values mostly stay in range."""
    from quweit_hw.contract.model_bundle import load_model_bundle, write_model_bundle
    from quweit_hw.contract.synthetic import random_program

    program = random_program(config, seed=3)
    pix = np.random.default_rng(4).integers(0, 256, (32, 1, 8, 8)).astype(np.uint8)
    pix[0], pix[1] = 0, 255
    gold = golden_model.logits(program, pix)
    assert np.array_equal(np.array(golden_naive.logits(program, pix[:3])), gold[:3])
    assert len(np.unique(gold, axis=0)) == len(gold), "logits must depend on the input"
    lo, hi = I.signed_limits(16)
    x = golden_model.embed(program, pix)
    for blk in program["blocks"]:  # the residual stream after each add, and the logits
        x = I.add_aligned(x, golden_model.attention(program, blk, x), blk["proj"]["m"], blk["proj"]["s"])
        assert np.isin(x, (lo, hi)).mean() < 0.001
    assert np.isin(gold, (lo, hi)).mean() < 0.01
    loaded, _, _ = load_model_bundle(write_model_bundle(tmp_path / "p", program))
    assert np.array_equal(golden_model.logits(loaded, pix), gold)
    again = random_program(config, seed=3)
    assert np.array_equal(golden_model.logits(again, pix), gold), "a seed gives one program"
    with pytest.raises(ValueError, match="not a valid program config"):
        random_program({"d": 15, "heads": 2})
