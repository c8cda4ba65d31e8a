# amaranth: UnusedElaboratable=no
"""Bitstreams for a board: the engines that fit, the board tops (MLP-only, whole model), and
`synth` (tools and report).

(The first line is Amaranth's linter option: `choose_engines` builds engines to read their
LUT4 estimate, and those that do not fit are dropped unelaborated on purpose.)
"""

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from ..contract.bundle import board_id, bundle_id
from ..contract.folders import atomic_folder
from ..contract.model_bundle import model_id
from ..errors import UserError
from .engine import MLPEngine
from .link import LinkCore
from .model_engine import ModelEngine
from .model_fit import check_model_fit
from .model_link import ModelLinkCore
from .model_rtl import load_program
from .report import make_report, report_markdown
from .toolchain import BUILD_TOOLS, NEXTPNR_REPORT, TOP, build_top, check_tools
from .top import BoardTop


def choose_engines(bundle, board, blocks=None):
    """[(block index, MLPEngine)] for the board: all blocks when they fit, else the `blocks` asked for.

    Fit: the HDL summary's ECP5 LUT4 estimate against board.fit_fraction * board.luts.
    UserError when the blocks asked for (or all, when none are) do not fit, naming the figures.
    """
    budget = int(board.fit_fraction * board.luts)
    asked = list(range(len(bundle.blocks))) if blocks is None else list(dict.fromkeys(blocks))
    engines = []
    for index in asked:
        engine = MLPEngine(bundle.block(index), registers=board.registers)
        estimate = engine.summary()["ecp5_lut4_estimate"]["total"]
        if estimate > budget:
            raise UserError(f"block {index} ({engine.block.name!r}) needs ~{estimate} LUT4, more than the "
                              f"{budget} of {board.name} ({board.fit_fraction:g} x {board.luts}): "
                              f"it does not fit even alone")
        engines.append((index, engine, estimate))
    total = sum(e for *_, e in engines)
    if total > budget:
        raise UserError(f"blocks {asked} need ~{total} LUT4 together, more than the {budget} of {board.name}; "
                          f"choose the blocks to build with --block (each fits alone)")
    return [(index, engine) for index, engine, _ in engines]


def make_top(bundle, board, blocks=None):
    """(BoardTop, LinkCore) for `bundle` on `board`."""
    two = board.engine_hz != board.clock_hz
    core = LinkCore(choose_engines(bundle, board, blocks), divisor=board.divisor, max_tokens=board.max_tokens,
                    timeout=int(board.clock_hz * board.frame_timeout_ms / 1000), stretch=board.clock_hz // 50,
                    bundle_id=board_id(bundle), engine_domain="engine" if two else "sync")
    return BoardTop(core, clock_hz=board.clock_hz, reset_button=board.reset_button,
                    engine_clock_hz=board.engine_hz), core


def make_model_top(bundle_path, board):
    """(BoardTop, ModelLinkCore): the whole-model top of the version 2 bundle at `bundle_path`
    on `board` (its `engine_clock_hz` the engine's: `BoardConfig.for_whole_model`). UserError
    for a version 1 bundle."""
    from ..contract.model_bundle import model_board_id

    program, manifest = load_program(bundle_path)
    two = board.engine_hz != board.clock_hz
    engine = ModelEngine(program, lanes=board.model_lanes, registers=board.registers)
    # before anything is written: a model that does not fit is one line naming what would
    fit = check_model_fit(program, board, board.model_lanes, registers=board.registers, engine=engine)
    core = ModelLinkCore(engine, divisor=board.divisor, batch=board.batch_images,
                         timeout=int(board.clock_hz * board.frame_timeout_ms / 1000), stretch=board.clock_hz // 50,
                         bundle_id=model_board_id(manifest), engine_domain="engine" if two else "sync",
                         engine_clock_hz=board.engine_hz, fit_estimate=fit)
    return BoardTop(core, clock_hz=board.clock_hz, reset_button=board.reset_button,
                    engine_clock_hz=board.engine_hz), core


def build_dir(bundle, board, whole_model=False):
    """hw/<bundle>/<board>/; the MLP-only top of a version 2 bundle in hw/<bundle>/<board>-mlp-only/."""
    mlp_only_of_v2 = not whole_model and bundle.manifest.get("format_version") == 2
    return Path("hw") / Path(bundle.path).name / (f"{board.name}-mlp-only" if mlp_only_of_v2 else board.name)


def _build_file(name):
    """Whether a build folder's entry is one a build writes (the rest are kept across builds)."""
    return (name.startswith(f"{TOP}.") or name.startswith(f"build_{TOP}.")
            or name in (NEXTPNR_REPORT, "report.json", "report.md", "rtl"))


def failed_dir(out):
    """Where a failed build's folder is kept for its logs: beside `out`, named OUT.failed."""
    out = Path(os.path.abspath(out))
    return out.with_name(f"{out.name}.failed")


@contextmanager
def build_folder(out):
    """A fresh temporary build folder, moved into place as `out` when the body succeeds.

    A failure or Ctrl-C leaves an existing `out` (the previous build) untouched; files in
    it that no build writes are carried over into the new one."""
    with atomic_folder(out, force=True, keep=lambda name: not _build_file(name)) as tmp:
        yield tmp
    shutil.rmtree(failed_dir(out), ignore_errors=True)  # an older failure's logs are stale now


def synth(bundle, board, *, blocks=None, out=None, do_build=True, seed=None, whole_model=False, measure_cpu=None,
          netlist_cache=True):
    """Build `bundle` for `board` (a BoardConfig) into `out` (default hw/<bundle>/<board>/):
    the MLP-only top of its LUT-MLP blocks, or with `whole_model` the whole-model top (a
    version 2 bundle; `board` from `BoardConfig.for_whole_model`). `measure_cpu`: None, or a
    function returning the model's images/s on this CPU for the report
    (`model_throughput.bundle_cpu_figures`), called once the top is elaborated and fits, so
    that a model too big for the board gets its error at once. netlist_cache: as `build_top`.

    do_build=False stops after elaboration (no tools run, nothing written) and returns the
    Amaranth BuildPlan. Otherwise checks the tools, then runs Yosys, nextpnr-ecp5 and
    ecppack in a temporary folder that replaces `out` at the end (with report.json and
    report.md), and returns the report dict.
    """
    check_tools(BUILD_TOOLS if do_build else ("YOSYS",))
    top, core = make_model_top(bundle.path, board) if whole_model else make_top(bundle, board, blocks)
    out = Path(out) if out is not None else build_dir(bundle, board, whole_model)
    if not do_build:
        return build_top(top, board, out, do_build=False, provenance=_provenance(bundle, board, core))
    cpu = measure_cpu() if measure_cpu is not None else None
    with build_folder(out) as tmp:
        return run_build(top, core, bundle, board, tmp, out, seed=seed, cpu=cpu, netlist_cache=netlist_cache)


def _provenance(bundle, board, core):
    if isinstance(core, ModelLinkCore):
        what = {"bundle_id": model_id(bundle.manifest), "top": "whole model", "lanes": core.info.lanes}
    else:
        what = {"bundle_id": bundle_id(bundle), "blocks": [i for i, _ in core.engines]}
    return {**what, "board": board.name,
            "clock_hz": board.clock_hz, "engine_clock_hz": board.engine_hz, "baud": board.baud,
            "registers": board.registers}


def run_build(top, core, bundle, board, tmp, out, *, seed=None, cpu=None, netlist_cache=True):
    """Run the tools on `top` in the temporary build folder `tmp` that will become `out`;
    write report.json and report.md there and return the report (paths as in `out`).
    A failed build's folder is moved to failed_dir(out) and the UserError names its logs."""
    start = time.perf_counter()
    run = build_top(top, board, tmp, seed=seed, failed=failed_dir(out), provenance=_provenance(bundle, board, core),
                    netlist_cache=netlist_cache)
    report = make_report(tmp, bundle, board, core, time.perf_counter() - start, cpu=cpu)
    report["netlist"] = run.netlist  # "yosys", "engines apart" or "cache": Yosys skipped
    report["engine_netlists"] = run.parts  # with "engines apart": each engine's netlist, cached or synthesised
    report["tool_seconds"] = run.seconds
    report["tool_options"] = {"synth_ecp5": list(board.synth_opts), "nextpnr": list(board.nextpnr_opts)}
    report["bitstream"] = str(Path(out) / f"{TOP}.bit")
    write_report(tmp, report)
    return report


def write_report(folder, report):
    (Path(folder) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(folder) / "report.md").write_text(report_markdown(report))
