"""quweit-hw: Quasi-Weightless Transformers from PyTorch training to an ECP5 bitstream.

Importing the package loads nothing heavy: torch is imported only by the
training side (`nn`, models, `train`, `export`), never by the bundle, golden
model or HDL side.
"""

__version__ = "0.1.0"


class QuweitError(ValueError):
    """A user error (bad input file, bad argument): the CLI prints it as one line, exit 2."""
