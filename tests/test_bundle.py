"""Bundle writing and reading: round trip, atomicity, and every way a bundle can be bad."""

import json

import numpy as np
import pytest

from quweit_hw.contract import bundle, bundle_files, golden, synthetic
from quweit_hw.errors import UserError


@pytest.fixture
def block():
    return synthetic.random_block(8, thresholds=6, n=5, hidden=(48,), group_size=4, window=16, seed=7)


def test_round_trip_is_exact(tmp_path, block):
    path = bundle_files.write_bundle(tmp_path / "b", [block, block], {"model": {"d": 8}})
    loaded = bundle_files.load_bundle(path)
    assert loaded.manifest["format_version"] == bundle.FORMAT_VERSION and loaded.manifest["model"] == {"d": 8}
    assert len(loaded.blocks) == 2
    got = loaded.blocks[1]
    assert np.array_equal(got.thresholds, block.thresholds)
    for a, b in zip(got.layers, block.layers):
        assert np.array_equal(a.mapping, b.mapping) and np.array_equal(a.table, b.table)
    assert np.array_equal(got.affine_a, block.affine_a) and got.group_size == 4
    q = np.random.default_rng(0).integers(-128, 128, size=(64, 8))
    assert np.array_equal(golden.counts(got, q), golden.counts(block, q))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_tables_are_packed_little_endian(tmp_path):
    layer = bundle.Layer(np.array([[0, 1, 2, 3]], np.int32), np.zeros((1, 16), np.uint8), 4)
    layer.table[0, 9] = 1
    th = np.zeros((1, 4), np.int32)
    block = bundle.Block("b", 1, 8, th, (layer,), 1)
    path = bundle_files.write_bundle(tmp_path / "b", [block])
    packed = np.load(path / "block0" / "layer0_table.npy")
    assert packed.tolist() == [[0, 2]]  # entry 9 = byte 1, bit 1


def test_existing_output_needs_force(tmp_path, block):
    path = bundle_files.write_bundle(tmp_path / "b", [block])
    with pytest.raises(UserError, match="exists"):
        bundle_files.write_bundle(path, [block])
    other = synthetic.random_block(8, thresholds=6, n=5, hidden=(48,), group_size=4, seed=8)
    bundle_files.write_bundle(path, [other], force=True)
    assert np.array_equal(bundle_files.load_bundle(path).blocks[0].thresholds, other.thresholds)


def test_failed_write_leaves_nothing(tmp_path, block, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        bundle_files.write_bundle(tmp_path / "b", [block])
    assert list(tmp_path.iterdir()) == []


def test_corrupt_truncated_and_foreign_bundles(tmp_path, block):
    path = bundle_files.write_bundle(tmp_path / "b", [block])
    table = path / "block0" / "layer1_table.npy"
    data = bytearray(table.read_bytes())
    data[-1] ^= 1
    table.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"layer1_table.npy' is corrupt"):
        bundle_files.load_bundle(path)
    table.write_bytes(bytes(data[:-10]))
    with pytest.raises(UserError, match="corrupt"):
        bundle_files.load_bundle(path)
    table.unlink()
    with pytest.raises(UserError, match="missing file"):
        bundle_files.load_bundle(path)

    path = bundle_files.write_bundle(tmp_path / "v", [block])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="format version 99; this quweit-hw reads versions 1 and 2"):
        bundle_files.load_bundle(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        bundle_files.load_bundle(path)
    with pytest.raises(UserError, match="no manifest.json"):
        bundle_files.load_bundle(tmp_path)


def test_block_validation_names_the_value():
    layer = bundle.Layer(np.zeros((4, 2), np.int32), np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(ValueError, match=r"thresholds must be in \[-129, 127\].*\[-130, 0\]"):
        bundle.Block("b", 2, 8, np.array([[-130, 0, 0, 0], [0, 0, 0, 0]]), (layer,), 2)
    with pytest.raises(ValueError, match="nondecreasing"):
        bundle.Block("b", 2, 8, np.array([[3, 2, 4, 5], [0, 0, 0, 0]]), (layer,), 2)
    with pytest.raises(ValueError, match=r"expected d\*group_size = 2\*3"):
        bundle.Block("b", 2, 8, np.zeros((2, 4), np.int32), (layer,), 3)
    with pytest.raises(ValueError, match=r"fan-in n must be in 1..16, got 17"):
        bundle.Layer(np.zeros((1, 17), np.int32), np.zeros((1, 2**17), np.uint8), 20)
    with pytest.raises(ValueError, match=r"mapping indices must be in \[0, 8\), got \[0, 8\]"):
        bundle.Layer(np.array([[0, 8]], np.int32), np.zeros((1, 4), np.uint8), 8)


def test_local_mapping_stays_in_its_window():
    rng = np.random.default_rng(0)
    m = synthetic.local_mapping(1024, 256, 6, 32, rng)
    centre = np.arange(256) * 4
    offset = (m - centre[:, None] + 16) % 1024
    assert offset.max() < 32 and m.min() >= 0 and m.max() < 1024
    assert all(len(set(row)) == 6 for row in m.tolist())  # distinct inputs per LUT


def test_used_thresholds_follow_layer0_mapping():
    block = synthetic.random_block(4, thresholds=8, n=2, hidden=(3,), group_size=1, seed=2)
    used = block.used_thresholds()
    assert used.sum() == len(set(block.layers[0].mapping.ravel().tolist()))
    assert used.reshape(-1)[block.layers[0].mapping[0, 0]]


def test_force_keeps_the_checkpoint_beside_the_bundle(tmp_path, block):
    path = bundle_files.write_bundle(tmp_path / "ref", [block, block])
    (path / "checkpoint.pt").write_bytes(b"weights")
    (path / "README.md").write_text("reference")
    bundle_files.write_bundle(path, [block], force=True)
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "block0", "checkpoint.pt", "manifest.json"]
    assert (path / "checkpoint.pt").read_bytes() == b"weights"
    assert len(bundle_files.load_bundle(path).blocks) == 1
