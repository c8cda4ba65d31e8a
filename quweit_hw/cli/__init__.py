"""Command line: one subcommand per flow stage, each a thin call into one library function.

Each subcommand's module (in this package) defines `configure(parser)` and `run(args)`; it
is imported only when its subcommand runs, so `quweit-hw rtl` never loads torch. A
`UserError` (and a file-system error on a path the user gave) is one line and exit 2;
anything else is a defect and stays a traceback.
"""

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import UserError

# subcommand -> (module in quweit_hw.cli, one-line help)
COMMANDS = {
    "train": ("train", "train a ViT or character GPT with a dense or LUT MLP"),
    "export": ("export", "write a checkpoint's LUT-MLP blocks to a versioned bundle"),
    "eval": ("eval", "evaluate a checkpoint with its MLP blocks on torch, golden, rtl or board"),
    "report": ("report", "count multiplications, LUT lookups and energy, against the dense twin"),
    "rtl": ("rtl", "generate Verilog and RTLIL for one bundle block"),
    "prove": ("prove", "prove a block's synthesised ECP5 netlist equal to the bundle (Yosys SAT)"),
    "synth": ("synth", "build a bitstream for a board from a bundle"),
    "program": ("program", "load a built bitstream onto the board with openFPGALoader"),
    "build": ("build", "one command from checkpoint to bitstream"),
}


def _module(command):
    return importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")


def _parser(command=None):
    parser = argparse.ArgumentParser(
        prog="quweit-hw",
        description="Quasi-Weightless Transformer flow: train -> export -> rtl -> synth.",
        epilog="Run `quweit-hw COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _module(name).configure(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _module(args.command).run(args) or 0
    except (UserError, OSError) as e:
        if os.environ.get("QUWEIT_DEBUG"):
            raise
        print(f"quweit-hw {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"quweit-hw {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(error):
    """A file-system error as "what: path"; anything else as its message's first line."""
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, UserError):
        return f"{error.strerror or error}: {str(error.filename)!r}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
