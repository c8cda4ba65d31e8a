"""`quweit-hw prove`."""

import sys
import tempfile
from pathlib import Path

from ..errors import UserError
from ..resources import REFERENCE
from .options import input_folder, nonnegative_int, output_folder


def configure(parser):
    parser.add_argument("bundle", nargs="?", type=input_folder, default=None,
                        help="bundle folder (default: the shipped reference bundle)")
    parser.add_argument("--block", type=nonnegative_int, action="append", default=None, metavar="I",
                        help="block index to prove (repeatable; default: every block)")
    parser.add_argument("--no-minimise", action="store_true",
                        help="prove the engine built without don't-care minimisation")
    parser.add_argument("--keep", type=output_folder, default=None, metavar="DIR",
                        help="keep the netlists and Yosys' files in DIR/block<I> (default: a temporary folder)")
    parser.add_argument("--rtl", type=input_folder, default=None, metavar="DIR",
                        help="only prove the mlp_engine.v of a folder `quweit-hw rtl` wrote equal to its "
                             "mlp_engine.il (no bundle; default: prove the bundle)")
    parser.add_argument("--with-rtl", action="store_true",
                        help="also write each block's mlp_engine.v and .il as `quweit-hw rtl` does and prove them "
                             "equal (about 12 minutes on a reference block)")


def run(args):
    from ..gateware.prove_rtl import prove_rtl

    if args.rtl is not None:
        if args.bundle is not None or args.block is not None or args.with_rtl:
            raise UserError("--rtl proves a folder `quweit-hw rtl` wrote; give it without a bundle or --block")
        result = prove_rtl(args.rtl)
        print(f"{args.rtl}: mlp_engine.v equals mlp_engine.il ({result['equiv_cells']} signals, "
              f"every cycle); {result['seconds']} s")
        return 0

    from ..contract.bundle_files import load_bundle
    from ..gateware.prove import prove_block
    from ..gateware.verilog import write_rtl

    bundle = load_bundle(Path(args.bundle) if args.bundle else REFERENCE)
    indices = args.block if args.block is not None else list(range(len(bundle.blocks)))
    for index in indices:
        block = bundle.block(index)  # range check; a failed proof is a UserError naming the node
        workdir = Path(args.keep) / f"block{index}" if args.keep else None
        result = prove_block(block, minimise=not args.no_minimise, workdir=workdir, progress=sys.stderr.isatty())
        cells = ", ".join(f"{count} {cell}" for cell, count in sorted(result["cells"].items()))
        print(f"block {index} ({block.name!r}): the synth_ecp5 netlist ({cells}) equals the bundle's "
              f"{result['lut_nodes']} LUT nodes for every token, layer by layer; {result['seconds']} s "
              f"(synthesis {result['synth_seconds']} s)", flush=True)
        if args.with_rtl:
            with tempfile.TemporaryDirectory(prefix="quweit-prove-rtl-") as tmp:
                folder = workdir / "rtl" if workdir is not None else Path(tmp) / "rtl"
                write_rtl(bundle, folder, block_index=index, minimise=not args.no_minimise, force=True)
                rtl = prove_rtl(folder)
            print(f"block {index} ({block.name!r}): its mlp_engine.v (as `quweit-hw rtl` writes it) equals "
                  f"mlp_engine.il ({rtl['equiv_cells']} signals, every cycle); {rtl['seconds']} s", flush=True)
    return 0
