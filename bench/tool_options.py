"""Benchmark: Yosys' and nextpnr's options on one board top, side by side: LUT4, slots, Fmax and
each tool's time (`quweit-hw synth --yosys-opts/--nextpnr-opts`, one build per variant).

Variants that differ only in nextpnr's options share one Yosys run through the netlist cache, so
their Yosys column reads `cache`. Each finished variant is appended to OUT/results.jsonl, so a
stopped sweep keeps what it measured. The machine is single-threaded for the tools (YoWASP):
run nothing else beside it, or say what ran.

    python bench/tool_options.py                       # the MLP-only reference top, every variant
    python bench/tool_options.py --variants abc9,noabc9 --bundle export/reference
"""

import argparse
import json
import os
import time
from pathlib import Path

# name: (synth_ecp5 options, nextpnr options); the first is the board's default
VARIANTS = {
    "default": ((), ()),
    "noabc9": (("-noabc9",), ()),
    "nowidelut": (("-nowidelut",), ()),
    "abc2": (("-abc2",), ()),
    "router2": ((), ("--router", "router2")),
    "router1": ((), ("--router", "router1")),
    "tmg-ripup": ((), ("--tmg-ripup",)),
    "placer-static": ((), ("--placer", "static")),
}


def run_variant(bundle, board, name, out):
    from quweit_hw.gateware.synth import synth

    synth_opts, pnr_opts = VARIANTS[name]
    start = time.perf_counter()
    report = synth(bundle, board.with_tool_options(synth=synth_opts, nextpnr=pnr_opts), out=out / name)
    comb = report["nextpnr_utilization"].get("TRELLIS_COMB", {}).get("used")
    return {"variant": name, "synth_ecp5": list(synth_opts), "nextpnr": list(pnr_opts), "netlist": report["netlist"],
            "tool_seconds": report["tool_seconds"], "wall_seconds": round(time.perf_counter() - start, 1),
            "lut4": report["resources"]["LUT4"]["used"], "trellis_comb": comb,
            "fmax": {k: v["achieved_mhz"] for k, v in report["fmax"].items()},
            "constraint": {k: v["constraint_mhz"] for k, v in report["fmax"].items()},
            "timing_met": report["timing_met"], "load_average": round(os.getloadavg()[0], 1)}


def row(r):
    t = r["tool_seconds"]
    yosys = "cache" if r["netlist"] == "cache" else f"{t['yosys']:.0f}"
    fmax = ", ".join(f"{v:.2f}" for _, v in sorted(r["fmax"].items()))
    return (f"| {r['variant']} | {' '.join(r['synth_ecp5'] + r['nextpnr']) or '(board default)'} | {r['lut4']:,} | "
            f"{r['trellis_comb']:,} | {fmax} | {yosys} | {t['nextpnr']:.0f} | {r['load_average']} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="export/reference", help="bundle folder (default export/reference)")
    p.add_argument("--board", default="ulx3s", help="board variant (default ulx3s)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--out", default="hw/bench-tool-options",
                   help="build folders and results.jsonl (default %(default)s)")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")

    from quweit_hw.contract.boards import load_board
    from quweit_hw.contract.bundle_files import load_bundle
    from quweit_hw.errors import UserError

    bundle, board = load_bundle(args.bundle), load_board(args.board)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.bundle} on {board.name}; clocks are the board's; Fmax per clock in name order")
    print("| variant | options | LUT4 | TRELLIS_COMB | Fmax (MHz) | Yosys s | nextpnr s | load |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |", flush=True)
    # a cache of the sweep's own: the first variant of each Yosys option set runs Yosys
    os.environ["QUWEIT_NETLIST_CACHE"] = str(out / "netlists")
    for name in names:
        try:
            r = run_variant(bundle, board, name, out)
        except UserError as e:  # a tool failed: record it and go on
            print(f"| {name} | failed: {e} |", flush=True)
            continue
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        print(row(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
