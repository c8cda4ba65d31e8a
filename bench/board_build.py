"""Place-and-route limits of the board top: build one synthetic engine (bundle.random_block)
inside the ULX3S top and print LUT4 per LUT node, Fmax and the wall time of the build.

    python bench/board_build.py --hidden 2048 --window 32        # 2048 + 64*16 LUT nodes, local wiring
    python bench/board_build.py --hidden 2048                     # the same, random wiring

Builds run nextpnr with its default placer and router; --timeout stops a build that has not
finished (counted as "did not place and route within the limit"). Run one build at a time.
"""

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.bundle import load_bundle, random_block, write_bundle  # noqa: E402
from quweit_hw.synth import load_board, synth  # noqa: E402


def _build(bundle_path, board, out, queue):
    os.setsid()  # a process group of its own: a timeout kills the tools with it
    try:
        queue.put(synth(load_bundle(bundle_path), load_board(board), out=out))
    except Exception as e:  # reported, not raised: the parent prints the outcome
        queue.put(e)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[2048])
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--thresholds", type=int, default=16)
    p.add_argument("--window", type=int, default=None, help="local wiring window (default: random wiring)")
    p.add_argument("--board", default="ulx3s")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    block = random_block(d=args.d, thresholds=args.thresholds, hidden=tuple(args.hidden),
                         group_size=args.group_size, window=args.window, seed=0, name="bench")
    layers = " + ".join(str(layer.out_features) for layer in block.layers)
    label = f"d={args.d} layers {layers} ({block.lut_nodes} LUT nodes), " + \
            (f"window {args.window}" if args.window else "random wiring")
    tmp = Path(tempfile.mkdtemp(prefix="board_build."))
    bundle_path = write_bundle(tmp / "bundle", [block], {"bench": label})
    out = Path(args.out) if args.out else tmp / "build"
    queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_build, args=(bundle_path, args.board, out, queue))
    start = time.perf_counter()
    proc.start()
    proc.join(args.timeout)
    seconds = time.perf_counter() - start
    if proc.is_alive():
        os.killpg(proc.pid, signal.SIGKILL)
        print(f"{label}: NOT placed and routed within {args.timeout:.0f} s (build folder {out})")
        return 1
    result = queue.get()
    if isinstance(result, Exception):
        print(f"{label}: build failed after {seconds:.0f} s: {result}")
        return 1
    lut4 = result["resources"]["LUT4"]["used"]
    fmax = min(v["achieved_mhz"] for v in result["fmax"].values())
    print(json.dumps({"label": label, "lut_nodes": block.lut_nodes, "lut4": lut4,
                      "trellis_comb": result["nextpnr_utilization"]["TRELLIS_COMB"]["used"],
                      "lut4_estimate": result["engines"][0]["lut4_estimate"], "fmax_mhz": fmax,
                      "build_seconds": round(seconds, 1), "report": str(out / "report.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
