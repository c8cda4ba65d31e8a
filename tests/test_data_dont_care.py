"""Don't-cares learned from data (gateware.data_dont_care): refilled tables keep every seen
address, so the model is unchanged on the images they came from, and the LUT4 cost never rises."""

import json

import numpy as np
import pytest

from quweit_hw import cli
from quweit_hw.contract import golden, golden_model
from quweit_hw.contract.model_bundle import load_model_bundle, write_model_bundle
from quweit_hw.contract.synthetic import random_program
from quweit_hw.gateware import data_dont_care as ddc

CONFIG = {"image_size": 28, "patch": 14, "mlp": "lut", "depth": 2,
          "lut": {"thresholds": 4, "hidden": (48,), "group_size": 4, "window": 16}}


@pytest.fixture(scope="module")
def program():
    return random_program(CONFIG, seed=7)


def images(n, seed):
    pix = np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28)).astype(np.uint8)
    pix[0], pix[1] = 0, 255  # the edges of the pixel range
    return pix


def naive_counts(program, pix):
    """The address counts recounted token by token and node by node."""
    out, inputs = [], golden_model.lut_inputs(program, pix)
    for i, block in ddc.lut_blocks(program):
        tokens = inputs[i]
        marks = [np.zeros((layer.out_features, 2 ** layer.n), np.int64) for layer in block.layers]
        for token in tokens:
            bits = golden.stages(block, token[None])
            for layer, mark, x in zip(block.layers, marks, bits):
                for j, row in enumerate(layer.mapping):
                    mark[j, sum(int(x[0, r]) << l for l, r in enumerate(row))] += 1
        out.append(marks)
    return out


def test_address_counts_equal_a_token_by_token_count(program):
    pix = images(6, 1)
    counts = ddc.address_counts(program, pix, chunk=4)  # two chunks
    tokens = len(golden_model.lut_inputs(program, pix)[0])
    for got, want in zip(counts, naive_counts(program, pix)):
        for g, w in zip(got, want):
            assert np.array_equal(g, w) and (g.sum(axis=1) == tokens).all()
    for per_layer, marks in zip(counts, ddc.seen_addresses(program, pix, min_count=3)):
        for c, m in zip(per_layer, marks):
            assert np.array_equal(m, c >= 3) and 0 < m.sum() < (c > 0).sum()


def test_refilled_blocks_keep_every_seen_address_and_the_logits_on_those_images(program):
    train, test = images(40, 2), images(40, 3)
    seen = ddc.seen_addresses(program, train)
    new = {}
    for (i, block), marks in zip(ddc.lut_blocks(program), seen):
        new[i], figures = ddc.refill_block(block, marks)
        for layer, refilled, mark, fig in zip(block.layers, new[i].layers, marks, figures):
            assert np.array_equal(refilled.table[mark], layer.table[mark])
            assert fig["entries_changed"] == int((refilled.table != layer.table).sum()) > 0
            assert np.array_equal(refilled.mapping, layer.mapping)
        assert ddc._lut4(new[i]) < ddc._lut4(block)
    refilled = ddc.with_blocks(program, new)
    assert np.array_equal(golden_model.logits(refilled, train), golden_model.logits(program, train))
    assert program["blocks"][0]["mlp"]["block"] is not new[0], "the source program is left as it was"
    # on other images the function may differ: that is the option's cost, measured, not assumed
    assert golden_model.logits(refilled, test).shape == (40, 10)


def test_full_table_of_a_minimised_node_agrees_with_the_node():
    from quweit_hw.gateware.dont_care import minimise_node

    rng = np.random.default_rng(0)
    table = rng.integers(0, 2, 64).astype(np.uint8)
    addresses = np.sort(rng.choice(64, 9, replace=False))
    row = [5, 2, 9, 0, 7, 3]
    full = ddc.full_table(minimise_node(row, table, addresses), row)
    assert full.shape == (64,) and np.array_equal(full[addresses], table[addresses])


def test_dont_care_command_writes_a_new_bundle_and_refuses_bad_input(program, tmp_path, capsys, monkeypatch):
    src = write_model_bundle(tmp_path / "src", program, {"note": "kept"})
    monkeypatch.setattr(ddc, "fashion_mnist_pixels", lambda split, limit=None: (
        images(limit or 30, 4 if split == "train" else 5), np.arange(limit or 30) % 10))
    assert cli.main(["dont-care", str(src), "-o", str(tmp_path / "new"), "--images", "12"]) == 0
    out = capsys.readouterr().out
    assert "LUT4" in out and "test accuracy" in out
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    figures = manifest["data_dont_cares"]
    assert manifest["note"] == "kept" and figures["training_images"] == 12
    assert all(b["lut4_after"] < b["lut4_before"] for b in figures["blocks"])
    loaded, _, _ = load_model_bundle(tmp_path / "new")
    train = images(12, 4)
    assert np.array_equal(golden_model.logits(loaded, train), golden_model.logits(program, train))
    before = (tmp_path / "new" / "manifest.json").read_bytes()
    assert cli.main(["dont-care", str(src), "-o", str(tmp_path / "new")]) == 2  # exists: nothing replaced
    assert (tmp_path / "new" / "manifest.json").read_bytes() == before
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({"format": "quweit-bundle", "format_version": 1}))
    assert cli.main(["dont-care", str(tmp_path / "v1"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "version 1" in err and not (tmp_path / "x").exists()
