"""The whole model's throughput figures (quweit_hw.model_throughput) for a version-2 bundle:
cycles per image from the generator, images/s and latency at an Fmax, what the UART carries,
and the golden model's and torch's integer eval's images/s measured on this CPU.

    python bench/model_throughput.py [export/reference-integer] --lanes 32 --fmax-mhz 100 --images 1000

Prints the report.md fragment and the report.json fields. State the load (`uptime`) with the figures.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract.boards import load_board  # noqa: E402
from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels  # noqa: E402
from quweit_hw.gateware.model_engine import ModelEngine  # noqa: E402
from quweit_hw.gateware.model_rtl import load_program  # noqa: E402
from quweit_hw.contract.throughput import throughput_fields, throughput_markdown  # noqa: E402
from quweit_hw.model_throughput import cpu_images_per_second  # noqa: E402
from quweit_hw.resources import REFERENCE_INTEGER  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default=str(REFERENCE_INTEGER))
    p.add_argument("--lanes", type=int, default=32)
    p.add_argument("--fmax-mhz", type=float, help="engine clock (default: unknown, the chip fields are null)")
    p.add_argument("--board", default="ulx3s", help="board whose baud the UART figures use")
    p.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images for the CPU runs")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    program, manifest = load_program(args.bundle)
    engine = ModelEngine(program, lanes=args.lanes)
    pixels, _ = fashion_mnist_pixels("test", limit=args.images)
    checkpoint = manifest.get("source_checkpoint", {}).get("path")
    cpu = cpu_images_per_second(program, pixels, checkpoint=checkpoint if checkpoint and os.path.exists(checkpoint)
                                else None, batch=args.batch, repeats=args.repeats)
    fields = throughput_fields(engine.cycles_per_image, pixels=pixels[0].size, classes=engine.compiled.classes,
                               fmax_hz=args.fmax_mhz * 1e6 if args.fmax_mhz else None,
                               baud=load_board(args.board).baud, cpu=cpu)
    print(throughput_markdown(fields))
    print(json.dumps(fields, indent=2))


if __name__ == "__main__":
    main()
