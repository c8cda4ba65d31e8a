"""`quweit-hw build`."""

from .board_options import add_board_options, board_from, print_report, requested_top
from .options import input_file, nonnegative_int, output_folder, positive_int


def configure(parser):
    parser.add_argument("checkpoint", type=input_file, help="training checkpoint (.pt)")
    parser.add_argument("--bundle-out", type=output_folder, default=None,
                        help="bundle folder to export to (default hw/<run>/bundle, replaced by each build)")
    parser.add_argument("--force", action="store_true", help="replace an existing --bundle-out folder")
    parser.add_argument("--check-tokens", type=positive_int, default=256,
                        help="--mlp-only: tokens per block in the simulation check")
    parser.add_argument("--check-images", type=nonnegative_int, default=0,
                        help="whole model: test images through the engine in Amaranth's simulator against the golden "
                             "model before synthesis (minutes per image for the reference; default 0: none, check "
                             "with eval BUNDLE --backend rtl)")
    add_board_options(parser, out_default="hw/<run>/<board>/, <run> being the checkpoint's folder name")


def run(args):
    from ..build import build
    from ..gateware.toolchain import check_tools

    check_tools()  # before the checkpoint is exported or an engine elaborated
    whole = requested_top(args, None)  # None: as the checkpoint exports (an integer one: version 2)
    report = build(args.checkpoint, board_from(args, whole), bundle_out=args.bundle_out, force=args.force, out=args.out,
                   blocks=args.block, check_tokens=args.check_tokens, seed=args.seed, whole_model=whole,
                   check_images=args.check_images, netlist_cache=not args.no_netlist_cache)
    print(f"checkpoint -> bitstream in {report['checkpoint_to_bitstream_seconds']} s")
    print_report(report)
    return 0
