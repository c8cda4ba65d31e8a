"""The reader against docs/bundle-format.md ("What a reader checks"): every manifest field and
every array corrupted in turn, hashes re-computed, so that only the format checks can catch it.
Each case must give one UserError line that names the field and what was expected."""

import hashlib
import json
import os
import re

import numpy as np
import pytest

from quweit_hw.contract import bundle, bundle_files, golden
from quweit_hw.contract.bundle import Block, Layer
from quweit_hw.errors import UserError
from quweit_hw.resources import REFERENCE

D, T, K = 4, 3, 3  # layer0: 12 bits in, 10 LUTs of n=4 (2 table bytes a row); layer1: 12 LUTs of n=2 (1 byte)


def make_block(seed=0):
    rng = np.random.default_rng(seed)
    thresholds = np.sort(rng.integers(-129, 128, size=(D, T)), axis=1).astype(np.int32)
    layer0 = Layer(rng.integers(0, D * T, size=(10, 4)).astype(np.int32), rng.integers(0, 2, (10, 16), np.uint8), D * T)
    layer1 = Layer(rng.integers(0, 10, size=(D * K, 2)).astype(np.int32), rng.integers(0, 2, (D * K, 4), np.uint8), 10)
    return Block("blocks.0.mlp", D, 8, thresholds, (layer0, layer1), K, input_scale=0.25,
                 affine_a=rng.standard_normal(D).astype(np.float32), affine_b=rng.standard_normal(D).astype(np.float32))


@pytest.fixture
def good(tmp_path):
    manifest = {"model": {"arch": "vit"}, "source_checkpoint": {"path": "m.pt", "sha256": "0" * 64},
                "metrics": {"test_accuracy": 0.5}, "exporter": "test"}
    return bundle_files.write_bundle(tmp_path / "b", [make_block(0), make_block(1)], manifest)


def read(path):
    return json.loads((path / "manifest.json").read_text())


def sha(file):
    return hashlib.sha256(file.read_bytes()).hexdigest()


def rehash(path, m):
    """Every listed file's sha256 set to what it is now, so that only the format checks can catch a corruption."""
    for entry in m.get("blocks", []) if isinstance(m, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            continue
        for info in entry["files"].values():
            if isinstance(info, dict) and isinstance(info.get("path"), str):
                file = path / info["path"]
                if file.is_file() and file.resolve().is_relative_to(path.resolve()):
                    info["sha256"] = sha(file)


def put(path, m, stem, array, *, claim=True, block=0):
    """Replace array file `stem` of `block`; with claim=True the manifest's dtype and shape claim the new array's."""
    info = m["blocks"][block]["files"][stem]
    np.save(path / info["path"], array, allow_pickle=True)
    if claim:
        info["dtype"], info["shape"] = str(array.dtype), list(array.shape)


def put_bytes(path, m, stem, data, block=0):
    (path / m["blocks"][block]["files"][stem]["path"]).write_bytes(data)


def npy_bytes(array, version=(1, 0)):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def blk(m, i=0):
    return m["blocks"][i]


def arr(path, stem, block=0):
    return np.load(path / f"block{block}" / f"{stem}.npy")


def setf(path, m, stem, new, block=0):
    """Set a field of the file entry `stem`."""
    m["blocks"][block]["files"][stem].update(new)


def symlink_out(path, m):
    outside = path.parent / "outside.npy"
    outside.write_bytes((path / "block0" / "thresholds.npy").read_bytes())  # same bytes: the hash still holds
    (path / "block0" / "thresholds.npy").unlink()
    os.symlink(outside, path / "block0" / "thresholds.npy")


def folder_symlink_out(path, m):
    outside = path.parent / "elsewhere"
    (path / "block1").rename(outside)
    os.symlink(outside, path / "block1")


# (case id, corruption(path, manifest), the message expected: a regex on the one line)
CASES = [
    # --- top level ---
    ("format", lambda p, m: m.update(format="other"), r"is not a quweit bundle \(format 'other', expected 'quweit-bundle'\)"),
    ("format_version bool", lambda p, m: m.update(format_version=True),
     r"format_version: expected the integer 1, got true \(boolean\)"),
    ("format_version float", lambda p, m: m.update(format_version=1.0),
     r"format_version: expected the integer 1, got 1\.0 \(number\)"),
    ("format_version str", lambda p, m: m.update(format_version="1"),
     r"format_version: expected the integer 1, got '1' \(string\)"),
    ("format_version other", lambda p, m: m.update(format_version=3),
     r"format version 3; this quweit-hw reads versions 1 and 2"),
    ("model not object", lambda p, m: m.update(model=[1]), r": model: expected an object, got \[1\] \(list\)"),
    ("metrics not object", lambda p, m: m.update(metrics="good"), r": metrics: expected an object or a list"),
    ("exporter not str", lambda p, m: m.update(exporter=3), r": exporter: expected a non-empty string, got 3"),
    ("source_checkpoint not object", lambda p, m: m.update(source_checkpoint="m.pt"),
     r": source_checkpoint: expected an object, got 'm\.pt' \(string\)"),
    ("source_checkpoint sha256", lambda p, m: m["source_checkpoint"].update(sha256="ABC"),
     r": source_checkpoint\.sha256: expected 64 lowercase hex digits, got 'ABC'"),
    ("source_checkpoint extra key", lambda p, m: m["source_checkpoint"].update(size=3),
     r": source_checkpoint: unknown key 'size'"),
    ("blocks missing", lambda p, m: m.pop("blocks"), r": blocks: missing \(expected a non-empty list"),
    ("blocks empty", lambda p, m: m.update(blocks=[]), r": blocks: expected a non-empty list of block entries, got \[\]"),
    ("blocks not list", lambda p, m: m.update(blocks={"0": 1}), r": blocks: expected a non-empty list"),
    ("block not object", lambda p, m: m["blocks"].append(3), r": blocks\[2\]: expected an object, got 3 \(integer\)"),
    # --- block fields ---
    ("block missing key", lambda p, m: blk(m).pop("bits"), r"blocks\[0\]: missing key 'bits'"),
    ("block unknown key", lambda p, m: blk(m).update(bias=1), r"blocks\[0\]: unknown key 'bias'"),
    ("name empty", lambda p, m: blk(m).update(name=""), r"blocks\[0\]\.name: expected a non-empty string, got ''"),
    ("name not str", lambda p, m: blk(m).update(name=7), r"blocks\[0\]\.name: expected a non-empty string, got 7"),
    ("d zero", lambda p, m: blk(m).update(d=0), r"blocks\[0\]\.d: expected an integer >= 1, got 0"),
    ("d str", lambda p, m: blk(m).update(d="4"), r"blocks\[0\]\.d: expected an integer >= 1, got '4' \(string\)"),
    ("d float", lambda p, m: blk(m, 1).update(d=4.0), r"blocks\[1\]\.d: expected an integer >= 1, got 4\.0 \(number\)"),
    ("bits low", lambda p, m: blk(m).update(bits=1), r"blocks\[0\]\.bits: expected an integer in 2\.\.16, got 1"),
    ("bits high", lambda p, m: blk(m).update(bits=17), r"blocks\[0\]\.bits: expected an integer in 2\.\.16, got 17"),
    ("bits bool", lambda p, m: blk(m).update(bits=True), r"blocks\[0\]\.bits: expected an integer in 2\.\.16, got true"),
    ("T zero", lambda p, m: blk(m).update(thresholds_per_feature=0),
     r"blocks\[0\]\.thresholds_per_feature: expected an integer >= 1, got 0"),
    ("T float", lambda p, m: blk(m).update(thresholds_per_feature=3.0),
     r"blocks\[0\]\.thresholds_per_feature: expected an integer >= 1, got 3\.0"),
    ("T other", lambda p, m: blk(m).update(thresholds_per_feature=4),
     r"blocks\[0\]\.layers\[0\]\.in_features: expected d \* thresholds_per_feature = 16, got 12"),
    ("group_size float", lambda p, m: blk(m).update(group_size=3.0),
     r"blocks\[0\]\.group_size: expected an integer >= 1, got 3\.0 \(number\)"),
    ("group_size zero", lambda p, m: blk(m).update(group_size=0), r"blocks\[0\]\.group_size: expected an integer >= 1, got 0"),
    ("group_size other", lambda p, m: blk(m).update(group_size=2, count_width=2),
     r"blocks\[0\]\.layers\[1\]\.out_features: expected d \* group_size = 8 for the last layer, got 12"),
    ("count_width", lambda p, m: blk(m).update(count_width=3),
     r"blocks\[0\]\.count_width: expected group_size\.bit_length\(\) = 2, got 3"),
    ("count_width bool", lambda p, m: blk(m).update(count_width=True),
     r"blocks\[0\]\.count_width: expected an integer, got true \(boolean\)"),
    ("input_scale zero", lambda p, m: blk(m).update(input_scale=0.0),
     r"blocks\[0\]\.input_scale: expected a finite number > 0, got 0\.0"),
    ("input_scale negative", lambda p, m: blk(m).update(input_scale=-0.5),
     r"blocks\[0\]\.input_scale: expected a finite number > 0, got -0\.5"),
    ("input_scale str", lambda p, m: blk(m).update(input_scale="0.25"),
     r"blocks\[0\]\.input_scale: expected a finite number > 0, got '0\.25' \(string\)"),
    ("input_scale bool", lambda p, m: blk(m).update(input_scale=True),
     r"blocks\[0\]\.input_scale: expected a finite number > 0, got true"),
    ("input_scale huge", lambda p, m: blk(m).update(input_scale=10**400),
     r"blocks\[0\]\.input_scale: expected a finite number > 0, got 1000.*\.\.\. \(integer\)"),
    ("input_scale nan", lambda p, m: blk(m).update(input_scale=float("nan")),
     r"manifest\.json is not valid JSON \(NaN is not a JSON number\)"),
    ("input_scale inf", lambda p, m: blk(m).update(input_scale=float("inf")),
     r"manifest\.json is not valid JSON \(Infinity is not a JSON number\)"),
    ("layers empty", lambda p, m: blk(m).update(layers=[]), r"blocks\[0\]\.layers: expected a non-empty list of layers"),
    ("layer missing n", lambda p, m: blk(m)["layers"][1].pop("n"), r"blocks\[0\]\.layers\[1\]: missing key 'n'"),
    ("layer unknown key", lambda p, m: blk(m)["layers"][0].update(window=4),
     r"blocks\[0\]\.layers\[0\]: unknown key 'window'"),
    ("layer0 in_features", lambda p, m: blk(m)["layers"][0].update(in_features=13),
     r"blocks\[0\]\.layers\[0\]\.in_features: expected d \* thresholds_per_feature = 12, got 13"),
    ("layer1 in_features", lambda p, m: blk(m)["layers"][1].update(in_features=11),
     r"blocks\[0\]\.layers\[1\]\.in_features: expected layers\[0\]\.out_features = 10, got 11"),
    ("layer0 out_features", lambda p, m: blk(m)["layers"][0].update(out_features=11),
     r"blocks\[0\]\.layers\[1\]\.in_features: expected layers\[0\]\.out_features = 11, got 10"),
    ("out_features zero", lambda p, m: blk(m)["layers"][1].update(out_features=0),
     r"blocks\[0\]\.layers\[1\]\.out_features: expected an integer >= 1, got 0"),
    ("last out_features", lambda p, m: blk(m)["layers"][1].update(out_features=13),
     r"blocks\[0\]\.layers\[1\]\.out_features: expected d \* group_size = 12 for the last layer, got 13"),
    ("n zero", lambda p, m: blk(m)["layers"][0].update(n=0), r"blocks\[0\]\.layers\[0\]\.n: expected an integer in 1\.\.16, got 0"),
    ("n 17", lambda p, m: blk(m)["layers"][0].update(n=17), r"blocks\[0\]\.layers\[0\]\.n: expected an integer in 1\.\.16, got 17"),
    ("n float", lambda p, m: blk(m)["layers"][0].update(n=4.0),
     r"blocks\[0\]\.layers\[0\]\.n: expected an integer in 1\.\.16, got 4\.0 \(number\)"),
    ("n other", lambda p, m: blk(m)["layers"][0].update(n=5),
     r"blocks\[0\]\.files\.layer0_mapping\.shape: expected \[10, 5\] \(\(out_features, n\)\), got \[10, 4\]"),
    ("lut_nodes", lambda p, m: blk(m).update(lut_nodes=21),
     r"blocks\[0\]\.lut_nodes: expected the sum of out_features = 22, got 21"),
    ("lut_nodes float", lambda p, m: blk(m).update(lut_nodes=22.0), r"blocks\[0\]\.lut_nodes: expected an integer, got 22\.0"),
    ("comparators", lambda p, m: blk(m).update(comparators=blk(m)["comparators"] + 1),
     r"blocks\[0\]\.comparators: expected the number of thermometer bits layer 0 reads = \d+, got \d+"),
    ("files not object", lambda p, m: blk(m).update(files=[]), r"blocks\[0\]\.files: expected an object, got \[\]"),
    ("file missing", lambda p, m: blk(m)["files"].pop("affine_b"),
     r"blocks\[0\]\.files: block 'blocks\.0\.mlp' lists no file 'affine_b'"),
    ("file unknown", lambda p, m: blk(m)["files"].update(layer2_table=blk(m)["files"]["layer1_table"]),
     r"blocks\[0\]\.files: unknown file 'layer2_table'"),
    # --- file entries ---
    ("file entry missing key", lambda p, m: blk(m)["files"]["thresholds"].pop("dtype"),
     r"blocks\[0\]\.files\.thresholds: missing key 'dtype'"),
    ("file entry unknown key", lambda p, m: setf(p, m, "thresholds", {"size": 3}),
     r"blocks\[0\]\.files\.thresholds: unknown key 'size'"),
    ("path dotdot", lambda p, m: setf(p, m, "thresholds", {"path": "../b/block0/thresholds.npy"}),
     r"blocks\[0\]\.files\.thresholds\.path: expected 'block0/thresholds\.npy', got '\.\./b/block0/thresholds\.npy' "
     r"\(a path that leads out of the bundle\)"),
    ("path absolute", lambda p, m: setf(p, m, "thresholds", {"path": str(p / "block0" / "thresholds.npy")}),
     r"blocks\[0\]\.files\.thresholds\.path: expected 'block0/thresholds\.npy', got '/.*' \(an absolute path\)"),
    ("path other file", lambda p, m: setf(p, m, "affine_a", {"path": "block0/affine_b.npy"}),
     r"blocks\[0\]\.files\.affine_a\.path: expected 'block0/affine_a\.npy', got 'block0/affine_b\.npy' "
     r"\(not the format's file name\)"),
    ("path not str", lambda p, m: setf(p, m, "thresholds", {"path": None}),
     r"blocks\[0\]\.files\.thresholds\.path: expected the string 'block0/thresholds\.npy', got null"),
    ("symlink out", symlink_out,
     r"blocks\[0\]\.files\.thresholds\.path: 'block0/thresholds\.npy' leads out of the bundle \(to '.*outside\.npy'\)"),
    ("folder symlink out", folder_symlink_out,
     r"blocks\[1\]\.files\.thresholds\.path: 'block1/thresholds\.npy' leads out of the bundle"),
    ("sha256 form", lambda p, m: setf(p, m, "thresholds", {"sha256": sha(p / "block0/thresholds.npy").upper()}) or "keep",
     r"blocks\[0\]\.files\.thresholds\.sha256: expected 64 lowercase hex digits, got '[0-9A-F]{56}\.\.\. \(string\)"),
    ("sha256 short", lambda p, m: setf(p, m, "affine_b", {"sha256": sha(p / "block0/affine_b.npy")[:40]}) or "keep",
     r"blocks\[0\]\.files\.affine_b\.sha256: expected 64 lowercase hex digits, got '[0-9a-f]{40}' \(string\)"),
    ("sha256 wrong", lambda p, m: setf(p, m, "thresholds", {"sha256": "0" * 64}) or "keep",
     r"blocks\[0\]\.files\.thresholds\.sha256: 'block0/thresholds\.npy' is corrupt \(sha256 [0-9a-f]{12} != manifest 000000000000\)"),
    ("dtype claimed", lambda p, m: setf(p, m, "thresholds", {"dtype": "int64"}),
     r"blocks\[0\]\.files\.thresholds\.dtype: expected 'int32', got 'int64' \(string\)"),
    ("shape claimed", lambda p, m: setf(p, m, "affine_a", {"shape": [5]}),
     r"blocks\[0\]\.files\.affine_a\.shape: expected \[4\] \(\(d,\)\), got \[5\]"),
    ("shape not ints", lambda p, m: setf(p, m, "thresholds", {"shape": [4.0, 3]}),
     r"blocks\[0\]\.files\.thresholds\.shape: expected a list of integers \[4, 3\], got \[4\.0, 3\] \(list\)"),
    ("shape bools", lambda p, m: setf(p, m, "layer1_mapping", {"shape": [12, True]}),
     r"blocks\[0\]\.files\.layer1_mapping\.shape: expected a list of integers \[12, 2\]"),
    ("missing file", lambda p, m: (p / "block1" / "affine_b.npy").unlink(), r"blocks\[1\]\.files\.affine_b\.path: missing file 'block1/affine_b\.npy'"),
    # --- arrays: the shapes the format fixes, the .npy header, the values ---
    ("table a byte short, manifest agrees", lambda p, m: put(p, m, "layer0_table", arr(p, "layer0_table")[:, :1]),
     r"blocks\[0\]\.files\.layer0_table\.shape: expected \[10, 2\] \(\(out_features, ceil\(2\*\*n / 8\)\) bytes\), got \[10, 1\]"),
    ("table a byte short in the file", lambda p, m: put(p, m, "layer0_table", arr(p, "layer0_table")[:, :1], claim=False),
     r"blocks\[0\]\.files\.layer0_table: expected shape \(10, 2\) in the \.npy header, got \(10, 1\)"),
    ("table a byte long", lambda p, m: put(p, m, "layer1_table", np.zeros((12, 2), np.uint8)),
     r"blocks\[0\]\.files\.layer1_table\.shape: expected \[12, 1\]"),
    ("table padding bits", lambda p, m: put(p, m, "layer1_table", arr(p, "layer1_table") | 0x10),
     r"blocks\[0\]\.layer1_table \('block0/layer1_table\.npy'\): expected the unused bits 4\.\.7 of each row's last byte \(2\*\*n = 4 entries\) to be 0"),
    ("table int8", lambda p, m: put(p, m, "layer0_table", arr(p, "layer0_table").astype(np.int8), claim=False),
     r"blocks\[0\]\.files\.layer0_table: expected dtype '\|u1' \(uint8, little-endian\) in the \.npy header, got '\|i1'"),
    ("float thresholds, manifest agrees", lambda p, m: put(p, m, "thresholds", arr(p, "thresholds").astype(np.float32) - 0.5),
     r"blocks\[0\]\.files\.thresholds\.dtype: expected 'int32', got 'float32' \(string\)"),
    ("float thresholds in the file", lambda p, m: put(p, m, "thresholds", np.full((4, 3), -46.5, np.float32), claim=False),
     r"blocks\[0\]\.files\.thresholds: expected dtype '<i4' \(int32, little-endian\) in the \.npy header, got '<f4'"),
    ("big-endian thresholds", lambda p, m: put(p, m, "thresholds", arr(p, "thresholds").astype(">i4"), claim=False),
     r"blocks\[0\]\.files\.thresholds: expected dtype '<i4' \(int32, little-endian\) in the \.npy header, got '>i4'"),
    ("int64 thresholds", lambda p, m: put(p, m, "thresholds", arr(p, "thresholds").astype(np.int64), claim=False),
     r"expected dtype '<i4' \(int32, little-endian\) in the \.npy header, got '<i8'"),
    ("object thresholds", lambda p, m: put(p, m, "thresholds", arr(p, "thresholds").astype(object), claim=False),
     r"blocks\[0\]\.files\.thresholds: expected dtype '<i4' .* got '\|O'"),
    ("fortran thresholds", lambda p, m: put(p, m, "thresholds", np.asfortranarray(arr(p, "thresholds")), claim=False),
     r"blocks\[0\]\.files\.thresholds: expected C order in the \.npy header, got fortran_order True"),
    ("npy version 2", lambda p, m: put_bytes(p, m, "thresholds", npy_bytes(arr(p, "thresholds"), (2, 0))),
     r"blocks\[0\]\.files\.thresholds: expected a version 1\.0 \.npy header, got version 2\.0"),
    ("not npy", lambda p, m: put_bytes(p, m, "affine_a", b"hello, world"),
     r"blocks\[0\]\.files\.affine_a: 'block0/affine_a\.npy' is not a valid \.npy file"),
    ("truncated data", lambda p, m: put_bytes(p, m, "layer0_mapping", npy_bytes(arr(p, "layer0_mapping"))[:-4]),
     r"blocks\[0\]\.files\.layer0_mapping: expected \d+ bytes for the header and 40 values, got \d+"),
    ("trailing bytes", lambda p, m: put_bytes(p, m, "affine_b", npy_bytes(arr(p, "affine_b")) + b"\0\0\0\0"),
     r"blocks\[0\]\.files\.affine_b: expected \d+ bytes for the header and 4 values, got \d+"),
    ("threshold too low", lambda p, m: put(p, m, "thresholds", np.full((4, 3), -130, np.int32)),
     r"blocks\[0\]\.thresholds \('block0/thresholds\.npy'\): expected values in \[-129, 127\] for 8-bit input, got \[-130, -130\]"),
    ("threshold too high", lambda p, m: put(p, m, "thresholds", np.full((4, 3), 128, np.int32)),
     r"blocks\[0\]\.thresholds \('block0/thresholds\.npy'\): expected values in \[-129, 127\] for 8-bit input, got \[128, 128\]"),
    ("thresholds decreasing", lambda p, m: put(p, m, "thresholds", np.array([[0, 1, 2]] * 3 + [[5, 4, 6]], np.int32)),
     r"blocks\[0\]\.thresholds \('block0/thresholds\.npy'\): expected nondecreasing rows, got 5 before 4 at \[3, 0\]"),
    ("float mapping", lambda p, m: put(p, m, "layer0_mapping", arr(p, "layer0_mapping").astype(np.float64)),
     r"blocks\[0\]\.files\.layer0_mapping\.dtype: expected 'int32', got 'float64'"),
    ("float mapping in the file", lambda p, m: put(p, m, "layer1_mapping", arr(p, "layer1_mapping").astype(np.float32), claim=False),
     r"blocks\[0\]\.files\.layer1_mapping: expected dtype '<i4' \(int32, little-endian\) in the \.npy header, got '<f4'"),
    ("mapping past the end", lambda p, m: put(p, m, "layer1_mapping", np.full((12, 2), 10, np.int32)),
     r"blocks\[0\]\.layer1_mapping \('block0/layer1_mapping\.npy'\): expected indices in \[0, 10\), got \[10, 10\]"),
    ("mapping negative", lambda p, m: put(p, m, "layer0_mapping", np.full((10, 4), -1, np.int32), block=1),
     r"blocks\[1\]\.layer0_mapping \('block1/layer0_mapping\.npy'\): expected indices in \[0, 12\), got \[-1, -1\]"),
    ("affine_a nan", lambda p, m: put(p, m, "affine_a", np.array([1, np.nan, 1, 1], np.float32)),
     r"blocks\[0\]\.affine_a \('block0/affine_a\.npy'\): expected finite float32 values, got nan"),
    ("affine_b inf", lambda p, m: put(p, m, "affine_b", np.array([1, 1, 1, -np.inf], np.float32), block=1),
     r"blocks\[1\]\.affine_b \('block1/affine_b\.npy'\): expected finite float32 values, got -inf"),
    ("affine_a float64", lambda p, m: put(p, m, "affine_a", arr(p, "affine_a").astype(np.float64), claim=False),
     r"blocks\[0\]\.files\.affine_a: expected dtype '<f4' \(float32, little-endian\) in the \.npy header, got '<f8'"),
]


@pytest.mark.parametrize("name,corrupt,expected", CASES, ids=[c[0] for c in CASES])
def test_each_corruption_is_one_line_naming_the_field(good, name, corrupt, expected):
    m = read(good)
    if corrupt(good, m) != "keep":
        rehash(good, m)
    (good / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(UserError) as e:
        bundle_files.load_bundle(good)
    message = str(e.value)
    assert "\n" not in message and re.search(expected, message), message
    assert message.startswith(f"bundle {good}") or message.startswith(repr(str(good)))


RAW_CASES = [
    ("not json", b"{not json", r"manifest\.json is not valid JSON \(Expecting property name"),
    ("duplicate key", b'{"format": "quweit-bundle", "format": "quweit-bundle", "format_version": 1}',
     r"manifest\.json is not valid JSON \(duplicate key 'format'\)"),
    ("not utf-8", b'{"format": "\xff"}', r"manifest\.json is not valid JSON \(.*codec can't decode"),
    ("not an object", b"[1, 2]", r"is not a quweit bundle \(format None"),
]


@pytest.mark.parametrize("name,text,expected", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_manifest_must_be_strict_json(good, name, text, expected):
    (good / "manifest.json").write_bytes(text)
    with pytest.raises(UserError, match=expected) as e:
        bundle_files.load_bundle(good)
    assert "\n" not in str(e.value)


def test_manifest_symlinked_out_and_no_folder(good, tmp_path):
    outside = tmp_path / "manifest.json"
    (good / "manifest.json").rename(outside)
    os.symlink(outside, good / "manifest.json")
    with pytest.raises(UserError, match=r"manifest\.json: 'manifest\.json' leads out of the bundle"):
        bundle_files.load_bundle(good)
    with pytest.raises(UserError, match="no manifest.json"):
        bundle_files.load_bundle(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no manifest.json"):
        bundle_files.load_bundle(outside)  # a file, not a folder


def test_a_good_bundle_loads_exactly(good):
    loaded = bundle_files.load_bundle(good)
    for got, want in zip(loaded.blocks, (make_block(0), make_block(1))):
        assert bundle.first_difference([got], [want]) is None
        assert got.input_scale == 0.25 and got.thresholds.flags.writeable
        q = np.random.default_rng(0).integers(-128, 128, size=(50, D))
        assert np.array_equal(golden.counts(got, q), golden.counts(want, q))
    # other top-level keys and files no entry lists are allowed; informational fields may be absent
    m = read(good)
    m["notes"] = "hand-made"
    for key in ("model", "source_checkpoint", "metrics", "exporter"):
        m.pop(key)
    (good / "manifest.json").write_text(json.dumps(m))
    (good / "block0" / "notes.txt").write_text("not part of the bundle")
    assert len(bundle_files.load_bundle(good).blocks) == 2


def test_symlinks_inside_the_bundle_are_followed(good):
    # block1's thresholds as a link to block0's file: inside the bundle, same bytes (hash rewritten)
    m = read(good)
    target = good / "block1" / "thresholds.npy"
    target.unlink()
    os.symlink("../block0/thresholds.npy", target)
    rehash(good, m)
    (good / "manifest.json").write_text(json.dumps(m))
    loaded = bundle_files.load_bundle(good)
    assert np.array_equal(loaded.blocks[1].thresholds, loaded.blocks[0].thresholds)


def test_the_reference_bundle_passes_every_check():
    ref = bundle_files.load_bundle(REFERENCE)
    assert [b.name for b in ref.blocks] == ["blocks.0.mlp", "blocks.1.mlp"]
    m = ref.manifest
    for entry, block in zip(m["blocks"], ref.blocks):
        assert entry["comparators"] == int(block.used_thresholds().sum()) and entry["lut_nodes"] == block.lut_nodes


def test_first_difference_names_the_array_and_entry():
    a, b = make_block(0), make_block(0)
    assert bundle.first_difference([a], [b]) is None
    b.layers[1].table[5, 2] ^= 1
    assert bundle.first_difference([a], [b], ("bundle", "checkpoint")) == (
        f"block 0 ('blocks.0.mlp') layer1_table differs at [5, 2] "
        f"(bundle {a.layers[1].table[5, 2]}, checkpoint {b.layers[1].table[5, 2]})")
    assert bundle.first_difference([a], [a, b]) == "1 block(s) (first) against 2 (second)"
    c = make_block(0)
    c.affine_b[3] = 7
    assert bundle.first_difference([a], [c]).startswith("block 0 ('blocks.0.mlp') affine_b differs at [3]")


# --- seeded random corruption: whatever is changed, the reader loads a valid bundle or gives one line -----

def _leaves(x, path=()):
    if path:
        yield path
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


def _load_or_one_line(path):
    try:
        bundle_files.load_bundle(path)
        return "loaded"
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return "refused"


def test_random_bytes_changed_in_any_file_give_one_line(good):
    base, rng = good, np.random.default_rng(1)
    pristine = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    files = sorted(pristine)
    outcomes = []
    for _ in range(250):
        for p, data in pristine.items():
            p.write_bytes(data)
        file = files[rng.integers(len(files))]
        data = bytearray(pristine[file])
        for _ in range(rng.integers(1, 3)):
            data[rng.integers(len(data))] = rng.integers(256)
        if rng.random() < 0.1:
            data = data[:rng.integers(len(data))]
        file.write_bytes(bytes(data))
        if file.name != "manifest.json":  # hashes fixed: only the format checks stand in the way
            m = read(base)
            rehash(base, m)
            (base / "manifest.json").write_text(json.dumps(m))
        outcomes.append(_load_or_one_line(base))
    assert outcomes.count("refused") > 180


def test_random_manifest_values_give_one_line(good):
    m0, rng = read(good), np.random.default_rng(2)
    values = [-1, 0, 1, 2, 3, 12, 10**30, 10**400, 1.5, 4.0, -0.0, 1e300, "x", "", None, True, False, [], {}, [1],
              [4, 3], {"a": 1}]
    paths = list(_leaves(m0))
    outcomes = []
    for _ in range(800):
        m = json.loads(json.dumps(m0))
        path = paths[rng.integers(len(paths))]
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.15:
            del parent[path[-1]]
        else:
            parent[path[-1]] = json.loads(json.dumps(values[rng.integers(len(values))]))
        (good / "manifest.json").write_text(json.dumps(m))
        outcomes.append(_load_or_one_line(good))
    assert outcomes.count("refused") > 650
