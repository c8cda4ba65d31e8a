"""Where the shipped inputs are: the reference bundles and checkpoints, and the board files.

In a checkout they are the top-level `export/reference/` and `boards/` folders; an
installed wheel carries the same folders as package data (`quweit_hw/reference`,
`quweit_hw/boards`, mapped in pyproject.toml). setuptools' editable installs do not map
data-only subpackages, so the checkout's folders are looked up beside the package.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _shipped(installed, checkout):
    path = _PACKAGE / installed
    return path if path.is_dir() else _PACKAGE.parent / checkout


REFERENCE = _shipped("reference", "export/reference")  # the reference bundle (and its checkpoint)
REFERENCE_CHECKPOINT = REFERENCE / "checkpoint.pt"
# the integer-only reference (bundle format version 2: the whole model) and its checkpoint
REFERENCE_INTEGER = _shipped("reference_integer", "export/reference-integer")
BOARDS_DIR = _shipped("boards", "boards")
