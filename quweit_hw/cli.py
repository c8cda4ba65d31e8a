"""Command line: one subcommand per flow stage, each a thin call into one module."""

import argparse
import importlib
import os
import sys

from . import QuweitError, __version__

# subcommand -> (module, one-line help). Each module defines
# `configure_<cmd>(parser)` and `run_<cmd>(args) -> int`. The module is imported
# only when its subcommand runs, so `quweit-hw rtl` never loads torch.
COMMANDS = {
    "train": ("quweit_hw.train", "train a ViT or character GPT with a dense or LUT MLP"),
    "export": ("quweit_hw.export", "write a checkpoint's LUT-MLP blocks to a versioned bundle"),
    "eval": ("quweit_hw.backend", "evaluate a checkpoint with its MLP blocks on torch, golden, rtl or board"),
    "report": ("quweit_hw.report", "count multiplications, LUT lookups and energy, against the dense twin"),
    "rtl": ("quweit_hw.hdl", "generate Verilog and RTLIL for one bundle block"),
    "synth": ("quweit_hw.synth", "build a bitstream for a board from a bundle"),
    "program": ("quweit_hw.synth", "load a built bitstream onto the board with openFPGALoader"),
    "build": ("quweit_hw.synth", "one command from checkpoint to bitstream"),
}


def _parser(command=None):
    parser = argparse.ArgumentParser(
        prog="quweit-hw",
        description="Quasi-Weightless Transformer flow: train -> export -> rtl -> synth.",
        epilog="Run `quweit-hw COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            getattr(importlib.import_module(module), f"configure_{name}")(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return getattr(module, f"run_{args.command}")(args) or 0
    except (QuweitError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        if os.environ.get("QUWEIT_DEBUG"):
            raise
        print(f"quweit-hw {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"quweit-hw {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
