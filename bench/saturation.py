"""Saturation of a whole integer model (a version 2 bundle) on Fashion-MNIST test images: the
share of the int16 residual stream at its limits after the embedding and after every residual
add, and of the int16 logits, with the accuracy; numpy only (the golden model's own ops).

    python bench/saturation.py export/X [--limit 10000]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract import golden_model as G  # noqa: E402
from quweit_hw.contract import integer as I  # noqa: E402
from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels  # noqa: E402
from quweit_hw.contract.model_bundle import load_model_bundle  # noqa: E402


def saturated(a, bits=16):
    return float(np.isin(a, I.signed_limits(bits)).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--limit", type=int, default=10000)
    args = parser.parse_args()
    program, _, _ = load_model_bundle(args.bundle)
    pixels, labels = fashion_mnist_pixels("test", limit=args.limit)
    x = G.embed(program, pixels)
    rows = [("embedding", x)]
    for i, blk in enumerate(program["blocks"]):  # the dataflow of golden_model._logits, step by step
        x = I.add_aligned(x, G.attention(program, blk, x), blk["proj"]["m"], blk["proj"]["s"], G.RESIDUAL_BITS)
        rows.append((f"block {i} attention add", x))
        a = G.mlp_alignment(blk)
        x = I.add_aligned(x, G.mlp(blk, x), a["m"], a["s"], G.RESIDUAL_BITS)
        rows.append((f"block {i} MLP add", x))
    logits = G.logits(program, pixels)
    rows.append(("logits", logits))
    for name, a in rows:
        print(f"{name:24} saturated {saturated(a) * 100:6.3f} %   max |x| {int(np.abs(a).max())}")
    print(f"accuracy {np.mean(logits.argmax(-1) == labels) * 100:.2f} % on {len(labels)} test images")


if __name__ == "__main__":
    main()
