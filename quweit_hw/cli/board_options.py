"""The options `synth` and `build` share: board, blocks, clocks, baud, build folder, seed."""

from pathlib import Path

from ..errors import UserError


def add_board_options(parser):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (default ulx3s = 85F)")
    parser.add_argument("--block", type=int, action="append", default=None, metavar="I",
                        help="build only bundle block I (repeatable; default: all blocks when they fit)")
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="system clock: link and UART, and the engines unless --engine-clock-mhz "
                             "(default: the board's clock_hz)")
    parser.add_argument("--engine-clock-mhz", type=float, default=None,
                        help="run the engines on a clock of their own, at least --clock-mhz, from the PLL's "
                             "second output (default: the board's engine_clock_hz, or one clock)")
    parser.add_argument("--baud", type=int, default=None, help="UART baud rate (default: the board's baud)")
    parser.add_argument("-o", "--out", default=None, help="build folder (default hw/<bundle>/<board>/)")
    parser.add_argument("--seed", type=int, default=None, help="nextpnr placer seed")


def board_from(args):
    """The BoardConfig the options ask for."""
    from ..contract.boards import load_board

    clock = int(args.clock_mhz * 1e6) if args.clock_mhz else None
    engine_clock = int(args.engine_clock_mhz * 1e6) if args.engine_clock_mhz else None
    try:
        return load_board(args.board, clock_hz=clock, baud=args.baud, engine_clock_hz=engine_clock)
    except ValueError as e:
        raise UserError(str(e)) from None


def print_report(report):
    out = Path(report["bitstream"]).parent
    fmax = ", ".join(f"{v['achieved_mhz']} MHz (target {v['constraint_mhz']:g})" for v in report["fmax"].values())
    lut4 = report["resources"]["LUT4"]
    print(f"bitstream: {report['bitstream']}\nreport:    {out / 'report.md'} (and report.json)\n"
          f"{lut4['used']} LUT4 of {lut4['available']}, Fmax {fmax} ("
          f"{'met' if report['timing_met'] else 'NOT met'}), built in {report['build_seconds']} s")
