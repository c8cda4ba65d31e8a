"""argparse `type=` validators: every option that takes a number or a path checks it here, so a
bad value is one line naming the option and what was expected (argparse prefixes the
option's name), before anything is read or written."""

import argparse
import math
import shlex
from pathlib import Path


def _number(kind, text):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded(kind, what, test):
    def check(text):
        value = _number(kind, text)
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    check.__name__ = what.replace(" ", "_")
    return check


positive_int = _bounded(int, "a positive integer", lambda v: v > 0)
nonnegative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _bounded(float, "a positive number", lambda v: v > 0)
nonnegative_float = _bounded(float, "a number >= 0", lambda v: v >= 0)
open_fraction = _bounded(float, "a number between 0 and 1 (exclusive)", lambda v: 0 < v < 1)
dropout_rate = _bounded(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
positive_power_of_two = _bounded(int, "a power of two >= 2", lambda v: v >= 2 and v & (v - 1) == 0)


def int_list(text):
    """Comma-separated positive integers ('' is the empty list)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def input_file(text):
    """A file that exists (a checkpoint)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file, got the folder {text!r}")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return path


def input_folder(text):
    """A folder that exists (a bundle)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return path


def input_path(text):
    """A file or folder that exists (a text corpus)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return Path(text)


def output_folder(text):
    """A folder to create or replace: not a file, not the current folder or one above it."""
    from ..contract.folders import output_folder_problem

    problem = output_folder_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def run_folder(text):
    """A folder to write files into (train's run folder): anything but a file."""
    if text == "" or Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got {'the file ' if text else ''}{text!r}")
    return Path(text)


def tool_options(reserved):
    """A validator for a tool's extra options ('-nowidelut -abc2', '--router router2'): shell
    words, the first an option, none of them one of `reserved` (options the flow sets itself)."""
    def check(text):
        try:
            words = tuple(shlex.split(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected options as shell words, got {text!r} ({e})") from None
        if not words or not words[0].startswith("-"):
            raise argparse.ArgumentTypeError(f"expected options starting with '-', got {text!r}")
        taken = [w for w in words if w.split("=")[0] in reserved]
        if taken:
            raise argparse.ArgumentTypeError(f"{taken[0].split('=')[0]} is set by the flow itself, got {text!r}")
        return words
    check.__name__ = "tool options"
    return check
