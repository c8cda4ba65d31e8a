"""The bundle reader's checks: every manifest field and every array against docs/bundle-format.md.

`check_bundle` is the one function that decides whether a folder is a bundle; `load_bundle`
(and so every command) goes through it. It checks the format, not the manifest's own claims:
array shapes are the ones the format fixes from d, T, n and the layer widths, dtypes are read
from each .npy header (byte order included), and every field the manifest derives (count
width, LUT count, comparators, layer widths) is recomputed and compared. Any problem is one
`UserError` line: "bundle PATH: FIELD: what was expected, what was found".
"""

import hashlib
import io
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UserError
from .bundle import FORMAT, FORMAT_VERSION, MAX_FAN_IN, Block, Layer, signed_range, table_bytes, unpack_table

MIN_BITS, MAX_BITS = 2, 16
# each array file: its dtype name in the manifest and the .npy header's descr (byte order included)
DTYPES = {"thresholds": ("int32", "<i4"), "mapping": ("int32", "<i4"), "table": ("uint8", "|u1"),
          "affine_a": ("float32", "<f4"), "affine_b": ("float32", "<f4")}
BLOCK_KEYS = ("name", "d", "bits", "thresholds_per_feature", "group_size", "count_width", "input_scale",
              "layers", "lut_nodes", "comparators", "files")
LAYER_KEYS = ("in_features", "out_features", "n")
FILE_KEYS = ("path", "sha256", "dtype", "shape")
SOURCE_KEYS = ("path", "sha256")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
               type(None): "null"}


def _shown(value):
    """A value as the message shows it: short, one line, with its JSON type."""
    text = repr(value) if isinstance(value, str) else json.dumps(value) if _is_json(value) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_JSON_TYPES.get(type(value), type(value).__name__)})"


def _is_json(value):
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


class _Checker:
    def __init__(self, root):
        self.root = Path(root)

    def fail(self, where, message):
        raise UserError(f"bundle {self.root}: {where}: {message}")

    # --- JSON values ---------------------------------------------------------------------

    def obj(self, where, value, required, optional=(), *, extra=False):
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_shown(value)}")
        missing = [k for k in required if k not in value]
        if missing:
            self.fail(where, f"missing key {missing[0]!r}")
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown and not extra:
            self.fail(where, f"unknown key {unknown[0]!r} (expected {', '.join(map(repr, (*required, *optional)))})")
        return value

    def integer(self, where, value, lo=None, hi=None):
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(where, f"expected an integer{_range(lo, hi)}, got {_shown(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(where, f"expected an integer{_range(lo, hi)}, got {value}")
        return value

    def equal(self, where, value, expected, why):
        self.integer(where, value)
        if value != expected:
            self.fail(where, f"expected {why} = {expected}, got {value}")

    def string(self, where, value):
        if not isinstance(value, str) or not value:
            self.fail(where, f"expected a non-empty string, got {_shown(value)}")
        return value

    def sha256(self, where, value):
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            self.fail(where, f"expected 64 lowercase hex digits, got {_shown(value)}")
        return value

    # --- the manifest ------------------------------------------------------------------------

    def manifest(self):
        file = self.root / "manifest.json"
        if not self.root.is_dir() or not file.is_file():
            raise UserError(f"{str(self.root)!r} is not a bundle: no manifest.json")
        self.inside("manifest.json", file)
        try:
            manifest = json.loads(file.read_bytes().decode("utf-8"), parse_constant=_no_constant,
                                  object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise UserError(f"bundle {self.root}: manifest.json is not valid JSON ({_one_line(e)})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            shown = manifest.get("format") if isinstance(manifest, dict) else None
            raise UserError(f"{str(self.root)!r} is not a quweit bundle (format {shown!r}, expected {FORMAT!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            self.fail("format_version", f"expected the integer {FORMAT_VERSION}, got {_shown(version)}")
        if version != FORMAT_VERSION:
            raise UserError(f"bundle {self.root} has format version {version}; "
                            f"this quweit-hw reads versions 1 and 2")
        # informational fields: only their types are fixed; other top-level keys are allowed
        if "model" in manifest:
            self.obj("model", manifest["model"], (), extra=True)
        if "metrics" in manifest and not isinstance(manifest["metrics"], (dict, list)):
            self.fail("metrics", f"expected an object or a list, got {_shown(manifest['metrics'])}")
        if "exporter" in manifest:
            self.string("exporter", manifest["exporter"])
        if "source_checkpoint" in manifest:
            source = self.obj("source_checkpoint", manifest["source_checkpoint"], SOURCE_KEYS)
            self.string("source_checkpoint.path", source["path"])
            self.sha256("source_checkpoint.sha256", source["sha256"])
        if "blocks" not in manifest:
            self.fail("blocks", "missing (expected a non-empty list of block entries)")
        entries = manifest["blocks"]
        if not isinstance(entries, list) or not entries:
            self.fail("blocks", f"expected a non-empty list of block entries, got {_shown(entries)}")
        return manifest, tuple(self.block(i, entry) for i, entry in enumerate(entries))

    def block(self, bi, entry):
        at = f"blocks[{bi}]"
        self.obj(at, entry, BLOCK_KEYS)
        name = self.string(f"{at}.name", entry["name"])
        d = self.integer(f"{at}.d", entry["d"], 1)
        bits = self.integer(f"{at}.bits", entry["bits"], MIN_BITS, MAX_BITS)
        T = self.integer(f"{at}.thresholds_per_feature", entry["thresholds_per_feature"], 1)
        k = self.integer(f"{at}.group_size", entry["group_size"], 1)
        self.equal(f"{at}.count_width", entry["count_width"], k.bit_length(), "group_size.bit_length()")
        scale = entry["input_scale"]
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not _finite(scale) or scale <= 0:
            self.fail(f"{at}.input_scale", f"expected a finite number > 0, got {_shown(scale)}")
        specs = entry["layers"]
        if not isinstance(specs, list) or not specs:
            self.fail(f"{at}.layers", f"expected a non-empty list of layers, got {_shown(specs)}")
        width, shapes = d * T, []
        for li, spec in enumerate(specs):
            lat = f"{at}.layers[{li}]"
            self.obj(lat, spec, LAYER_KEYS)
            self.equal(f"{lat}.in_features", spec["in_features"], width,
                       "d * thresholds_per_feature" if li == 0 else f"layers[{li - 1}].out_features")
            out = self.integer(f"{lat}.out_features", spec["out_features"], 1)
            n = self.integer(f"{lat}.n", spec["n"], 1, MAX_FAN_IN)
            shapes.append((width, out, n))
            width = out
        if width != d * k:
            self.fail(f"{at}.layers[{len(specs) - 1}].out_features",
                      f"expected d * group_size = {d * k} for the last layer, got {width}")
        self.equal(f"{at}.lut_nodes", entry["lut_nodes"], sum(out for _, out, _ in shapes), "the sum of out_features")

        stems = ["thresholds", *(f"layer{i}_{part}" for i in range(len(specs)) for part in ("mapping", "table")),
                 "affine_a", "affine_b"]
        files = entry["files"]
        if not isinstance(files, dict):
            self.fail(f"{at}.files", f"expected an object, got {_shown(files)}")
        for stem in stems:
            if stem not in files:
                self.fail(f"{at}.files", f"block {name!r} lists no file {stem!r}")
        unknown = [s for s in files if s not in stems]
        if unknown:
            self.fail(f"{at}.files", f"unknown file {unknown[0]!r} (a block with {len(specs)} layer(s) has "
                      f"{', '.join(stems)})")

        def array(stem, kind, shape):
            return self.array(bi, files[stem], stem, kind, shape)

        def values(stem):  # how a message names an array's values
            return f"{at}.{stem} ('block{bi}/{stem}.npy')"

        lo, hi = signed_range(bits)
        thresholds = array("thresholds", "thresholds", (d, T))
        if thresholds.min() < lo - 1 or thresholds.max() > hi:
            self.fail(values("thresholds"), f"expected values in [{lo - 1}, {hi}] for {bits}-bit input, "
                      f"got [{thresholds.min()}, {thresholds.max()}]")
        if (np.diff(thresholds, axis=1) < 0).any():
            f, t = np.argwhere(np.diff(thresholds, axis=1) < 0)[0]
            self.fail(values("thresholds"), f"expected nondecreasing rows, got {thresholds[f, t]} before "
                      f"{thresholds[f, t + 1]} at [{f}, {t}]")
        layers = []
        for li, (in_features, out, n) in enumerate(shapes):
            mapping = array(f"layer{li}_mapping", "mapping", (out, n))
            if mapping.min() < 0 or mapping.max() >= in_features:
                self.fail(values(f"layer{li}_mapping"), f"expected indices in [0, {in_features}), "
                          f"got [{mapping.min()}, {mapping.max()}]")
            packed = array(f"layer{li}_table", "table", (out, table_bytes(n)))
            spare = (2**n) % 8
            if spare and (packed[:, -1] >> spare).any():
                self.fail(values(f"layer{li}_table"), f"expected the unused bits {spare}..7 of each row's last byte "
                          f"(2**n = {2**n} entries) to be 0")
            layers.append(Layer(mapping, unpack_table(packed, n), in_features))
        affine = {}
        for stem in ("affine_a", "affine_b"):
            affine[stem] = array(stem, stem, (d,))
            if not np.isfinite(affine[stem]).all():
                self.fail(values(f"{stem}"), f"expected finite float32 values, got {affine[stem][~np.isfinite(affine[stem])][0]}")
        block = Block(name=name, d=d, bits=bits, thresholds=thresholds, layers=tuple(layers), group_size=k,
                      input_scale=float(scale), **affine)
        self.equal(f"{at}.comparators", entry["comparators"], int(block.used_thresholds().sum()),
                   "the number of thermometer bits layer 0 reads")
        return block

    # --- files and arrays --------------------------------------------------------------------

    def inside(self, where, file):
        real, root = file.resolve(), self.root.resolve()
        if not real.is_relative_to(root):
            self.fail(where, f"{file.relative_to(self.root).as_posix()!r} leads out of the bundle (to {str(real)!r})")
        return real

    def array(self, bi, info, stem, kind, shape):
        at = f"blocks[{bi}].files.{stem}"
        self.obj(at, info, FILE_KEYS)
        expected_path = f"block{bi}/{stem}.npy"
        path = info["path"]
        if not isinstance(path, str) or not path:
            self.fail(f"{at}.path", f"expected the string {expected_path!r}, got {_shown(path)}")
        if path != expected_path:
            pure = PurePosixPath(path)
            why = ("an absolute path" if pure.is_absolute() or "\\" in path or ":" in path else
                   "a path that leads out of the bundle" if ".." in pure.parts else "not the format's file name")
            self.fail(f"{at}.path", f"expected {expected_path!r}, got {path!r} ({why})")
        digest = self.sha256(f"{at}.sha256", info["sha256"])
        dtype, descr = DTYPES[kind]
        if info["dtype"] != dtype:
            self.fail(f"{at}.dtype", f"expected {dtype!r}, got {_shown(info['dtype'])}")
        claimed = info["shape"]
        if not (isinstance(claimed, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in claimed)):
            self.fail(f"{at}.shape", f"expected a list of integers {list(shape)}, got {_shown(claimed)}")
        if claimed != list(shape):
            self.fail(f"{at}.shape", f"expected {list(shape)} ({_shape_rule(kind)}), got {claimed}")

        file = self.root / path
        real = self.inside(f"{at}.path", file)
        if not real.is_file():
            self.fail(f"{at}.path", f"missing file {path!r}")
        data = real.read_bytes()  # read once: the hash and the array come from the same bytes
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            self.fail(f"{at}.sha256", f"{path!r} is corrupt (sha256 {actual[:12]} != manifest {digest[:12]})")
        buf = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(buf)
            if version != (1, 0):
                self.fail(at, f"expected a version 1.0 .npy header, got version {version[0]}.{version[1]}")
            header_shape, fortran, header_dtype = np.lib.format.read_array_header_1_0(buf)
        except UserError:
            raise
        except Exception as e:  # numpy's header parser raises ValueError, TokenError, SyntaxError, ...: all bad input
            self.fail(at, f"{path!r} is not a valid .npy file ({_one_line(e)})")
        if header_dtype.str != descr or header_dtype.hasobject:
            self.fail(at, f"expected dtype {descr!r} ({dtype}, little-endian) in the .npy header, "
                      f"got {header_dtype.str!r}")
        if fortran:
            self.fail(at, "expected C order in the .npy header, got fortran_order True")
        if tuple(header_shape) != tuple(shape):
            self.fail(at, f"expected shape {tuple(shape)} in the .npy header, got {tuple(header_shape)}")
        size = math.prod(shape) * header_dtype.itemsize
        if len(data) != buf.tell() + size:
            self.fail(at, f"expected {buf.tell() + size} bytes for the header and {math.prod(shape)} values, "
                      f"got {len(data)}")
        return np.frombuffer(data, header_dtype, offset=buf.tell()).reshape(shape).copy()


def _finite(number):
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer beyond the float range
        return False


def _range(lo, hi):
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    return f" >= {lo}" if lo is not None else ""


def _shape_rule(kind):
    return {"thresholds": "(d, thresholds_per_feature)", "mapping": "(out_features, n)",
            "table": "(out_features, ceil(2**n / 8)) bytes", "affine_a": "(d,)", "affine_b": "(d,)"}[kind]


def _one_line(error):
    return " ".join(str(error).split())


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def check_bundle(path):
    """(manifest, blocks) of the bundle in folder `path`, every field and array checked against
    docs/bundle-format.md ("What a reader checks"). UserError, one line naming the field, on any problem."""
    return _Checker(path).manifest()
