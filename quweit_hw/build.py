"""`build`: one command from a training checkpoint to a bitstream, timed per step.

Checkpoint -> bundle (torch side) -> RTL and an Amaranth-simulation check against the
golden model -> Yosys, nextpnr-ecp5, ecppack and the report (gateware side).
"""

import json
import time
from pathlib import Path

from .contract.bundle_files import load_bundle
from .gateware.report import report_markdown
from .gateware.simulation import check_engine
from .gateware.synth import choose_engines, synth
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


def build(checkpoint, board, *, bundle_out=None, force=False, out=None, blocks=None, check_tokens=256, seed=None):
    """Checkpoint -> bitstream on `board` (a BoardConfig); returns the report (also written to
    OUT/report.json and report.md). The default work folder is hw/<run>/ (<run>: the
    checkpoint's folder name); its bundle (hw/<run>/bundle) is build output, replaced each build."""
    timer = StepTimer()
    work = Path("hw") / Path(checkpoint).resolve().parent.name
    t = time.perf_counter()
    bundle_out = Path(bundle_out) if bundle_out else work / "bundle"
    bundle = load_bundle(export_checkpoint(checkpoint, bundle_out, force=force or bundle_out == work / "bundle"))
    timer.done("export", t)
    out = Path(out) if out else work / board.name
    engines = choose_engines(bundle, board, blocks)  # the fit error comes first
    t = time.perf_counter()
    for i, _ in engines:
        write_rtl(bundle, out / "rtl" / f"block{i}", block_index=i, registers=board.registers, force=True)
    timer.done("rtl", t)
    t = time.perf_counter()
    for i, _ in engines:
        check_engine(bundle.block(i), check_tokens, registers=board.registers)
    timer.done(f"simulation check ({check_tokens} tokens per block vs golden)", t)
    t = time.perf_counter()
    report = synth(bundle, board, blocks=blocks, out=out, seed=seed)
    timer.done("synthesis, place and route, bitstream", t)
    report["steps_seconds"] = timer.steps
    report["checkpoint_to_bitstream_seconds"] = timer.total
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    return report
