"""Don't-cares learned from data: a LUT node's addresses that no training image produces are
freed, and the node's table is refilled for its cheapest form. numpy only.

`dont_care.minimise_node` fills only the addresses that *no token can* produce, so the
function stays exact on every input. This is the option beyond it (ReducedLUT's idea,
Cassidy et al., FPGA 2025: addresses never seen on the training set are don't-cares): a node
must equal its table only on the addresses that the training images actually produce. That
changes the node on inputs the training set never showed, so the result is a *new* bundle
whose tables are the refilled ones; its golden model follows them, and what it costs is
measured on the test set. Off unless asked for (`quweit-hw dont-care`).

Why deeper layers may use the seen sets of the original tables: the refilled layer equals
the original on every address it saw, so on the training images every later layer reads
exactly what it read before.
"""

import dataclasses
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..contract import golden, golden_model
from ..contract.bundle import Layer
from ..contract.fashion_mnist import fashion_mnist_pixels
from ..contract.folders import check_output_folder
from ..contract.model_bundle import load_model_bundle, write_model_bundle
from .dont_care import minimise_block, minimise_node


def lut_blocks(program):
    """(block index, LUT block) of the program's LUT-MLP blocks, in model order."""
    return [(i, b["mlp"]["block"]) for i, b in enumerate(program["blocks"]) if b["mlp"]["kind"] == "lut"]


def address_counts(program, pixels, *, chunk=128, progress=None):
    """Per LUT block (as `lut_blocks`), per layer, an int64 array (out, 2**n): how many of
    the tokens of images `pixels` (uint8 (N, C, H, W)) reach each address of each node in
    the golden model. `progress`: called with the number of images done after each chunk."""
    blocks = lut_blocks(program)
    counts = [[np.zeros((layer.out_features, 2 ** layer.n), np.int64) for layer in block.layers]
              for _, block in blocks]
    for start in range(0, len(pixels), chunk):
        inputs = golden_model.lut_inputs(program, pixels[start:start + chunk])
        for (i, block), per_layer in zip(blocks, counts):
            xt = np.ascontiguousarray(golden.thermometer(block, inputs[i]).T)
            for layer, count in zip(block.layers, per_layer):
                index = golden.table_indices(layer, xt)
                count += np.bincount(index.ravel(), minlength=count.size).reshape(count.shape)
                xt = np.take(layer.table.ravel(), index)
        if progress is not None:
            progress(min(start + chunk, len(pixels)))
    return counts


def seen_addresses(program, pixels, *, min_count=1, **kwargs):
    """`address_counts` >= min_count: per LUT block, per layer, bool (out, 2**n)."""
    return [[c >= min_count for c in per_layer] for per_layer in address_counts(program, pixels, **kwargs)]


def full_table(node, row):
    """The 2**n-entry table of a minimised `node` of a layer node reading inputs `row`."""
    n = len(row)
    addresses = np.arange(2 ** n, dtype=np.int64)
    local = np.zeros((max(row) + 1, len(addresses)), np.uint8)
    local[list(row)] = ((addresses[None, :] >> np.arange(n)[:, None]) & 1).astype(np.uint8)
    return node.evaluate(local)


def refill_layer(layer, seen):
    """`layer` with each node's table refilled: equal to it on the addresses `seen` marks,
    the rest chosen by `minimise_node` for the cheapest form. Returns (layer, changed
    entries)."""
    tables = np.empty_like(layer.table)
    for j, (row, table) in enumerate(zip(layer.mapping, layer.table)):
        row = [int(x) for x in row]
        node = minimise_node(row, table, np.nonzero(seen[j])[0])
        tables[j] = full_table(node, row)
    assert np.array_equal(tables[seen], layer.table[seen]), "a refilled table changed a seen address"
    return Layer(layer.mapping, tables, layer.in_features), int((tables != layer.table).sum())


def refill_block(block, seen):
    """(block with every layer refilled from its `seen` marks, per-layer figures)."""
    layers, figures = [], []
    for index, (layer, mark) in enumerate(zip(block.layers, seen)):
        new, changed = refill_layer(layer, mark)
        layers.append(new)
        per_node = mark.sum(axis=1)
        figures.append({"layer": index, "nodes": layer.out_features, "addresses": 2 ** layer.n,
                        "seen_mean": round(float(per_node.mean()), 3), "seen_median": float(np.median(per_node)),
                        "entries_changed": changed})
    return dataclasses.replace(block, layers=tuple(layers)), figures


def with_blocks(program, new_blocks):
    """A copy of `program` with the LUT block of each model block index in `new_blocks` replaced."""
    program = dict(program, blocks=[dict(b) for b in program["blocks"]])
    for i, block in new_blocks.items():
        program["blocks"][i]["mlp"] = dict(program["blocks"][i]["mlp"], block=block)
    return program


def _lut4(block):
    """The LUT4 estimate of a block's fabric layers after the exact minimisation (dont_care)."""
    return sum(node.lut4 for nodes in minimise_block(block) for node in nodes)


def _accuracy(program, pixels, labels):
    return float((golden_model.predictions(program, pixels) == labels).mean())


def learn_dont_cares(bundle_path, out, *, images=None, min_count=1, force=False, progress=True):
    """Write to `out` the version-2 bundle at `bundle_path` with every LUT node refilled from
    the addresses the first `images` Fashion-MNIST training images (default: all 60,000)
    produce at least `min_count` times (1: every address seen is kept, so the model is
    unchanged on those images; more frees rare addresses too); returns the figures (also in the new manifest, "data_dont_cares"): per block
    and layer the addresses seen, the entries changed and the LUT4 estimate before and
    after, and the test accuracy of both bundles (golden model, 10,000 images)."""
    bundle_path, out = Path(bundle_path), Path(out)
    check_output_folder(out, force)
    program, manifest, _ = load_model_bundle(bundle_path)
    pixels, _ = fashion_mnist_pixels("train", limit=images)
    with tqdm(total=len(pixels), desc="addresses seen", unit="image", disable=not progress, leave=False) as bar:
        seen = seen_addresses(program, pixels, min_count=min_count, progress=lambda done: bar.update(done - bar.n))
    new_blocks, blocks = {}, []
    for (index, block), marks in zip(lut_blocks(program), seen):
        new_blocks[index], layers = refill_block(block, marks)
        blocks.append({"block": index, "layers": layers, "lut4_before": _lut4(block),
                       "lut4_after": _lut4(new_blocks[index])})
    new_program = with_blocks(program, new_blocks)
    test_pixels, test_labels = fashion_mnist_pixels("test")
    figures = {"source_bundle": str(bundle_path), "training_images": len(pixels), "min_count": min_count,
               "blocks": blocks,
               "test_accuracy_before": _accuracy(program, test_pixels, test_labels),
               "test_accuracy_after": _accuracy(new_program, test_pixels, test_labels)}
    kept = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "rules", "program", "blocks")}
    write_model_bundle(out, new_program, {**kept, "data_dont_cares": figures}, force=force)
    return figures
