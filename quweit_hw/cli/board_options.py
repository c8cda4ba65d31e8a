"""The options `synth` and `build` share: board, blocks, clocks, baud, build folder, seed."""

from pathlib import Path

from ..errors import UserError
from .options import nonnegative_int, output_folder, positive_float, positive_int


def add_board_options(parser, out_default="hw/<bundle>/<board>/"):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (ulx3s = 85F)")
    parser.add_argument("--mlp-only", action="store_true",
                        help="build the MLP-only top (the bundle's LUT-MLP blocks, protocol version 1) instead of "
                             "the whole model (the default for a version 2 bundle)")
    parser.add_argument("--block", type=nonnegative_int, action="append", default=None, metavar="I",
                        help="--mlp-only: build only bundle block I (repeatable; default: all blocks when they fit)")
    parser.add_argument("--clock-mhz", type=positive_float, default=None,
                        help="system clock: link and UART, and the engines unless --engine-clock-mhz "
                             "(default: the board's clock_hz)")
    parser.add_argument("--engine-clock-mhz", type=positive_float, default=None,
                        help="run the engines on a clock of their own, at least --clock-mhz, from the PLL's "
                             "second output; equal to --clock-mhz: one clock (default: the board's "
                             "engine_clock_hz, or one clock)")
    parser.add_argument("--baud", type=positive_int, default=None, help="UART baud rate (default: the board's baud)")
    parser.add_argument("-o", "--out", type=output_folder, default=None,
                        help=f"build folder, replaced only when a build succeeds (default {out_default})")
    parser.add_argument("--seed", type=nonnegative_int, default=None,
                        help="nextpnr placer seed (default: nextpnr's)")


def check_top(args, bundle_path):
    """Whether the options ask for the whole-model top (True) or the MLP-only one; UserError for
    a whole-model build of a version 1 bundle and for --block without --mlp-only."""
    from ..contract.bundle_files import format_version

    if args.mlp_only:
        return False
    if format_version(bundle_path) == 1:
        raise UserError(f"{bundle_path} is a version 1 bundle (the LUT-MLP blocks only): the whole-model top needs "
                        "a version 2 bundle (export an integer checkpoint); for the MLP-only top add --mlp-only")
    if args.block is not None:
        raise UserError("--block picks the MLP-only top's engines: add --mlp-only")
    return True


def board_from(args, whole_model=False):
    """The BoardConfig the options ask for, its clocks and baud rate checked (PLL, UART divisor).
    whole_model: for the whole-model top (`--engine-clock-mhz` is its engine's clock, and the
    board's `engine_clock_hz` is set to it: `BoardConfig.for_whole_model`)."""
    from ..contract.boards import check_clocks, load_board

    clock = round(args.clock_mhz * 1e6) if args.clock_mhz else None
    engine_clock = round(args.engine_clock_mhz * 1e6) if args.engine_clock_mhz else None
    clocks = {"model_engine_clock_hz" if whole_model else "engine_clock_hz": engine_clock}
    given = " ".join(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}" for flag, value in (("--clock-mhz", args.clock_mhz),
                     ("--engine-clock-mhz", args.engine_clock_mhz), ("--baud", args.baud)) if value is not None)
    try:
        board = load_board(args.board, clock_hz=clock, baud=args.baud, **clocks)
        board = board.for_whole_model() if whole_model else board
        check_clocks(board, board.platform_class()().default_clk_frequency)
    except ValueError as e:
        raise UserError(f"{given + ': ' if given else ''}{e}") from None
    return board


def print_report(report):
    out = Path(report["bitstream"]).parent
    fmax = ", ".join(f"{v['achieved_mhz']} MHz (target {v['constraint_mhz']:g})" for v in report["fmax"].values())
    lut4 = report["resources"]["LUT4"]
    print(f"bitstream: {report['bitstream']}\nreport:    {out / 'report.md'} (and report.json)\n"
          f"{lut4['used']} LUT4 of {lut4['available']}, Fmax {fmax} ("
          f"{'met' if report['timing_met'] else 'NOT met'}), built in {report['build_seconds']} s")
