"""`write_model_rtl`: the whole-model engine of a version-2 bundle as the folder users get
(model_engine.v, model_engine.il, summary.json with the cycle figures)."""

import json
import time
from pathlib import Path

from ..contract.bundle_files import format_version
from ..contract.folders import atomic_folder, check_output_folder
from ..contract.model_bundle import load_model_bundle
from ..errors import UserError
from .model_engine import TOP, ModelEngine, instruction_cycles, softmax_clocks
from .model_program import KIND_NAMES, SOFTMAX
from .toolchain import rtlil_to_verilog
from .verilog import with_provenance

MODEL_RTL_FILES = (f"{TOP}.v", f"{TOP}.il", "summary.json")


def load_program(path):
    """(program, manifest) of a version-2 bundle; UserError naming the problem for anything else."""
    version = format_version(path)
    if version == 1:
        raise UserError(f"{path} is a version-1 bundle (the MLP blocks only); the whole-model engine needs a "
                        "version-2 bundle: quweit-hw export of a checkpoint trained with --integer")
    program, manifest, _ = load_model_bundle(Path(path))
    return program, manifest


def model_summary(engine):
    """The engine's figures as JSON-ready data: instructions, cycles per image by kind (the
    sequencer's clocks: a softmax's are those it waited to start, its unit's own clocks run
    beside the instructions after it and are `softmax_unit_cycles`), sizes."""
    c = engine.compiled
    by_kind = {}
    for ins, cycles in zip(c.instructions, instruction_cycles(engine)):
        name = KIND_NAMES[ins.kind]
        by_kind[name] = by_kind.get(name, 0) + cycles
    return {"top": TOP, "lanes": c.lanes, "tokens": c.T, "d": c.d, "heads": c.heads, "classes": c.classes,
            "instructions": len(c.instructions), "cycles_per_image": engine.cycles_per_image,
            "cycles_by_kind": by_kind,
            "softmax_unit_cycles": sum(softmax_clocks(engine, i) for i in c.instructions if i.kind == SOFTMAX),
            "lut_engines": [e.block.name for e in engine.engines],
            "weight_rom_words": len(c.weights), "parameter_entries": len(c.params),
            "ports": {"i": "stream of uint8 pixels, channel-major then row-major, C*H*W per image",
                      "o": f"stream: logits {c.classes} x int32 (class k at bits [32k, 32k+32)), then the label",
                      "cycles": "clocks from the last pixel's handshake to o.valid, of the last image"}}


def write_model_rtl(bundle_path, out_dir, *, lanes=32, force=False):
    """Generate the whole-model engine of the version-2 bundle at `bundle_path` into `out_dir`,
    atomically (see verilog.write_rtl for --force). Returns the summary."""
    from amaranth.back import rtlil

    start = time.perf_counter()
    program, manifest = load_program(bundle_path)
    out_dir = Path(out_dir)
    check_output_folder(out_dir, force)
    engine = ModelEngine(program, lanes=lanes)
    summary = {"bundle": str(bundle_path), **model_summary(engine)}
    il = rtlil.convert(engine, name=TOP, emit_src=False)
    verilog, il = with_provenance(rtlil_to_verilog(il), il, {"bundle": str(bundle_path), "lanes": lanes})
    summary["generation_seconds"] = round(time.perf_counter() - start, 3)
    with atomic_folder(out_dir, force=force, keep=lambda name: name not in MODEL_RTL_FILES) as tmp:
        (tmp / f"{TOP}.v").write_text(verilog)
        (tmp / f"{TOP}.il").write_text(il)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
