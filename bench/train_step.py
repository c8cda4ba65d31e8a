"""Benchmark: forward+backward time of a LUT-MLP block against a dense MLP block of the same width.

For each thread count and each first-layer mapping (random, local, learnable restricted to
the window; learnable-full = learnable over the whole input, on request) it prints the
median step time of the dense block, of the LUT-MLP on the plain-torch reference
(QUWEIT_KERNELS=torch) and of the LUT-MLP on the compiled CPU kernels, and the ratios.
The three are timed in turn, step after step, so a busy machine slows all alike and the
ratios hold. Not a test: it prints figures. Example:

    .venv/bin/python bench/train_step.py --threads 1,2
"""

import argparse
import os
import statistics
import time

import torch
from torch import nn

from quweit_hw.model import kernels
from quweit_hw.model.lutmlp import LUTMLP, LUTMLPConfig


def dense_mlp(d: int) -> nn.Module:
    """The transformer MLP the LUT-MLP replaces: Linear(d, 4d) -> GELU -> Linear(4d, d)."""
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


def one_step(model: nn.Module, h: torch.Tensor, g: torch.Tensor, mode: str) -> float:
    """Seconds of one forward+backward (input gradient included, as inside a model), with
    QUWEIT_KERNELS=mode."""
    os.environ["QUWEIT_KERNELS"] = mode
    x = h.detach().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    if h.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    (model(x) * g).sum().backward()
    if h.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(runs, h, repeats: int, warmup: int) -> list[float]:
    """Median step time of each (model, mode) in `runs`, timed in turn so all see the same load."""
    g = torch.randn_like(h)
    times = [[] for _ in runs]
    for i in range(warmup + repeats):
        for (model, mode), out in zip(runs, times):
            t = one_step(model, h, g, mode)
            if i >= warmup:
                out.append(t)
    return [statistics.median(t) for t in times]


def block_config(args, name: str) -> LUTMLPConfig:
    full = name == "learnable-full"
    return LUTMLPConfig(
        d=args.d, thresholds=args.thresholds, n=args.n, hidden=(args.hidden,),
        group_size=args.group_size, mapping="learnable" if full else name, deep_mapping="local",
        window=args.d * args.thresholds if full else args.window,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=64, help="model width (default 64)")
    p.add_argument("--tokens", type=int, default=1024, help="tokens per step (default 1024)")
    p.add_argument("--thresholds", type=int, default=16, help="thermometer thresholds T (default 16)")
    p.add_argument("--n", type=int, default=6, help="LUT fan-in (default 6)")
    p.add_argument("--hidden", type=int, default=2048, help="first LUT layer width (default 2048)")
    p.add_argument("--group-size", type=int, default=16, help="LUTs per output channel k (default 16)")
    p.add_argument("--window", type=int, default=32, help="window of local/restricted mappings (default 32)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", default="1,2", help="torch CPU thread counts, comma separated (default 1,2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) plain-torch reference")
    p.add_argument(
        "--mappings", default="random,local,learnable",
        help="first-layer mappings, comma separated (also: learnable-full, window = whole input)",
    )
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    compiled = dev.type == "cpu" and kernels.use_compiled(torch.zeros(1))
    modes = (["torch"] if not args.no_reference or not compiled else []) + (["auto"] if compiled else [])
    print(
        f"device={dev} d={args.d} tokens={args.tokens} T={args.thresholds} n={args.n} "
        f"layers=({args.hidden}, {args.d * args.group_size}) k={args.group_size} window={args.window} "
        f"repeats={args.repeats} (median); compiled kernels: {'yes' if compiled else 'no'}"
    )
    head = f"{'threads':>7s} {'mapping':14s} {'dense ms':>9s} {'torch ms':>9s} {'compiled ms':>11s}"
    print(head + f" {'torch/dense':>11s} {'compiled/dense':>14s} {'speed-up':>8s}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        h = torch.randn(args.tokens, args.d, device=dev)
        dense = dense_mlp(args.d).to(dev)
        for name in args.mappings.split(","):
            model = LUTMLP(block_config(args, name)).to(dev)
            model.calibrate(h)
            # a full learnable mapping costs two (in x B x out*n) matmuls: time fewer steps
            reps = max(3, args.repeats // 4) if name == "learnable-full" else args.repeats
            runs = [(dense, "auto")] + [(model, m) for m in modes]
            t = dict(zip(["dense"] + modes, interleaved_medians(runs, h, reps, min(args.warmup, reps))))
            ref, fast = t.get("torch"), t.get("auto")
            cell = lambda v, w: f"{v * 1e3:{w}.2f}" if v is not None else f"{'-':>{w}s}"
            ratio = lambda v, w: f"{v / t['dense']:{w - 1}.2f}x" if v is not None else f"{'-':>{w}s}"
            speed = f"{ref / fast:7.1f}x" if ref and fast else f"{'-':>8s}"
            print(f"{threads:7d} {name:14s} {cell(t['dense'], 9)} {cell(ref, 9)} {cell(fast, 11)} "
                  f"{ratio(ref, 11)} {ratio(fast, 14)} {speed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
