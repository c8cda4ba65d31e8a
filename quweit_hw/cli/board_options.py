"""The options `synth` and `build` share: board, blocks, clocks, baud, build folder, seed."""

from pathlib import Path

from ..errors import UserError
from .options import (nonnegative_int, output_folder, positive_float, positive_int, positive_power_of_two,
                      tool_options)

# options the flow passes to the tools itself (files, device, package, report, seed)
RESERVED_NEXTPNR = {"--json", "--lpf", "--textcfg", "--report", "--package", "--speed", "--seed",
                    "--12k", "--25k", "--45k", "--85k", "--um-25k", "--um-45k", "--um-85k",
                    "--um5g-25k", "--um5g-45k", "--um5g-85k"}
RESERVED_SYNTH = {"-top", "-json", "-blif", "-edif", "-run"}


def add_board_options(parser, out_default="hw/<bundle>/<board>/"):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (ulx3s = 85F)")
    top = parser.add_mutually_exclusive_group()
    top.add_argument("--whole-model", action="store_true",
                     help="build the whole-model top (protocol version 2; a version 2 bundle only). Default: the "
                          "whole model for a version 2 bundle, the MLP-only top for a version 1 bundle")
    top.add_argument("--mlp-only", action="store_true",
                     help="build the MLP-only top (the bundle's LUT-MLP blocks, protocol version 1), also of a "
                          "version 2 bundle")
    parser.add_argument("--block", type=nonnegative_int, action="append", default=None, metavar="I",
                        help="--mlp-only: build only bundle block I (repeatable; default: all blocks when they fit)")
    parser.add_argument("--lanes", type=positive_power_of_two, default=None, metavar="N",
                        help="the whole model: multipliers of the engine's MAC array (default: the board's "
                             "model_lanes, 32 on the ULX3S)")
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
    parser.add_argument("--yosys-opts", type=tool_options(RESERVED_SYNTH), default=(), metavar="'OPTS'",
                        help="extra options of Yosys' synth_ecp5 as one argument, e.g. --yosys-opts=-nowidelut or "
                             "--yosys-opts='-abc2 -noabc9' (default: the board's synth_opts; none on the ULX3S)")
    parser.add_argument("--nextpnr-opts", type=tool_options(RESERVED_NEXTPNR), default=(), metavar="'OPTS'",
                        help="nextpnr-ecp5 options as one argument, each replacing the board's option of the same "
                             "name, e.g. --nextpnr-opts='--router router1' or --nextpnr-opts=--tmg-ripup (default: "
                             "the board's nextpnr_opts, and model_nextpnr_opts for the whole model)")
    parser.add_argument("--no-netlist-cache", action="store_true",
                        help="run Yosys even when the netlist cache holds its netlist for this RTLIL and script "
                             "(default: a rebuild that changes only nextpnr's options, such as --seed, skips Yosys; "
                             "the cache is in $QUWEIT_NETLIST_CACHE, else ~/.cache/quweit-hw/netlists)")


def requested_top(args, version):
    """Whether to build the whole-model top (True), the MLP-only one (False) or to decide by the
    bundle (None, `version` unknown yet); UserError for a whole-model build of a version 1
    bundle and for --block with the whole model."""
    whole = True if args.whole_model else False if args.mlp_only else None if version is None else version == 2
    if whole and version == 1:
        raise UserError("the whole-model top needs a version 2 bundle (an integer checkpoint's export); this one "
                        "is version 1 (the LUT-MLP blocks only): drop --whole-model for the MLP-only top")
    if whole and args.block is not None:
        raise UserError("--block picks the MLP-only top's engines: add --mlp-only")
    if whole is False and getattr(args, "lanes", None) is not None:
        raise UserError("--lanes sizes the whole-model engine's MAC array; the MLP-only top has none")
    return whole


def board_from(args, whole=None):
    """The BoardConfig the options ask for, its clocks and baud rate checked (PLL, UART divisor)
    for the top that `whole` names (`requested_top`; None: both, the bundle's version unknown yet).
    `--engine-clock-mhz` sets the MLP engines' and the whole model's engine clock;
    `BoardConfig.for_whole_model` picks the latter."""
    from ..contract.boards import check_clocks, load_board

    clock = round(args.clock_mhz * 1e6) if args.clock_mhz else None
    engine_clock = round(args.engine_clock_mhz * 1e6) if args.engine_clock_mhz else None
    clocks = {"engine_clock_hz": engine_clock, "model_engine_clock_hz": engine_clock, "model_clock_hz": clock}
    given = " ".join(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"
                     for flag, value in (("--clock-mhz", args.clock_mhz), ("--engine-clock-mhz", args.engine_clock_mhz),
                                         ("--baud", args.baud)) if value is not None)
    what = ""
    try:
        board = load_board(args.board, clock_hz=clock, baud=args.baud, model_lanes=getattr(args, "lanes", None),
                           **clocks)
        for is_whole, top in ((False, board), (True, board.for_whole_model())):
            if whole in (None, is_whole):
                what = ("the whole-model top: " if is_whole else "the MLP-only top: ") if whole is None else ""
                check_clocks(top, board.platform_class()().default_clk_frequency)
    except ValueError as e:
        hint = " (--mlp-only or --whole-model: check only the top that is built)" if what else ""
        raise UserError(f"{given + ': ' if given else ''}{what}{e}{hint}") from None
    return board.with_tool_options(synth=getattr(args, "yosys_opts", ()), nextpnr=getattr(args, "nextpnr_opts", ()))


def print_report(report):
    out = Path(report["bitstream"]).parent
    fmax = ", ".join(f"{v['achieved_mhz']} MHz (target {v['constraint_mhz']:g})" for v in report["fmax"].values())
    lut4 = report["resources"]["LUT4"]
    print(f"bitstream: {report['bitstream']}\nreport:    {out / 'report.md'} (and report.json)\n"
          f"{lut4['used']} LUT4 of {lut4['available']}, Fmax {fmax} ("
          f"{'met' if report['timing_met'] else 'NOT met'}), built in {report['build_seconds']} s")
