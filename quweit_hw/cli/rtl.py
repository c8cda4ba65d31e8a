"""`quweit-hw rtl`."""

import argparse
from pathlib import Path

from ..gateware.engine import Registers
from ..resources import REFERENCE


def _rom_spec(text):
    try:
        layer, per_cycle = text.split(":")
        return int(layer), int(per_cycle)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:NODES_PER_CLOCK, got {text!r}") from None


def configure(parser):
    parser.add_argument("bundle", nargs="?", default=None,
                        help="bundle folder (default: the shipped reference bundle)")
    parser.add_argument("--block", type=int, default=0, metavar="I", help="block index in the bundle (default 0)")
    parser.add_argument("-o", "--out", default=None, metavar="DIR",
                        help="output folder (default hw/<bundle name>-block<I>)")
    parser.add_argument("--registers", choices=Registers.PRESETS, default="all",
                        help="pipeline register placement (default all: after comparators, each layer, "
                             "every 2 popcount levels)")
    parser.add_argument("--rom", type=_rom_spec, action="append", default=[], metavar="LAYER:NODES",
                        help="keep LAYER's truth tables in ROM, NODES evaluated per clock (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def run(args):
    from ..contract.bundle_files import load_bundle
    from ..errors import UserError
    from ..gateware.engine import TOP
    from ..gateware.verilog import write_rtl

    bundle = load_bundle(Path(args.bundle) if args.bundle else REFERENCE)
    bundle.block(args.block)  # range check before anything is generated
    out = Path(args.out) if args.out else Path("hw") / f"{bundle.path.name}-block{args.block}"
    try:
        summary = write_rtl(bundle, out, block_index=args.block, registers=args.registers,
                            rom=dict(args.rom), force=args.force)
    except ValueError as e:  # the library's parameter checks, on values the user gave
        raise UserError(str(e)) from None
    est = summary["ecp5_lut4_estimate"]["total"]
    print(f"{out}/{TOP}.v: block {summary['block']!r}, {summary['lut_nodes']} LUT nodes, "
          f"{summary['comparators']['kept']} comparators, latency {summary['latency_cycles']} cycles, "
          f"{summary['throughput']}, ~{est} ECP5 LUT4 (estimate), {summary['generation_seconds']} s")
    return 0
