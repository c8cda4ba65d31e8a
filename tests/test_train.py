"""Training: loss goes down, checkpoints round-trip and resume exactly, bad arguments fail in one line."""

import argparse

import pytest
import torch

from quweit_hw import cli
from quweit_hw.errors import UserError
from quweit_hw.model import checkpoint, data
from quweit_hw.model import evaluate as evaluation_torch
from quweit_hw.model import train as tr
from quweit_hw.model.vit import ViT, ViTConfig

TINY_GPT = ["--d", "16", "--depth", "1", "--heads", "2", "--block-size", "8", "--batch-size", "8",
            "--steps-per-epoch", "6", "--warmup", "2", "--lr", "3e-3", "--no-progress"]
TINY_LUT = ["--thresholds", "4", "--hidden", "64", "--group-size", "4", "--window", "8", "--calib-batches", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 12)
    return path


def run(argv, capsys=None):
    rc = cli.main(argv)
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


@pytest.fixture(scope="module")
def dense_ckpt(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dense"
    assert cli.main(["train", "--task", "text", "--text", str(corpus), "--out", str(out), "--epochs", "2",
                     *TINY_GPT]) == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize("mlp", ["dense", "lut"])
def test_a_few_steps_lower_the_loss(mlp):
    torch.manual_seed(0)
    lut = None
    if mlp == "lut":
        from quweit_hw.model.lutmlp import LUTMLPConfig

        lut = LUTMLPConfig(d=16, thresholds=4, hidden=(64,), group_size=4, window=8)
    model = ViT(ViTConfig(image_size=8, patch=4, d=16, depth=1, heads=2, mlp=mlp, lut=lut))
    # Synthetic, learnable: the label is which quadrant holds the bright patch.
    y = torch.arange(64) % 4
    x = torch.randn(64, 1, 8, 8) * 0.1
    for i, q in enumerate(y.tolist()):
        x[i, 0, 4 * (q // 2) : 4 * (q // 2) + 4, 4 * (q % 2) : 4 * (q % 2) + 4] += 2.0
    data.calibrate_lut_mlps(model, [x])
    args = argparse.Namespace(lr=3e-3, lut_lr=None, weight_decay=0.0)
    opt = tr.make_optimizer(model, args)
    for g in opt.param_groups:
        g["lr"] = args.lr * g["lr_scale"]
    model.train()
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_checkpoint_round_trip(dense_ckpt):
    model, ckpt = checkpoint.load_checkpoint(dense_ckpt)
    assert ckpt["format"] == "quweit-hw-checkpoint" and ckpt["version"] == 1
    assert ckpt["task"] == "text" and ckpt["arch"] == "gpt" and ckpt["epoch"] == 2
    assert ckpt["vocab"] == "\n .abcdefghijklmnopqrstuvwxyz"
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2]
    assert not model.training
    result = evaluation_torch.evaluate(model, ckpt, split="val", progress=False)
    # The reloaded model reproduces the figures measured at the end of training.
    assert result["loss"] == pytest.approx(ckpt["metrics"][-1]["val_loss"], rel=1e-6)
    assert result["bits_per_char"] == pytest.approx(result["loss"] / 0.6931471805599453)
    x, y = evaluation_torch.test_inputs(ckpt, "val")
    assert x.shape[1] == 8 and torch.equal(x[:, 1:], y[:, :-1])
    assert result["n"] == y.numel() and result["predictions"].shape == y.shape


def test_resume_is_exact_and_init_from_builds_a_calibrated_lut_model(corpus, dense_ckpt, tmp_path, monkeypatch):
    common = ["train", "--task", "text", "--text", str(corpus), "--mlp", "lut", "--init-from", str(dense_ckpt),
              "--d", "16", *TINY_GPT, *TINY_LUT, "--epochs", "2"]
    assert cli.main([*common, "--out", str(tmp_path / "straight")]) == 0
    save = checkpoint.save_checkpoint

    def save_then_interrupt(path, ckpt):  # the run is stopped right after its first checkpoint
        save(path, ckpt)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", save_then_interrupt)
    assert cli.main([*common, "--out", str(tmp_path / "resumed")]) == 130
    monkeypatch.setattr(tr, "save_checkpoint", save)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert cli.main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    model, ckpt = checkpoint.load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert [name for name, _ in model.lut_mlps()] == ["blocks.0.mlp"]
    assert ckpt["config"]["lut"]["hidden"] == (64,)
    # Calibrated: the thresholds are not all equal (an uncalibrated quantizer has one value).
    assert len(set(model.blocks[0].mlp.export_arrays()["thresholds"].ravel().tolist())) > 4


def test_init_from_copies_every_weight_outside_the_mlps(corpus, dense_ckpt, tmp_path):
    out = tmp_path / "lut"
    # lr so small that training cannot move the copied weights measurably
    assert cli.main(["train", "--task", "text", "--text", str(corpus), "--mlp", "lut", "--init-from", str(dense_ckpt),
                     *TINY_GPT, *TINY_LUT, "--lr", "1e-12", "--epochs", "1", "--out", str(out)]) == 0
    dense = torch.load(dense_ckpt, weights_only=True)["state_dict"]
    lut = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    outside = [k for k in lut if ".mlp." not in k]
    assert sorted(outside) == sorted(k for k in dense if ".mlp." not in k) and len(outside) == 13  # tok, pos, 8 per block, ln_f, tied head
    for k in outside:
        torch.testing.assert_close(lut[k], dense[k], rtol=0, atol=1e-9)
    assert any(".mlp.layers.0.luts" in k for k in lut)


def test_bad_arguments_give_one_line_errors(corpus, dense_ckpt, tmp_path, capsys, monkeypatch):
    def one_line_error(argv, *needles):
        rc, err = run(argv, capsys)
        assert rc == 2, err
        assert err.count("\n") == 1 and err.startswith("quweit-hw train: error:"), err
        for needle in needles:
            assert needle in err, err

    one_line_error(["train", "--task", "mnist"], "unknown task 'mnist'")
    one_line_error(["train"], "--task is required")
    one_line_error(["train", "--task", "text", "--mlp", "sparse"], "'sparse'")
    one_line_error(["train", "--task", "text", "--text", str(tmp_path / "none"), "--out", str(tmp_path / "e")],
                   "--text", "no such file or folder")
    (tmp_path / "empty").mkdir()
    one_line_error(["train", "--task", "text", "--text", str(tmp_path / "empty"), "--out", str(tmp_path / "e")],
                   "no text found")
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "no-fashion")
    one_line_error(["train", "--task", "fashion-mnist", "--out", str(tmp_path / "f")], "dataset-fashion-mnist")
    # --init-from: another task, another shape, not a checkpoint
    one_line_error(["train", "--task", "fashion-mnist", "--mlp", "lut", "--init-from", str(dense_ckpt),
                    "--out", str(tmp_path / "g")], "trained on task 'text'")
    one_line_error(["train", "--task", "text", "--text", str(corpus), "--mlp", "lut", "--init-from", str(dense_ckpt),
                    "--d", "32", "--out", str(tmp_path / "h")], "--d 32 differs")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    one_line_error(["train", "--task", "text", "--init-from", str(tmp_path / "junk.pt"),
                    "--out", str(tmp_path / "i")], "not a torch checkpoint")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    one_line_error(["train", "--task", "text", "--init-from", str(tmp_path / "other.pt"),
                    "--out", str(tmp_path / "j")], "not a quweit-hw checkpoint")
    one_line_error(["train", "--task", "text", "--text", str(corpus), "--thresholds", "8",
                    "--out", str(tmp_path / "k")], "--thresholds needs --mlp lut")
    one_line_error(["train", "--task", "text", "--text", str(corpus), "--out", str(dense_ckpt.parent)],
                   "pass --resume")
    with pytest.raises(UserError, match="not a torch checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")
    one_line_error(["train", "--task", "text", "--lr", "nan"], "--lr", "'nan'", "finite")
    one_line_error(["train", "--task", "text", "--train-limit", "0"], "--train-limit", "'0'")
    one_line_error(["train", "--task", "text", "--text", str(corpus), "--augment", "crop-flip",
                    "--out", str(tmp_path / "l")], "--augment crop-flip is for the fashion-mnist task")
    one_line_error(["train", "--task", "fashion-mnist", "--augment", "rotate", "--out", str(tmp_path / "m")],
                   "unknown --augment 'rotate'")


def test_resume_refuses_options_that_differ_from_the_run(dense_ckpt, capsys):
    run_dir = str(dense_ckpt.parent)
    for option, value, stored in (("--lr", "0.5", "0.003"), ("--task", "fashion-mnist", "'text'"),
                                  ("--weight-decay", "0", "0.05"), ("--d", "32", "16")):
        rc, err = run(["train", "--out", run_dir, "--resume", option, value], capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"{option} " in err and f"differs from the run's {stored}" in err, err
    before = dense_ckpt.stat().st_mtime_ns
    # options equal to the run's, and those --resume takes (epochs, threads, progress), are accepted
    rc, err = run(["train", "--out", run_dir, "--resume", "--lr", "3e-3", "--task", "text", "--epochs", "2",
                   "--threads", "1", "--no-progress"], capsys)
    assert rc == 0, err
    assert dense_ckpt.stat().st_mtime_ns == before  # already 2 epochs: nothing to do


def _shifted(image, dy, dx, flip):
    """`image` (28, 28) moved as crop-flip does: crop at (dy, dx) of the 2-pixel padded image, then mirrored."""
    background = (0.0 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    crop = torch.nn.functional.pad(image, (data.CROP_PAD,) * 4, value=background)[dy:dy + 28, dx:dx + 28]
    return crop.flip(1) if flip else crop


def test_crop_flip_moves_each_image_within_the_pad_and_depends_on_the_seed_only():
    x = torch.randn(64, 1, 28, 28)
    assert data.augment_fashion_mnist(x, "none", torch.Generator()) is x
    out = data.augment_fashion_mnist(x, "crop-flip", torch.Generator().manual_seed(5))
    again = data.augment_fashion_mnist(x, "crop-flip", torch.Generator().manual_seed(5))
    assert torch.equal(out, again) and out.shape == x.shape
    moves = set()
    for image, moved in zip(x[:, 0], out[:, 0]):
        found = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                 if torch.equal(_shifted(image, dy, dx, flip), moved)]
        assert len(found) == 1, found  # exactly one shift and mirror explains each image
        moves.add(found[0])
    assert len(moves) > 20  # 64 draws over 50 moves: the draws are not all alike
    assert {m[2] for m in moves} == {False, True} and {m[0] for m in moves} == set(range(5))


def _tiny_gpts(mlp="lut"):
    from quweit_hw.model.gpt import GPT, GPTConfig
    from quweit_hw.model.lutmlp import LUTMLPConfig

    torch.manual_seed(1)
    teacher = GPT(GPTConfig(vocab_size=12, block_size=8, d=16, depth=2, heads=2))
    lut = LUTMLPConfig(d=16, thresholds=4, hidden=(64,), group_size=4, window=8) if mlp == "lut" else None
    student = GPT(GPTConfig(vocab_size=12, block_size=8, d=16, depth=2, heads=2, mlp=mlp, lut=lut))
    x = torch.randint(0, 12, (16, 8))
    data.calibrate_lut_mlps(student, [x])
    return teacher, student, x


def test_distillation_terms_vanish_where_the_student_is_the_teacher_and_pull_a_lut_student_towards_it():
    from quweit_hw.model.distill import Distiller

    teacher, _, x = _tiny_gpts()
    twin = checkpoint.build_model("gpt", teacher.config)
    twin.load_state_dict(teacher.state_dict())
    twin.train()
    d = Distiller(teacher, weight=0.25, temperature=3.0, mlp_weight=1.0)
    with d.capture(twin) as seen:
        logits = twin(x)
    assert len(seen) == 2
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, -2), x.flatten())
    # the student computes the teacher's function (dropout 0): the KL and MLP terms are 0
    torch.testing.assert_close(d.loss(ce, logits, x, seen), 0.75 * ce, rtol=0, atol=1e-6)
    assert float(d.mlp_term(seen).detach()) < 1e-10

    teacher, student, x = _tiny_gpts()
    d = Distiller(teacher, weight=1.0, temperature=2.0, mlp_weight=1.0)
    student.train()
    opt = tr.make_optimizer(student, argparse.Namespace(lr=3e-3, lut_lr=None, weight_decay=0.0))
    for g in opt.param_groups:
        g["lr"] = 3e-3 * g["lr_scale"]
    terms = []
    for _ in range(25):
        with d.capture(student) as seen:
            logits = student(x)
        loss = d.loss(torch.zeros(()), logits, x, seen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        terms.append(loss.item())
    assert student.blocks[0].mlp.layers[0].luts.grad is not None
    assert terms[-1] < 0.7 * terms[0], terms


def test_distilled_training_resumes_exactly(corpus, dense_ckpt, tmp_path, monkeypatch):
    common = ["train", "--task", "text", "--text", str(corpus), "--mlp", "lut", "--distill-from", str(dense_ckpt),
              "--distill-mlp", "0.5", "--distill-weight", "0.7", "--d", "16", "--depth", "1",
              *TINY_GPT, *TINY_LUT, "--epochs", "2"]
    assert cli.main([*common, "--out", str(tmp_path / "straight")]) == 0
    save = checkpoint.save_checkpoint

    def save_then_interrupt(path, ckpt):
        save(path, ckpt)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", save_then_interrupt)
    assert cli.main([*common, "--out", str(tmp_path / "resumed")]) == 130
    monkeypatch.setattr(tr, "save_checkpoint", save)
    assert cli.main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["args"]["distill_from"] == str(dense_ckpt) and a["args"]["distill_mlp"] == 0.5
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_bad_distillation_arguments_give_one_line_errors(corpus, dense_ckpt, tmp_path, capsys):
    base = ["train", "--task", "text", "--text", str(corpus), *TINY_GPT, "--epochs", "1"]
    for extra, needle in (
            (["--distill-mlp", "1"], "--distill-mlp weighs distillation: add --distill-from"),
            (["--distill-from", str(dense_ckpt), "--distill-weight", "1.5"], "--distill-weight must be between 0 and 1"),
            (["--distill-from", str(dense_ckpt), "--distill-mlp", "1"], "--distill-mlp trains LUT-MLPs"),
            (["--mlp", "lut", *TINY_LUT, "--d", "32", "--distill-from", str(dense_ckpt), "--distill-mlp", "1"],
             "has d=16, depth=1, the student d=32"),
            (["--distill-from", str(tmp_path / "none.pt")], "--distill-from")):
        out = tmp_path / f"o{len(extra)}{extra[-1]}"
        rc, err = run([*base, *extra, "--out", str(out)], capsys)
        assert rc == 2 and err.count("\n") == 1 and needle in err, err
        assert not out.exists()
