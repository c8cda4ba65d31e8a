"""`quweit-hw program`."""

from pathlib import Path

from ..resources import REFERENCE_INTEGER
from .options import input_folder


def configure(parser):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (default ulx3s = 85F)")
    parser.add_argument("--bundle", type=input_folder, default=None, help="bundle folder (default: the shipped integer reference, as synth's)")
    parser.add_argument("--mlp-only", action="store_true",
                        help="the MLP-only top's bitstream of a version 2 bundle (synth --mlp-only)")
    parser.add_argument("-o", "--out", type=input_folder, default=None, help="build folder (default hw/<bundle>/<board>/)")


def run(args):
    """Load the built bitstream with the platform's own programmer (openFPGALoader)."""
    from amaranth.build.run import LocalBuildProducts

    from ..contract.boards import load_board
    from ..errors import UserError
    from ..gateware.toolchain import TOP, check_tools, tool_environment

    board = load_board(args.board)
    from ..contract.bundle_files import format_version

    bundle = Path(args.bundle or REFERENCE_INTEGER)
    suffix = "-mlp-only" if args.mlp_only and format_version(bundle) == 2 else ""  # as synth.build_dir
    out = Path(args.out) if args.out else Path("hw") / bundle.name / f"{board.name}{suffix}"
    if not (out / f"{TOP}.bit").exists():
        raise UserError(f"no bitstream at {str(out / (TOP + '.bit'))!r}: run `quweit-hw synth --board {board.name}` first")
    check_tools(("OPENFPGALOADER",))
    with tool_environment():
        board.platform_class()().toolchain_program(LocalBuildProducts(str(out)), TOP)
    return 0
