"""Images [start, start + n) of the Fashion-MNIST test set through the whole-model Verilog
under Verilator (`whole_model_eval.rtl_logits`, the function behind `eval --backend rtl`), 30 %
random backpressure with the given seed, checked against the golden model; prints one JSON
line. Two slices side by side use both cores (`eval --backend rtl` runs one process):

    .venv/bin/python bench/model_rtl_slice.py 0 500 1 & .venv/bin/python bench/model_rtl_slice.py 500 500 2
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract import golden_model  # noqa: E402
from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels  # noqa: E402
from quweit_hw.contract.model_bundle import load_model_bundle  # noqa: E402
from quweit_hw.whole_model_eval import rtl_logits  # noqa: E402

start, n, seed = (int(a) for a in sys.argv[1:4])
bundle = "export/reference-integer"
program, _, _ = load_model_bundle(bundle)
pixels, labels = fashion_mnist_pixels("test", limit=start + n)
pixels, labels = pixels[start:], labels[start:]
t = time.perf_counter()
logits, classes, cycles, info = rtl_logits(bundle, pixels, 32, backpressure=0.3, seed=seed)
gold = golden_model.logits(program, pixels)
print(json.dumps({"start": start, "images": n, "seed": seed, "logits_differing": int((logits != gold).sum()),
                  "logits": int(logits.size), "class_differs": int((classes != logits.argmax(-1)).sum()),
                  "correct": int((logits.argmax(-1) == labels).sum()), "cycles_per_image": sorted(set(cycles.tolist())),
                  "generator_cycles": info["cycles_per_image"], "wall_s": round(time.perf_counter() - t, 1),
                  "clocks": info["cycles"], **{k: v for k, v in info.items() if k not in ("cycles_per_image", "cycles")}}, default=str))
