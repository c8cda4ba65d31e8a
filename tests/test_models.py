"""Models and data: ViT and character GPT with dense and LUT MLPs, Fashion-MNIST idx reading, text, calibration."""

import copy
import dataclasses
import gzip

import numpy as np
import pytest
import torch

from quweit_hw.errors import UserError
from quweit_hw.model import data
from quweit_hw.model.gpt import GPT, GPTConfig
from quweit_hw.model.vit import ViT, ViTConfig


def tiny_lut(d=16):
    from quweit_hw.model.lutmlp import LUTMLPConfig

    return LUTMLPConfig(d=d, thresholds=4, hidden=(64,), group_size=4, window=8)


def tiny_vit(mlp="dense", depth=2, pool="cls"):
    return ViTConfig(image_size=8, patch=4, d=16, depth=depth, heads=2, pool=pool, mlp=mlp,
                     lut=tiny_lut() if mlp == "lut" else None)


def tiny_gpt(mlp="dense", depth=2):
    return GPTConfig(vocab_size=11, block_size=8, d=16, depth=depth, heads=2, mlp=mlp,
                     lut=tiny_lut() if mlp == "lut" else None)


def calibrated(model, x):
    data.calibrate_lut_mlps(model, [x])
    return model


@pytest.mark.parametrize("mlp", ["dense", "lut"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_forward_backward(mlp, pool):
    torch.manual_seed(0)
    model = ViT(tiny_vit(mlp, pool=pool))
    x = torch.randn(5, 1, 8, 8)
    calibrated(model, x).train()
    logits = model(x)
    assert logits.shape == (5, 10)
    torch.nn.functional.cross_entropy(logits, torch.arange(5)).backward()
    # Every block learns through the MLP, including the patch embedding below a LUT block.
    assert model.patch_embed.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks[1].mlp.parameters()
               if p.requires_grad and p.dim() >= 2 and p.shape[0] != 16)  # tables and dense weights


@pytest.mark.parametrize("mlp", ["dense", "lut"])
def test_gpt_forward_backward_and_causality(mlp):
    torch.manual_seed(0)
    model = GPT(tiny_gpt(mlp))
    idx = torch.randint(0, 11, (3, 8))
    calibrated(model, idx).eval()
    logits = model(idx)
    assert logits.shape == (3, 8, 11)
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    # A causal model's outputs before position 5 cannot depend on token 5; after it they do.
    after = model(changed)
    assert torch.equal(after[:, :5], logits[:, :5])
    assert not torch.equal(after[:, 5:], logits[:, 5:])
    model.train()
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert model.tok.weight.grad.abs().sum() > 0
    assert model.pos.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_dense_and_lut_differ_only_in_the_mlp():
    torch.manual_seed(0)
    dense, lut = ViT(tiny_vit("dense")), ViT(tiny_vit("lut"))
    outside = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items() if ".mlp." not in k}
    assert outside(dense) == outside(lut)
    assert dense.lut_mlps() == []
    assert [name for name, _ in lut.lut_mlps()] == ["blocks.0.mlp", "blocks.1.mlp"]
    assert lut.lut_mlps()[1][1] is lut.blocks[1].mlp
    assert [name for name, _ in GPT(tiny_gpt("lut", depth=3)).lut_mlps()] == [
        "blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="divisible by heads=3"):
        ViTConfig(d=16, heads=3)
    with pytest.raises(ValueError, match="'sum'"):
        ViTConfig(pool="sum")
    with pytest.raises(ValueError, match="patch=5"):
        ViTConfig(patch=5)
    with pytest.raises(ValueError, match="'relu'"):
        GPTConfig(mlp="relu")
    with pytest.raises(ValueError, match="lut must be None"):
        GPTConfig(mlp="dense", lut={"d": 64})
    from quweit_hw.model.lutmlp import LUTMLPConfig

    with pytest.raises(ValueError, match="lut.d must equal"):
        ViTConfig(d=16, heads=2, mlp="lut", lut=LUTMLPConfig(d=32))
    config = tiny_vit("lut")
    again = ViTConfig(**dataclasses.asdict(config))  # what a checkpoint stores and rebuilds from
    assert again == config and isinstance(again.lut, LUTMLPConfig) and again.lut.hidden == (64,)
    assert ViTConfig(mlp="lut").lut == LUTMLPConfig(d=64)
    assert ViTConfig(patch=4).tokens == 50 and ViTConfig(patch=7, pool="mean").tokens == 16


def test_calibration_sees_the_layernorm_output():
    torch.manual_seed(0)
    model = ViT(tiny_vit("lut", depth=1)).eval()
    fresh = copy.deepcopy(model.blocks[0].mlp)
    x = torch.randn(7, 1, 8, 8)
    assert data.calibrate_lut_mlps(model, [x[:3], x[3:]]) == 7 * 5  # 7 images x (4 patches + class token)
    with torch.no_grad():
        h = model.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([model.cls_token.expand(7, -1, -1), h], 1) + model.pos
        h = h + model.blocks[0].attn(model.blocks[0].ln1(h))
        fresh.calibrate(model.blocks[0].ln2(h).reshape(-1, 16))
    a, b = model.blocks[0].mlp.export_arrays(), fresh.export_arrays()
    assert a["input_scale"] == b["input_scale"]
    np.testing.assert_array_equal(a["thresholds"], b["thresholds"])
    assert model.training is False  # calibration restores the mode it found


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    from quweit_hw.contract import fashion_mnist

    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]))
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    pixels, labels = fashion_mnist.fashion_mnist_pixels("test", tmp_path, limit=2)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 1, 28, 28) and labels.tolist() == [9, 0]
    assert np.array_equal(pixels[:, 0], images[:2])
    x, y = data.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [9, 0, 4]
    assert x[0, 0, 0, 1].item() == pytest.approx((1 / 255 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD)
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist("train", root=tmp_path)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))
    with pytest.raises(UserError, match="not an unsigned-byte idx"):
        fashion_mnist.read_idx(tmp_path / "bad.gz")


def test_char_text_and_windows(tmp_path):
    (tmp_path / "a").write_text("abcabcabca")
    (tmp_path / "a.dat").write_bytes(b"\x00index")  # fortune's index files are skipped
    (tmp_path / "b").write_text("cab")
    text = data.CharText.from_text(data.read_text(tmp_path), val_fraction=0.25)
    assert text.vocab == "abc"
    assert data.decode(text.train, text.vocab) == "abcabcabca"  # files joined in name order
    assert data.decode(text.val, text.vocab) == "cab"  # the last quarter (3 of 13 characters)
    assert text.split("test") is text.val
    x, y = data.sequential_windows(torch.arange(10), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    x, y = data.random_windows(torch.arange(10), 4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1)
    with pytest.raises(UserError, match="outside the vocabulary"):
        data.CharText.from_text("abd", vocab="abc")
    with pytest.raises(UserError, match="no text found"):
        data.read_text(tmp_path / "missing")
