"""Place-and-route limits of the board top: build one synthetic engine (synthetic.random_block)
inside the ULX3S top and print LUT4 per LUT node, Fmax, and the Yosys and nextpnr wall times.

    python bench/board_build.py --hidden 2048 --window 32        # 2048 + 64*16 LUT nodes, local wiring
    python bench/board_build.py --hidden 2048                     # the same, random wiring

nextpnr runs with its default placer and router under `timeout --pnr-timeout` (600 s): a
build it does not finish did not place and route within the limit. Run one build at a time.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract.boards import load_board  # noqa: E402
from quweit_hw.contract.bundle_files import load_bundle, write_bundle  # noqa: E402
from quweit_hw.contract.synthetic import random_block  # noqa: E402
from quweit_hw.errors import UserError  # noqa: E402
from quweit_hw.gateware.synth import synth  # noqa: E402
from quweit_hw.gateware.toolchain import toolchain_env  # noqa: E402

WRAPPER = """#!/bin/sh
start=$(date +%s.%N)
{timeout}"{tool}" "$@"
rc=$?
echo "$start $(date +%s.%N) $rc" > "{stamp}"
exit $rc
"""


def timed(tool_var, folder, timeout=None):
    """A wrapper script for the tool in $tool_var that records its wall time (and applies `timeout`)."""
    tool = toolchain_env()[tool_var]
    stamp = folder / f"{tool_var}.time"
    script = folder / f"{tool_var}.sh"
    script.write_text(WRAPPER.format(timeout=f"timeout {timeout} " if timeout else "", tool=tool, stamp=stamp))
    script.chmod(0o755)
    return str(script), stamp


def seconds(stamp):
    start, end, rc = stamp.read_text().split()
    return round(float(end) - float(start), 1), int(rc)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=64, help="features per token (default 64)")
    p.add_argument("--hidden", type=int, nargs="+", default=[2048],
                   help="LUT nodes of each hidden layer; the last layer is d * group size (default 2048)")
    p.add_argument("--group-size", type=int, default=16, help="LUTs per output feature (default 16)")
    p.add_argument("--thresholds", type=int, default=16, help="thermometer thresholds per feature (default 16)")
    p.add_argument("--window", type=int, default=None, help="local wiring window (default: random wiring)")
    p.add_argument("--board", default="ulx3s", help="board file name (default ulx3s)")
    p.add_argument("--pnr-timeout", type=int, default=600,
                   help="seconds nextpnr may take before the build counts as not routed (default 600)")
    p.add_argument("--out", default=None, help="build folder (default: a temporary folder, printed)")
    args = p.parse_args()
    block = random_block(d=args.d, thresholds=args.thresholds, hidden=tuple(args.hidden),
                         group_size=args.group_size, window=args.window, seed=0, name="bench")
    layers = " + ".join(str(layer.out_features) for layer in block.layers)
    label = f"d={args.d} layers {layers} ({block.lut_nodes} LUT nodes), " + \
            (f"window {args.window}" if args.window else "random wiring")
    tmp = Path(tempfile.mkdtemp(prefix="board_build."))
    bundle_path = write_bundle(tmp / "bundle", [block], {"bench": label})
    out = Path(args.out) if args.out else tmp / "build"
    os.environ["YOSYS"], yosys_stamp = timed("YOSYS", tmp)
    os.environ["NEXTPNR_ECP5"], pnr_stamp = timed("NEXTPNR_ECP5", tmp, args.pnr_timeout)
    try:
        result = synth(load_bundle(bundle_path), load_board(args.board), out=out)
    except UserError as e:
        pnr = seconds(pnr_stamp) if pnr_stamp.exists() else None
        verdict = "NOT placed and routed within the limit" if pnr and pnr[1] == 124 else f"build failed: {e}"
        print(json.dumps({"label": label, "lut_nodes": block.lut_nodes, "outcome": verdict,
                          "yosys_seconds": seconds(yosys_stamp)[0] if yosys_stamp.exists() else None,
                          "nextpnr_seconds": pnr[0] if pnr else None, "build": str(out),
                          "bundle": str(bundle_path)}))
        return 1
    lut4 = result["resources"]["LUT4"]["used"]
    print(json.dumps({"label": label, "lut_nodes": block.lut_nodes, "outcome": "placed and routed",
                      "lut4": lut4, "pfumx": result["resources"]["PFUMX"]["used"],
                      "l6mux21": result["resources"]["L6MUX21"]["used"],
                      "trellis_comb": result["nextpnr_utilization"]["TRELLIS_COMB"]["used"],
                      "lut4_estimate": result["engines"][0]["lut4_estimate"],
                      "fmax_mhz": {clk: v["achieved_mhz"] for clk, v in result["fmax"].items()},
                      "yosys_seconds": seconds(yosys_stamp)[0], "nextpnr_seconds": seconds(pnr_stamp)[0],
                      "build_seconds": result["build_seconds"], "report": str(out / "report.md"),
                      "bundle": str(bundle_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
