# amaranth: UnusedElaboratable=no
"""Bitstreams for a board: the engines that fit, the board top, and `synth` (tools and report).

(The first line is Amaranth's linter option: `choose_engines` builds engines to read their
LUT4 estimate, and those that do not fit are dropped unelaborated on purpose.)
"""

import json
import time
from pathlib import Path

from ..contract.bundle import board_id
from ..errors import UserError
from .engine import MLPEngine
from .link import LinkCore
from .report import make_report, report_markdown
from .toolchain import build_top
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


def build_dir(bundle, board):
    return Path("hw") / Path(bundle.path).name / board.name


def synth(bundle, board, *, blocks=None, out=None, do_build=True, seed=None):
    """Build `bundle` for `board` (a BoardConfig) into `out` (default hw/<bundle>/<board>/).

    do_build=False stops after elaboration (no tools run) and returns the Amaranth BuildPlan.
    Otherwise runs Yosys, nextpnr-ecp5 and ecppack, writes report.json and report.md, and
    returns the report dict.
    """
    top, core = make_top(bundle, board, blocks)
    out = Path(out) if out is not None else build_dir(bundle, board)
    start = time.perf_counter()
    plan = build_top(top, board, out, seed=seed, do_build=do_build)
    if not do_build:
        return plan
    seconds = time.perf_counter() - start
    report = make_report(out, bundle, board, core, seconds)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    return report
