"""Command line: one subcommand per flow stage, each a thin call into one library function.

Each subcommand's module (in this package) defines `configure(parser)` and `run(args)`; it
is imported only when its subcommand runs, so `quweit-hw rtl` never loads torch. A
`UserError` (and a file-system error on a path the user gave) is one line and exit 2;
anything else is a defect and stays a traceback.
"""

import argparse
import importlib
import os
import signal
import sys

from .. import __version__
from ..errors import UserError

# subcommand -> (module in quweit_hw.cli, one-line help)
COMMANDS = {
    "train": ("train", "train a ViT or character GPT with a dense or LUT MLP"),
    "export": ("export", "write a checkpoint to a bundle: the whole integer model (version 2) or its LUT-MLP blocks (1)"),
    "eval": ("eval", "evaluate a checkpoint with its MLP blocks on torch, golden, rtl or board"),
    "report": ("report", "count multiplications, LUT lookups and energy, against the dense twin"),
    "dont-care": ("dont_care", "refill a bundle's LUT tables on addresses the training images never produce (fewer LUT4; changes the model)"),
    "rtl": ("rtl", "generate Verilog and RTLIL for one bundle block"),
    "prove": ("prove", "prove a block's synthesised ECP5 netlist equal to the bundle, and its Verilog to its RTLIL (Yosys)"),
    "synth": ("synth", "build a bitstream for a board from a bundle"),
    "program": ("program", "load a built bitstream onto the board with openFPGALoader"),
    "build": ("build", "one command from checkpoint to bitstream"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or default == []
                or not (action.option_strings or action.nargs == "?")):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line with a pointer to --help (argparse prints the whole usage first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    help_hint = None  # the command whose --help the top-level parser's errors point to

    def error(self, message):
        if message.endswith("expected one argument"):  # argparse reads "-1e-3" or "-1:2" as an option
            message += " (write a value that starts with '-' as OPTION=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.help_hint or self.prog} --help`)\n")


def _module(command):
    return importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")


def _parser(command=None):
    parser = _Parser(
        prog="quweit-hw",
        description="Quasi-Weightless Transformer flow: train -> export -> rtl -> synth.",
        epilog="Run `quweit-hw COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    if command is not None:
        parser.help_hint = f"quweit-hw {command}"
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (printed as one line) or --help / --version
        return e.code
    if args.command is None:
        parser.print_help()
        return 2
    # a plain `kill` unwinds like Ctrl-C, so the atomic writers clean up after themselves
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _one_line(error):
    """A file-system error as "what: path"; anything else as its message's first line."""
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, UserError):
        return f"{error.strerror or error}: {str(error.filename)!r}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
