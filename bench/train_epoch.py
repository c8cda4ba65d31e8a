"""Benchmark: one whole training step of the QuWeiT ViT and character GPT against their dense twins.

A step is what `quweit-hw train` does per batch: forward, cross-entropy, backward, AdamW
step (the training optimiser and its learning-rate groups). Shapes are `quweit-hw train`'s
defaults (d=64, depth 2; ViT: patch 7, batch 128; GPT: context 64, batch 64) and the
LUT-MLP is LUTMLPConfig's default (local mapping, 2048 + 1024 LUTs, n=6). The dense
model, the LUT model on the plain-torch reference (QUWEIT_KERNELS=torch) and the LUT
model on the compiled kernels are stepped in turn, so a busy machine slows all alike.
Random inputs: the time of a step does not depend on the data. Example:

    .venv/bin/python bench/train_epoch.py --threads 1
"""

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from quweit_hw.model.data import calibrate_lut_mlps
from quweit_hw.model.gpt import GPT, GPTConfig
from quweit_hw.model import kernels
from quweit_hw.model.train import make_optimizer
from quweit_hw.model.vit import ViT, ViTConfig

OPT_ARGS = SimpleNamespace(lr=1e-3, lut_lr=None, weight_decay=0.05)  # quweit-hw train's defaults


def task(arch: str, mlp: str):
    """(model, batch of inputs, targets) at `quweit-hw train`'s default shape for `arch`."""
    if arch == "vit":
        model = ViT(ViTConfig(d=64, depth=2, heads=4, patch=7, mlp=mlp))
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    else:
        model = GPT(GPTConfig(vocab_size=96, block_size=64, d=64, depth=2, heads=4, mlp=mlp))
        x, y = torch.randint(0, 96, (64, 64)), torch.randint(0, 96, (64, 64))
    if mlp == "lut":
        calibrate_lut_mlps(model, [x])
    return model, x, y


def train_step(model, opt, x, y, mode: str) -> float:
    """Seconds of one training step with QUWEIT_KERNELS=mode."""
    os.environ["QUWEIT_KERNELS"] = mode
    start = time.perf_counter()
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="vit,gpt", help="models to time, comma separated (default vit,gpt)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", default="1", help="torch CPU thread counts, comma separated (default 1)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) plain-torch reference")
    args = p.parse_args(argv)
    compiled = kernels.use_compiled(torch.zeros(1))
    modes = (["torch"] if not args.no_reference or not compiled else []) + (["auto"] if compiled else [])
    print(f"repeats={args.repeats} (median); compiled kernels: {'yes' if compiled else 'no'}")
    print(f"{'threads':>7s} {'model':5s} {'dense ms':>9s} {'torch ms':>9s} {'compiled ms':>11s} "
          f"{'torch/dense':>11s} {'compiled/dense':>14s}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            dense, x, y = task(arch, "dense")
            lut, _, _ = task(arch, "lut")
            runs = [(dense, "auto")] + [(lut, m) for m in modes]
            opts = [make_optimizer(m, OPT_ARGS) for m, _ in runs]
            times = [[] for _ in runs]
            for i in range(args.warmup + args.repeats):
                for (model, mode), opt, out in zip(runs, opts, times):
                    t = train_step(model, opt, x, y, mode)
                    if i >= args.warmup:
                        out.append(t)
            t = dict(zip(["dense"] + modes, (statistics.median(v) for v in times)))
            cell = lambda k, w: f"{t[k] * 1e3:{w}.1f}" if k in t else f"{'-':>{w}s}"
            ratio = lambda k, w: f"{t[k] / t['dense']:{w - 1}.2f}x" if k in t else f"{'-':>{w}s}"
            print(f"{threads:7d} {arch:5s} {cell('dense', 9)} {cell('torch', 9)} {cell('auto', 11)} "
                  f"{ratio('torch', 11)} {ratio('auto', 14)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
