"""Tiny trained integer ViTs and edge-case images, shared by the whole-model tests."""

import torch

from quweit_hw.model import data
from quweit_hw.model.checkpoint import build_model
from quweit_hw.model.integer_vit import IntegerViT
from quweit_hw.model.vit import ViTConfig


def tiny_config(mlp="dense", pool="cls", integer=True):
    from quweit_hw.model.lutmlp import LUTMLPConfig

    lut = LUTMLPConfig(d=16, thresholds=4, hidden=(64,), group_size=4, window=8) if mlp == "lut" else None
    return ViTConfig(image_size=8, patch=4, d=16, depth=2, heads=2, pool=pool, mlp=mlp, lut=lut, integer=integer)


def trained(mlp="dense", pool="cls", seed=0):
    """A tiny IntegerViT after three fake-quant training steps (so every scale is set)."""
    torch.manual_seed(seed)
    model = build_model("vit", tiny_config(mlp, pool))
    assert isinstance(model, IntegerViT)
    x = torch.randn(24, 1, 8, 8)
    data.calibrate_lut_mlps(model, [x])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(24) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def pixels(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    p[0] = 0  # the smallest and the largest pixel value everywhere
    p[1] = 255
    return p
