"""`build`: one command from a training checkpoint to a bitstream, timed per step.

Checkpoint -> bundle (torch side) -> RTL and an Amaranth-simulation check against the
golden model -> Yosys, nextpnr-ecp5, ecppack and the report (gateware side). An integer
checkpoint (a version 2 bundle) builds the whole-model top, a float one (version 1) the
MLP-only top of its LUT-MLP blocks; `whole_model` asks for one of them.

Nothing half-finishes: the bundle and the build folder are filled in temporary folders and
moved into place only when every step has succeeded, so a failure or Ctrl-C leaves the
previous build (and its bundle) as it was.
"""

import dataclasses
import time
from pathlib import Path

from .contract.bundle_files import not_bundle_file, load_bundle
from .contract.folders import atomic_folder, check_output_folder
from .errors import UserError
from .gateware.simulation import check_engine
from .gateware.synth import build_folder, choose_engines, make_model_top, make_top, run_build, write_report
from .gateware.toolchain import check_tools
from .gateware.verilog import write_rtl
from .model.export import export_checkpoint


class StepTimer:
    """Seconds per named step, printed as each ends."""

    def __init__(self):
        self.steps, self.start = {}, time.perf_counter()

    def done(self, name, t0):
        self.steps[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {self.steps[name]} s", flush=True)

    @property
    def total(self):
        return round(time.perf_counter() - self.start, 1)


def work_dir(checkpoint):
    """The default work folder of a checkpoint: hw/<run>/, <run> being the checkpoint's folder name."""
    return Path("hw") / Path(checkpoint).resolve().parent.name


def build(checkpoint, board, *, bundle_out=None, force=False, out=None, blocks=None, check_tokens=256, seed=None,
          whole_model=None, check_images=0, netlist_cache=True):
    """Checkpoint -> bitstream on `board` (a BoardConfig); returns the report (also written to
    OUT/report.json and report.md). The default work folder is hw/<run>/ (see `work_dir`); its
    bundle (hw/<run>/bundle) is build output, replaced each build; the build folder is
    OUT (default hw/<run>/<board>/), with the RTL of each block in OUT/rtl/block<I> (MLP-only)
    or of the whole model in OUT/rtl (`check_images` test images through the engine in
    Amaranth's simulator against the golden model). whole_model: True the whole-model top
    (UserError, nothing written, when the checkpoint exports a version 1 bundle), False the
    MLP-only top, None as the export's version says. netlist_cache: as `toolchain.build_top`."""
    check_tools()
    timer = StepTimer()
    work = work_dir(checkpoint)
    bundle_out = Path(bundle_out) if bundle_out else work / "bundle"
    replace_bundle = force or bundle_out == work / "bundle"
    out = Path(out) if out else work / board.name
    check_output_folder(bundle_out, replace_bundle)
    check_output_folder(out, True)
    t = time.perf_counter()
    with atomic_folder(bundle_out, force=replace_bundle, keep=not_bundle_file) as staged_bundle, \
            build_folder(out) as tmp:
        export_checkpoint(checkpoint, staged_bundle, force=True)
        bundle = dataclasses.replace(load_bundle(staged_bundle), path=bundle_out)
        timer.done("export", t)
        version = bundle.manifest.get("format_version")
        if whole_model and version != 2:
            raise UserError(f"{checkpoint} exports a version 1 bundle (a float model's LUT-MLP blocks): the "
                            "whole-model top needs an integer checkpoint; drop --whole-model for the MLP-only top")
        if whole_model or (whole_model is None and version == 2):
            if blocks is not None:
                raise UserError("--block picks the MLP-only top's engines: add --mlp-only")
            report = _build_whole_model(staged_bundle, bundle, board.for_whole_model(), tmp, out, timer,
                                        check_images, seed, netlist_cache)
            report["steps_seconds"] = timer.steps
            report["checkpoint_to_bitstream_seconds"] = timer.total
            write_report(tmp, report)
            return report
        engines = choose_engines(bundle, board, blocks)  # the fit error comes first
        t = time.perf_counter()
        for i, _ in engines:
            # the RTLIL in Amaranth's simulation form, 4-5x quicker to write (`quweit-hw rtl` writes the
            # synthesis form); the Verilog is the same either way
            write_rtl(bundle, tmp / "rtl" / f"block{i}", block_index=i, registers=board.registers,
                      rtlil_form="simulation")
        timer.done("rtl", t)
        t = time.perf_counter()
        for i, _ in engines:
            check_engine(bundle.block(i), check_tokens, registers=board.registers)
        timer.done(f"simulation check ({check_tokens} tokens per block vs golden)", t)
        t = time.perf_counter()
        top, core = make_top(bundle, board, blocks)
        report = run_build(top, core, bundle, board, tmp, out, seed=seed, netlist_cache=netlist_cache)
        timer.done("synthesis, place and route, bitstream", t)
        report["steps_seconds"] = timer.steps
        report["checkpoint_to_bitstream_seconds"] = timer.total
        write_report(tmp, report)
    return report


def _build_whole_model(staged_bundle, bundle, board, tmp, out, timer, check_images, seed, netlist_cache):
    """The whole-model steps of `build`: its RTL, the simulation check, the board top's build."""
    from .gateware.model_rtl import write_model_rtl

    t = time.perf_counter()
    write_model_rtl(staged_bundle, tmp / "rtl", lanes=board.model_lanes)
    timer.done("rtl", t)
    t = time.perf_counter()
    top, core = make_model_top(staged_bundle, board)
    if check_images:
        check_model_engine(core.engine, check_images)
        timer.done(f"simulation check ({check_images} test images vs golden)", t)
        t = time.perf_counter()
    from .model_throughput import bundle_cpu_figures

    cpu = bundle_cpu_figures(staged_bundle)  # the report's images/s on this CPU, beside the chip's
    report = run_build(top, core, bundle, board, tmp, out, seed=seed, cpu=cpu, netlist_cache=netlist_cache)
    timer.done("synthesis, place and route, bitstream", t)
    return report


def check_model_engine(engine, n):
    """The first `n` Fashion-MNIST test images through `engine` in Amaranth's simulator; UserError
    unless every logit equals the golden model's."""
    from .contract import golden_model
    from .contract.fashion_mnist import fashion_mnist_pixels
    from .gateware.simulation import simulate_model

    pixels, _ = fashion_mnist_pixels("test", limit=n)
    logits, _, _ = simulate_model(engine, pixels)
    differ = int((logits != golden_model.logits(engine.program, pixels)).sum())
    if differ:
        raise UserError(f"simulation check: {differ} logits of {n} test images differ from the golden model")
