"""`quweit-hw rtl`."""

import argparse
from pathlib import Path

from ..gateware.engine import Registers
from ..resources import REFERENCE, REFERENCE_INTEGER
from .options import input_folder, nonnegative_int, output_folder, positive_power_of_two


def _rom_spec(text):
    try:
        layer, per_cycle = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:NODES_PER_CLOCK (two integers), got {text!r}") from None
    if layer < 0 or per_cycle < 1:
        raise argparse.ArgumentTypeError(f"expected LAYER >= 0 and NODES_PER_CLOCK >= 1, got {text!r}")
    return layer, per_cycle


def configure(parser):
    parser.add_argument("bundle", nargs="?", type=input_folder, default=None,
                        help="bundle folder (default: the shipped reference bundle)")
    parser.add_argument("--block", type=nonnegative_int, default=0, metavar="I", help="block index in the bundle")
    parser.add_argument("-o", "--out", type=output_folder, default=None, metavar="DIR",
                        help="output folder (default hw/rtl/<bundle name>-block<I>)")
    parser.add_argument("--registers", choices=Registers.PRESETS, default="all",
                        help="pipeline register placement (all: after comparators, each layer, "
                             "every 2 popcount levels; fmax: after every popcount level too)")
    parser.add_argument("--rom", type=_rom_spec, action="append", default=[], metavar="LAYER:NODES",
                        help="keep LAYER's truth tables in ROM, NODES evaluated per clock, at most the layer's "
                             "node count (repeatable, once per layer; default: every layer in fabric)")
    parser.add_argument("--model", action="store_true",
                        help="the whole integer model (ModelEngine: image in, class out) of a version-2 bundle "
                             "(default bundle: the integer reference) instead of one block's MLP engine")
    parser.add_argument("--lanes", type=positive_power_of_two, default=32, metavar="N",
                        help="--model: multipliers of the MAC array, a power of two (default: 32)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output folder (files in it that rtl does not write are kept)")


def rom_options(block, specs):
    """{layer: nodes per clock} from the --rom values, checked against `block`'s layers."""
    from ..errors import UserError

    rom = {}
    for layer, per_cycle in specs:
        spec = f"--rom {layer}:{per_cycle}"
        if layer in rom:
            raise UserError(f"{spec}: layer {layer} is given twice")
        if layer >= len(block.layers):
            raise UserError(f"{spec}: rom layer index {layer} out of range for block {block.name!r} "
                            f"of {len(block.layers)} layer(s)")
        nodes = block.layers[layer].out_features
        if per_cycle > nodes:
            raise UserError(f"{spec}: layer {layer} has {nodes} nodes; NODES must be 1..{nodes}")
        rom[layer] = per_cycle
    return rom


def run(args):
    from ..contract.bundle_files import load_bundle
    from ..errors import UserError
    from ..gateware.engine import TOP
    from ..gateware.toolchain import check_tools
    from ..gateware.verilog import write_rtl

    check_tools(("YOSYS",))
    if args.model:
        return run_model(args)
    bundle = load_bundle(args.bundle or REFERENCE)
    block = bundle.block(args.block)  # range check before anything is generated
    rom = rom_options(block, args.rom)
    out = args.out or Path("hw") / "rtl" / f"{bundle.path.name}-block{args.block}"
    try:
        summary = write_rtl(bundle, out, block_index=args.block, registers=args.registers, rom=rom,
                            force=args.force)
    except ValueError as e:  # the library's parameter checks, on values the user gave
        raise UserError(str(e)) from None
    est = summary["ecp5_lut4_estimate"]["total"]
    print(f"{out}/{TOP}.v: block {summary['block']!r}, {summary['lut_nodes']} LUT nodes, "
          f"{summary['comparators']['kept']} comparators, latency {summary['latency_cycles']} cycles, "
          f"{summary['throughput']}, ~{est} ECP5 LUT4 (estimate), {summary['generation_seconds']} s")
    return 0


def run_model(args):
    from ..gateware.model_engine import TOP
    from ..gateware.model_rtl import write_model_rtl

    source = args.bundle or REFERENCE_INTEGER
    out = args.out or Path("hw") / "rtl" / f"{Path(source).name}-model"
    summary = write_model_rtl(source, out, lanes=args.lanes, force=args.force)
    print(f"{out}/{TOP}.v: the whole model, {summary['instructions']} instructions, {summary['lanes']} MAC lanes, "
          f"{summary['cycles_per_image']:,} cycles per image ({summary['cycles_per_image'] / 100:,.1f} us at 100 MHz), "
          f"{summary['generation_seconds']} s")
    return 0
