"""`quweit-hw synth`."""

from ..resources import REFERENCE_INTEGER
from .board_options import add_board_options, board_from, print_report, requested_top
from .options import input_folder


def configure(parser):
    parser.add_argument("--bundle", type=input_folder, default=None,
                        help="bundle folder: a version 2 bundle builds the whole model, a version 1 bundle the MLP-only top "
                             "(default: the shipped integer reference, export/reference-integer: the whole model; "
                             "export/reference is the float reference's LUT-MLP blocks)")
    parser.add_argument("--no-build", action="store_true",
                        help="elaborate the board top and write its build files (RTLIL, constraints, the tool "
                             "script) to the build folder without running Yosys or nextpnr")
    add_board_options(parser)


def run(args):
    from ..contract.bundle_files import format_version, load_bundle
    from ..gateware.synth import build_dir, build_folder, synth
    from ..gateware.toolchain import BUILD_TOOLS, check_tools

    check_tools(("YOSYS",) if args.no_build else BUILD_TOOLS)  # before the bundle is read or a top elaborated
    path = args.bundle or REFERENCE_INTEGER
    whole = requested_top(args, format_version(path))
    board = board_from(args, whole)
    board = board.for_whole_model() if whole else board
    bundle = load_bundle(path)
    if args.no_build:
        out = args.out or build_dir(bundle, board, whole)
        plan = synth(bundle, board, blocks=args.block, out=out, do_build=False, whole_model=whole)
        with build_folder(out) as tmp:
            plan.extract(str(tmp))
        print(f"build files for {board.name} in {out} (not built: run build_top.sh there, or drop --no-build)")
        return 0
    from ..model_throughput import bundle_cpu_figures

    # the report's images/s on this CPU, beside the chip's (measured once the top fits)
    measure_cpu = (lambda: bundle_cpu_figures(path)) if whole else None
    print_report(synth(bundle, board, blocks=args.block, out=args.out, seed=args.seed, whole_model=whole,
                       measure_cpu=measure_cpu, netlist_cache=not args.no_netlist_cache))
    return 0
