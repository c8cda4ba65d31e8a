"""`quweit-hw prove`."""

from pathlib import Path

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


def run(args):
    from ..contract.bundle_files import load_bundle
    from ..gateware.prove import prove_block

    bundle = load_bundle(Path(args.bundle) if args.bundle else REFERENCE)
    indices = args.block if args.block is not None else list(range(len(bundle.blocks)))
    for index in indices:
        block = bundle.block(index)  # range check; a failed proof is a UserError naming the node
        workdir = Path(args.keep) / f"block{index}" if args.keep else None
        result = prove_block(block, minimise=not args.no_minimise, workdir=workdir, progress=True)
        cells = ", ".join(f"{count} {cell}" for cell, count in sorted(result["cells"].items()))
        print(f"block {index} ({block.name!r}): the synth_ecp5 netlist ({cells}) equals the bundle's "
              f"{result['lut_nodes']} LUT nodes for every token, layer by layer; {result['seconds']} s "
              f"(synthesis {result['synth_seconds']} s)", flush=True)
    return 0
