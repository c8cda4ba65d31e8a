"""Benchmark: forward+backward time of a LUT-MLP block against a dense MLP block of the same width.

Prints the median step time of each and their ratio, for each first-layer mapping of the
LUT-MLP (random, local, learnable restricted to the window, learnable over the whole input).
The two blocks are timed alternately, so a busy machine slows both alike and the ratio holds.
Not a test: it prints figures. Example:

    .venv/bin/python bench/train_step.py --threads 2
"""

import argparse
import statistics
import time

import torch
from torch import nn

from quweit_hw.model.lutmlp import LUTMLP, LUTMLPConfig


def dense_mlp(d: int) -> nn.Module:
    """The transformer MLP the LUT-MLP replaces: Linear(d, 4d) -> GELU -> Linear(4d, d)."""
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


def one_step(model: nn.Module, h: torch.Tensor, g: torch.Tensor) -> float:
    """Seconds of one forward+backward (input gradient included, as inside a model)."""
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


def paired_medians(a: nn.Module, b: nn.Module, h, repeats: int, warmup: int) -> tuple[float, float]:
    """Median step times of a and b, timed alternately so both see the same machine load."""
    g = torch.randn_like(h)
    times = ([], [])
    for i in range(warmup + repeats):
        for model, out in zip((a, b), times):
            t = one_step(model, h, g)
            if i >= warmup:
                out.append(t)
    return statistics.median(times[0]), statistics.median(times[1])


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
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--mappings",
        default="random,local,learnable,learnable-full",
        help="first-layer mappings to time, comma separated (learnable-full: window = whole input)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    h = torch.randn(args.tokens, args.d, device=dev)
    print(
        f"device={dev} threads={torch.get_num_threads()} d={args.d} tokens={args.tokens} "
        f"T={args.thresholds} n={args.n} layers=({args.hidden}, {args.d * args.group_size}) "
        f"k={args.group_size} window={args.window} repeats={args.repeats} (median)"
    )
    dense = dense_mlp(args.d).to(dev)
    print(f"{'block':28s} {'LUTMLP ms':>10s} {'dense ms':>10s} {'ratio':>7s}")
    for name in args.mappings.split(","):
        full = name == "learnable-full"
        cfg = LUTMLPConfig(
            d=args.d, thresholds=args.thresholds, n=args.n, hidden=(args.hidden,),
            group_size=args.group_size, mapping="learnable" if full else name, deep_mapping="local",
            window=args.d * args.thresholds if full else args.window,
        )
        model = LUTMLP(cfg).to(dev)
        model.calibrate(h)
        # a full learnable mapping costs two (in x B x out*n) matmuls: time fewer steps
        reps = max(3, args.repeats // 4) if full else args.repeats
        t, t_dense = paired_medians(model, dense, h, reps, 1 if full else args.warmup)
        print(f"LUTMLP mapping={name:14s} {t * 1e3:10.2f} {t_dense * 1e3:10.2f} {t / t_dense:6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
