# amaranth: UnusedElaboratable=no
"""Don't-care minimisation on a bundle block: per layer, nodes, reachable addresses per
node, the effective fan-in histogram and LUT4 per node before and after (the estimate),
and with --yosys the LUT4 Yosys' `synth_ecp5` maps one LUT layer to, out of context,
before and after (the layer alone, built for the ULX3S as the board flow builds it: each
node an `Array` of its table bits, inner tables LUT4 instances; a few minutes per run for
2,048 nodes); with --yosys-engine the same for the block's whole engine (comparators, LUT
layers, popcount, registers, output FIFO), synthesised as the board flow synthesises an
engine apart (`engine_netlists`: abc9 with its delay target), 5-10 minutes per run. (The
first line is Amaranth's linter option: engines are built for their summaries only.)

    .venv/bin/python bench/dont_care.py                       # export/reference, block 0
    .venv/bin/python bench/dont_care.py --yosys --layer 0     # and Yosys on layer 0
    .venv/bin/python bench/dont_care.py --bundle export/reference-integer --yosys-engine
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quweit_hw.contract.bundle_files import load_bundle  # noqa: E402
from quweit_hw.gateware import dont_care  # noqa: E402
from quweit_hw.gateware.engine import MLPEngine  # noqa: E402
from quweit_hw.gateware.engine_netlists import ABC9_DELAY_PS  # noqa: E402
from quweit_hw.gateware.lut import LUTLayer  # noqa: E402
from quweit_hw.gateware.toolchain import toolchain_env  # noqa: E402
from quweit_hw.resources import REFERENCE  # noqa: E402

CELLS = ("LUT4", "PFUMX", "L6MUX21", "CCU2C", "TRELLIS_FF", "DP16KD")


def yosys_cells(unit, workdir, name, prelude=""):
    """{cell type: count} and seconds of `synth_ecp5` on one elaboratable (ports as top ports),
    elaborated for the ULX3S as the board flow does."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    il = Path(workdir) / f"{name}.il"
    il.write_text(rtlil.convert(unit, name=name, platform=ULX3S_85F_Platform()))
    start = time.perf_counter()
    run = subprocess.run([toolchain_env()["YOSYS"], "-q", "-p",
                          f"read_rtlil {name}.il; {prelude}synth_ecp5 -top {name}; tee -o {name}.stat stat"],
                         cwd=workdir, capture_output=True, text=True)  # YoWASP sees only its cwd
    seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:] or run.stdout[-2000:])
    stat = (Path(workdir) / f"{name}.stat").read_text()
    cells = {}
    for cell in CELLS:  # Yosys 0.55 writes "     <count> <cell>" or "<cell> <count>"
        m = re.search(rf"^\s+(\d+)\s+{cell}\s*$", stat, re.M) or re.search(rf"^\s+{cell}\s+(\d+)\s*$", stat, re.M)
        cells[cell] = int(m.group(1)) if m else 0
    return cells, round(seconds, 1)


def engine_cells(block):
    """Yosys' cells for the block's engine before and after minimisation, with the delay target
    and the options the board flow synthesises an engine apart with, and the change in LUT4."""
    prelude = f"scratchpad -set abc9.D {ABC9_DELAY_PS}; "
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, minimise in (("before", False), ("after", True)):
            cells, seconds = yosys_cells(MLPEngine(block, minimise=minimise), tmp, key, prelude)
            figures[key] = {**cells, "seconds": seconds}
    figures["lut4_change_percent"] = round(100 * (figures["after"]["LUT4"] / figures["before"]["LUT4"] - 1), 2)
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REFERENCE), help="bundle folder (default: the float reference)")
    p.add_argument("--block", type=int, default=0, help="the bundle block (default 0)")
    p.add_argument("--yosys", action="store_true", help="run synth_ecp5 on one layer before and after")
    p.add_argument("--layer", type=int, default=0, help="the layer Yosys maps (with --yosys)")
    p.add_argument("--yosys-engine", action="store_true",
                   help="run synth_ecp5 on the block's whole engine before and after")
    args = p.parse_args()
    block = load_bundle(args.bundle).blocks[args.block]
    start = time.perf_counter()
    layers = dont_care.minimise_block(block)
    seconds = time.perf_counter() - start
    figures = [dont_care.layer_figures(block, i, nodes, layers[i - 1] if i else None) for i, nodes in enumerate(layers)]
    out = {"bundle": args.bundle, "block": args.block, "minimise_seconds": round(seconds, 1), "layers": figures}
    for key, minimise in (("engine_before", False), ("engine_after", True)):  # the whole engine's estimate
        summary = MLPEngine(block, minimise=minimise).summary()
        out[key] = {"comparators_kept": summary["comparators"]["kept"], **summary["ecp5_lut4_estimate"]}
        del out[key]["method"]
    if args.yosys:
        layer = block.layers[args.layer]
        with tempfile.TemporaryDirectory() as tmp:
            units = [LUTLayer(layer.mapping, layer.table, layer.in_features, nodes=nodes)
                     for nodes in (None, layers[args.layer])]
            before, t_before = yosys_cells(units[0], tmp, "before")
            after, t_after = yosys_cells(units[1], tmp, "after")
        nodes = layer.out_features
        out["yosys"] = {"layer": args.layer, "nodes": nodes,
                        "before": {**before, "lut4_per_node": round(before["LUT4"] / nodes, 3), "seconds": t_before},
                        "after": {**after, "lut4_per_node": round(after["LUT4"] / nodes, 3), "seconds": t_after}}
    if args.yosys_engine:
        out["yosys_engine"] = engine_cells(block)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
