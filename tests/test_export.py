"""Export and agreement: torch eval counts equal the golden model's for every token, exactly."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from quweit_hw import backends, cli, evaluation
from quweit_hw.contract import bundle_files, golden
from quweit_hw.errors import UserError
from quweit_hw.resources import REFERENCE
from quweit_hw.contract.bundle_files import file_sha256
from quweit_hw.model.blocks import model_blocks
from quweit_hw.model.export import export_checkpoint
from quweit_hw.model.lutmlp import LUTMLPConfig
from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from quweit_hw.model.vit import ViT, ViTConfig
from quweit_hw.model.data import calibrate_lut_mlps


def tiny_vit(mlp="lut", mapping="learnable", bit_order="feature", seed=0):
    torch.manual_seed(seed)
    lut = LUTMLPConfig(d=8, thresholds=6, n=4, hidden=(48,), group_size=4, mapping=mapping, window=16,
                       bit_order=bit_order) if mlp == "lut" else None
    config = ViTConfig(image_size=8, patch=4, classes=3, d=8, depth=2, heads=2, mlp=mlp, lut=lut)
    model = ViT(config)
    if mlp == "lut":
        calibrate_lut_mlps(model, [torch.randn(32, 1, 8, 8)])
        # a few optimiser steps so that tables and the learnable mapping leave their initial state
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(5):
            loss = model(torch.randn(16, 1, 8, 8)).logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def save(model, path):
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config),
                           "state_dict": model.state_dict(), "metrics": [{"epoch": 1, "test_accuracy": 0.5}]})
    return path


@pytest.mark.parametrize("mapping,bit_order", [("learnable", "feature"), ("local", "threshold"), ("random", "feature")])
def test_torch_eval_equals_golden_on_every_token(tmp_path, mapping, bit_order):
    model = tiny_vit(mapping=mapping, bit_order=bit_order)
    path = export_checkpoint(save(model, tmp_path / "m.pt"), tmp_path / "bundle")
    b = bundle_files.load_bundle(path)
    assert [blk.name for blk in b.blocks] == ["blocks.0.mlp", "blocks.1.mlp"]
    images = torch.randn(300, 1, 8, 8) * 2  # 300 images x 5 tokens = 1500 tokens per block
    with torch.no_grad():
        reference = model(images)
        agreement = backends.Agreement(2)
        backends.attach(model, backends.GoldenBackend(b), agreement=agreement)
        routed = model(images)
        backends.detach(model)
    assert agreement.tokens == [1500, 1500] and agreement.exact, str(agreement)
    assert torch.equal(routed, reference)  # same counts, same affine step: identical logits


def test_every_integer_input_agrees(tmp_path):
    model = tiny_vit()
    for (name, mlp), block in zip(model.lut_mlps(), model_blocks(model)):
        # every value of every feature, so every threshold is hit at q = theta and theta + 1
        q = np.repeat(np.arange(-128, 128)[:, None], block.d, axis=1)
        q = np.concatenate([q, np.roll(q, 37, axis=0)])
        with torch.no_grad():
            c = mlp.counts(torch.from_numpy(q).float()).round().long().numpy()
        assert np.array_equal(c, golden.counts(block, q)), name


def test_manifest_records_source_and_metrics(tmp_path):
    ckpt = save(tiny_vit(), tmp_path / "m.pt")
    b = bundle_files.load_bundle(export_checkpoint(ckpt, tmp_path / "bundle"))
    assert b.manifest["source_checkpoint"]["sha256"] == file_sha256(ckpt)
    assert b.manifest["model"]["arch"] == "vit" and b.manifest["model"]["config"]["d"] == 8
    assert b.manifest["metrics"]["test_accuracy"] == 0.5


def test_export_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    assert cli.main(["export", str(not_ckpt), "-o", str(out)]) == 2
    assert "is not a torch checkpoint" in capsys.readouterr().err
    dense = save(tiny_vit(mlp="dense"), tmp_path / "dense.pt")
    assert cli.main(["export", str(dense), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dense-only checkpoint" in err and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dense.pt", "notes.txt"]
    lut = save(tiny_vit(), tmp_path / "lut.pt")
    assert cli.main(["export", str(lut), "-o", str(out)]) == 0
    assert cli.main(["export", str(lut), "-o", str(out)]) == 2
    assert "exists (use --force" in capsys.readouterr().err
    assert cli.main(["export", str(lut), "-o", str(out), "--force"]) == 0


def test_eval_refuses_a_bundle_of_another_checkpoint(tmp_path, capsys):
    a = save(tiny_vit(seed=1), tmp_path / "a.pt")
    b = save(tiny_vit(seed=2), tmp_path / "b.pt")
    bundle_b = export_checkpoint(b, tmp_path / "bundle_b")
    assert cli.main(["eval", str(a), "--mlp-backend", "golden", "--bundle", str(bundle_b)]) == 2
    assert "was not exported from" in capsys.readouterr().err


REFERENCE_CHECKPOINT = REFERENCE / "checkpoint.pt"


def test_reference_bundle_is_exported_from_the_reference_checkpoint():
    b = bundle_files.load_bundle(REFERENCE)
    assert b.manifest["source_checkpoint"]["sha256"] == file_sha256(REFERENCE_CHECKPOINT)
    assert b.manifest["metrics"]["test_accuracy"] > 0.8
    assert sum(p.stat().st_size for p in REFERENCE.rglob("*.npy")) < 1_000_000


def test_reference_model_torch_equals_golden_on_1000_test_images():
    r = evaluation.evaluate_with_backend(REFERENCE_CHECKPOINT, "golden", bundle_path=REFERENCE, limit=1000,
                                      compare=True, progress=False)
    tokens = 1000 * 17  # 16 patches + class token per image
    assert r["agreement"].tokens == [tokens, tokens] and r["agreement"].exact, str(r["agreement"])
    assert r["same_predictions"]
    assert r["metrics"]["accuracy"] == r["torch_metrics"]["accuracy"]


def rewrite_array(bundle_path, block, stem, edit):
    """Change one array file of a bundle with `edit(array)` and fix its hash: a format-valid bundle."""
    import hashlib
    import json
    file = bundle_path / f"block{block}" / f"{stem}.npy"
    array = np.load(file)
    edit(array)
    np.save(file, array)
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    manifest["blocks"][block]["files"][stem]["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    (bundle_path / "manifest.json").write_text(json.dumps(manifest))


def flip_table_bit(a):  # entry 13 of LUT 5: byte 1, bit 5
    a[5, 1] ^= 1 << 5


def raise_last_threshold(a):
    a[3, -1] = min(a[3, -1] + 1, 127) if a[3, -1] < 127 else a[3, -1] - 1


@pytest.mark.parametrize("block,stem,edit,expected", [
    (1, "layer0_table", flip_table_bit, r"block 1 \('blocks\.1\.mlp'\) layer0_table differs at \[5, 13\] \(bundle [01], checkpoint [01]\)"),
    (0, "thresholds", raise_last_threshold, r"block 0 \('blocks\.0\.mlp'\) thresholds differs at \[3, 5\]"),
    (0, "affine_a", lambda a: a.__setitem__(2, a[2] * 2 + 1), r"block 0 \('blocks\.0\.mlp'\) affine_a differs at \[2\]"),
])
def test_eval_checks_a_given_bundle_against_its_checkpoint(tmp_path, capsys, block, stem, edit, expected):
    ckpt = save(tiny_vit(), tmp_path / "m.pt")
    path = export_checkpoint(ckpt, tmp_path / "bundle")
    rewrite_array(path, block, stem, edit)
    changed = bundle_files.load_bundle(path)  # the format holds: only the comparison with the checkpoint can tell
    assert changed.manifest["source_checkpoint"]["sha256"] == file_sha256(ckpt)  # and the manifest still claims it
    assert cli.main(["eval", str(ckpt), "--mlp-backend", "golden", "--bundle", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"was not exported from {str(ckpt)!r}: " in err
    assert re.search(expected, err), err


def test_eval_trusts_content_not_the_manifest_claim(tmp_path):
    model = tiny_vit()
    ckpt = save(model, tmp_path / "m.pt")
    path = export_checkpoint(ckpt, tmp_path / "bundle")
    # the same model saved again with other metrics: another file hash, the same blocks
    again = tmp_path / "again.pt"
    save_checkpoint(again, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                            "arch": "vit", "config": dataclasses.asdict(model.config),
                            "state_dict": model.state_dict(), "metrics": [{"epoch": 2, "test_accuracy": 0.6}]})
    assert file_sha256(again) != file_sha256(ckpt)
    assert evaluation.bundle_for(again, path, tmp_path / "work").path == path
    with pytest.raises(UserError, match=r"was not exported from .*: block 0 \('blocks\.0\.mlp'\) thresholds differs"):
        evaluation.bundle_for(save(tiny_vit(seed=3), tmp_path / "other.pt"), path, tmp_path / "work")
