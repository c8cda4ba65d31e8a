"""Don't-cares learned from data, as a curve: the address counts of the first N training
images are gathered once (golden model), then for each minimum count K the LUT nodes are
refilled on the addresses reached fewer than K times, and the LUT4 estimate of both blocks'
fabric layers and the golden model's test accuracy (10,000 images) are printed per K.
K = 1 frees only addresses no training token reaches (`quweit-hw dont-care`'s default).

    .venv/bin/python bench/data_dont_care.py --images 20000 --min-counts 1,4,16,64
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels  # noqa: E402
from quweit_hw.contract.model_bundle import load_model_bundle  # noqa: E402
from quweit_hw.gateware import data_dont_care as ddc  # noqa: E402
from quweit_hw.resources import REFERENCE_INTEGER  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", default=str(REFERENCE_INTEGER), help="a version 2 bundle")
    p.add_argument("--images", type=int, default=20000, help="training images counted (default 20000)")
    p.add_argument("--min-counts", default="1,4,16,64", help="the K values, comma-separated")
    args = p.parse_args()
    program, _, _ = load_model_bundle(args.bundle)
    pixels, _ = fashion_mnist_pixels("train", limit=args.images)
    t = time.perf_counter()
    with tqdm(total=len(pixels), desc="address counts", unit="image", leave=False) as bar:
        counts = ddc.address_counts(program, pixels, progress=lambda done: bar.update(done - bar.n))
    print(f"address counts of {len(pixels)} training images: {time.perf_counter() - t:.0f} s")
    test, labels = fashion_mnist_pixels("test")
    blocks = ddc.lut_blocks(program)
    base = sum(ddc._lut4(b) for _, b in blocks)
    print(f"| K | LUT4 (both blocks' LUT layers, estimate) | change | layer 1 addresses kept per node | "
          f"test accuracy |\n| ---: | ---: | ---: | ---: | ---: |\n| (exact only) | {base} | | 64 | "
          f"{ddc._accuracy(program, test, labels):.2%} |", flush=True)
    for k in (int(x) for x in args.min_counts.split(",")):
        new, kept = {}, []
        for (i, block), per_layer in zip(blocks, counts):
            new[i], figures = ddc.refill_block(block, [c >= k for c in per_layer])
            kept.append(figures[-1]["seen_mean"])
        lut4 = sum(ddc._lut4(b) for b in new.values())
        accuracy = ddc._accuracy(ddc.with_blocks(program, new), test, labels)
        print(f"| {k} | {lut4} | {(lut4 - base) / base:+.1%} | {np.mean(kept):.1f} | {accuracy:.2%} |", flush=True)


if __name__ == "__main__":
    main()
