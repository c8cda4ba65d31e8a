"""Bundle format version 2: the whole integer model (docs/bundle-format.md, "Version 2").

`write_model_bundle(path, program, manifest)` and `load_model_bundle(path)` -> (program,
manifest, blocks). The program (contract.golden_model) is stored as a JSON tree in
manifest["program"], in model order, whose arrays are `.npy` files under `model/` (each
with its sha256, dtype and shape) and whose LUT blocks are `{"lut_block": i}`, block i
stored exactly as in version 1 (block{i}/...). manifest["rules"] records the constants that
define the ops' semantics; a reader refuses a bundle whose rules differ from its own.
Version 1 bundles stay with `bundle_files`. Imports no torch.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import integer as I
from .bundle import FORMAT, FORMAT_VERSION, Block, Layer, block_arrays, unpack_table
from .folders import atomic_folder

MODEL_FORMAT_VERSION = 2
FORMAT_VERSIONS = (FORMAT_VERSION, MODEL_FORMAT_VERSION)  # the versions this quweit-hw writes and reads
# dtype per leaf name: what each integer is, at its narrowest exact width
DTYPES = {"w": "int8", "g": "int8", "a": "int8", "gelu": "int8", "cls": "int16", "b": "int32", "m": "int32", "s": "int8"}


def rules() -> dict:
    """The semantics' constants (contract.integer), recorded in and checked against every v2 bundle."""
    return {"rounding": "half up: (x + 2**(s-1)) >> s, arithmetic shift", "saturation": "clamp to signed range",
            "residual_bits": 16, "logit_bits": 16, "exp_frac_bits": I.EXP_FRAC_BITS, "exp_one_bits": I.EXP_ONE_BITS,
            "exp2_table": I.EXP2_TABLE.tolist(), "prob_max": I.PROB_MAX, "prob_recip_bits": I.PROB_RECIP_BITS,
            "delta_max": I.DELTA_MAX, "ln_frac_bits": I.LN_FRAC_BITS, "ln_recip_bits": I.LN_RECIP_BITS,
            "isqrt_iterations": I.ISQRT_ITERATIONS, "pixel_zero_point": 128}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(tmp, rel, array):
    np.save(tmp / rel, array, allow_pickle=False)
    return {"file": rel, "sha256": _sha256(tmp / rel), "dtype": str(array.dtype), "shape": list(array.shape)}


def _tree(node, name, tmp, blocks):
    """The program as JSON: arrays to files (named by their path in the program), Blocks to indices."""
    if isinstance(node, Block):
        blocks.append(node)
        return {"lut_block": len(blocks) - 1}
    if isinstance(node, dict):
        return {k: _tree(v, f"{name}.{k}" if name else k, tmp, blocks) for k, v in node.items()}
    if isinstance(node, list):
        return [_tree(v, f"{name}.{i}", tmp, blocks) for i, v in enumerate(node)]
    if isinstance(node, np.ndarray):
        dtype = DTYPES[name.rsplit(".", 1)[-1]]
        if not np.array_equal(node.astype(dtype).astype(np.int64), node):
            raise ValueError(f"{name} does not fit {dtype}")
        return {"array": _save(tmp, f"model/{name}.npy", node.astype(dtype))}
    return node  # int, str, float (informative), None


def _block_entry(block, bi, tmp):
    files = {stem: {**_save(tmp, f"block{bi}/{stem}.npy", a)} for stem, a in block_arrays(block).items()}
    for f in files.values():
        f["path"] = f.pop("file")
    return {"name": block.name, "d": block.d, "bits": block.bits, "thresholds_per_feature": block.T,
            "group_size": block.group_size, "count_width": block.count_width, "input_scale": float(block.input_scale),
            "layers": [{"in_features": l.in_features, "out_features": l.out_features, "n": l.n} for l in block.layers],
            "lut_nodes": block.lut_nodes, "comparators": int(block.used_thresholds().sum()), "files": files}


def write_model_bundle(path, program, manifest=None, *, force=False):
    """Write a whole-model (version 2) bundle to folder `path`, atomically; returns the path."""
    with atomic_folder(path, force=force, keep=lambda n: n.endswith(".pt") or n.startswith("README")) as tmp:
        (tmp / "model").mkdir()
        blocks = []
        tree = _tree(program, "", tmp, blocks)
        entries = []
        for bi, block in enumerate(blocks):
            (tmp / f"block{bi}").mkdir()
            entries.append(_block_entry(block, bi, tmp))
        doc = {"format": FORMAT, "format_version": MODEL_FORMAT_VERSION, **(manifest or {}), "rules": rules(),
               "program": tree, "blocks": entries}
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    return Path(path)


def _load(root, info):
    file = root / info["file"]
    if not file.is_file():
        raise UserError(f"bundle {root}: missing file {info['file']!r}")
    if _sha256(file) != info["sha256"]:
        raise UserError(f"bundle {root}: {info['file']!r} is corrupt (sha256 differs from the manifest)")
    array = np.load(file, allow_pickle=False)
    if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
        raise UserError(f"bundle {root}: {info['file']!r} has {array.dtype}{list(array.shape)}, manifest says "
                        f"{info['dtype']}{info['shape']}")
    return array


def _untree(node, root, blocks, name=""):
    if isinstance(node, dict) and set(node) == {"lut_block"}:
        return blocks[node["lut_block"]]
    if isinstance(node, dict) and set(node) == {"array"}:
        a = _load(root, node["array"]).astype(np.int64)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "m" and a.size and (a.min() < 0 or a.max() >= 1 << I.MULT_BITS):
            raise UserError(f"bundle {root}: multiplier {name} outside [0, 2**31)")
        if leaf == "s" and a.size and (a.min() < 0 or a.max() > I.MAX_SHIFT):
            raise UserError(f"bundle {root}: shift {name} outside [0, {I.MAX_SHIFT}]")
        return a
    if isinstance(node, dict):
        return {k: _untree(v, root, blocks, f"{name}.{k}" if name else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_untree(v, root, blocks, f"{name}.{i}") for i, v in enumerate(node)]
    return node


def _lut_block(root, entry):
    def arr(stem):
        info = dict(entry["files"][stem])
        info["file"] = info.pop("path")
        return _load(root, info)

    layers, width = [], entry["d"] * entry["thresholds_per_feature"]
    for i, spec in enumerate(entry["layers"]):
        table = unpack_table(arr(f"layer{i}_table"), spec["n"])
        layers.append(Layer(arr(f"layer{i}_mapping"), table, width))
        width = layers[-1].out_features
    return Block(name=entry["name"], d=entry["d"], bits=entry["bits"], thresholds=arr("thresholds"),
                 layers=tuple(layers), group_size=entry["group_size"], input_scale=entry["input_scale"],
                 affine_a=arr("affine_a"), affine_b=arr("affine_b"))


def load_model_bundle(path):
    """(program, manifest, LUT blocks) of a version 2 bundle; UserError on any other version or problem."""
    root = Path(path)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{str(root)!r} is not a bundle: no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"bundle {root}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{str(root)!r} is not a quweit bundle")
    version = manifest.get("format_version")
    if version == 1:
        raise UserError(f"bundle {root} is version 1 (LUT-MLP blocks only): the whole integer model needs version 2")
    if version != MODEL_FORMAT_VERSION:
        raise UserError(f"bundle {root} has format version {version!r}; this quweit-hw reads versions 1 and 2")
    if manifest.get("rules") != rules():
        raise UserError(f"bundle {root} was written with other integer semantics (its \"rules\" differ)")
    try:
        blocks = [_lut_block(root, e) for e in manifest["blocks"]]
        program = _untree(manifest["program"], root, blocks)
    except (KeyError, TypeError, IndexError) as e:
        raise UserError(f"bundle {root}: manifest is missing or has a malformed field {e}") from None
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"bundle {root}: {e}") from None
    return program, manifest, blocks


def model_id(manifest):
    """A version 2 bundle's identity: sha256 (hex) of what the hardware computes: the rules,
    the program tree (every array by its sha256, dtype and shape) and the LUT blocks' files
    and sizes. Not hashed: names, paths of the source checkpoint, metrics, the exporter. The
    whole-model board top carries its first 32 bits (`model_board_id`)."""
    blocks = [{k: v for k, v in entry.items() if k != "name"} for entry in manifest.get("blocks", [])]
    doc = {"format_version": manifest.get("format_version"), "rules": manifest.get("rules"),
           "program": manifest.get("program"), "blocks": blocks}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def model_board_id(manifest):
    """The 32-bit id a whole-model board top carries (the first 4 bytes of `model_id`, little-endian)."""
    return int.from_bytes(bytes.fromhex(model_id(manifest))[:4], "little")
