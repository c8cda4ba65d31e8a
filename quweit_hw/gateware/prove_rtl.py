"""Formal equivalence of the Verilog users and simulators get with the RTLIL (`prove_rtl`).

`write_rtl` writes `mlp_engine.il` as Amaranth emits it and `mlp_engine.v` as Yosys'
`write_verilog` of it with the wide combinational modules (comparators, fabric LUT layers,
adder stages) re-emitted by our own text (`verilog._fast_verilog`). The simulators check
the .v and synthesis reads the .il, so this proves the two the same circuit: both read
into one Yosys design, flattened (the FIFO's memory mapped to flip-flops), and
`equiv_make` / `equiv_simple` / `equiv_induct` prove every signal both name alike
(ports, registers, the wires between the units) equal, cycle by cycle from equal states. The
.v's re-emitted units have two forms (`ifdef SYNTHESIS: ?: trees and AND/OR logic for synthesis
tools, shifts and comparisons for the simulators); each is proven equal to the .il in turn.
"""

import re
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from .engine import TOP
from .prove import _yosys

READ = "read_{kind} {file}; hierarchy -top {top}; proc; flatten; memory; opt_clean; rename {top} {side}; design -stash {side}; "
# the .v's synthesis form (`ifdef SYNTHESIS, which read_verilog defines) and, -nosynthesis, its simulation form
FORMS = {"synthesis": "verilog", "simulation": "verilog -nosynthesis"}
EQUIV = (READ.format(kind="rtlil", file=f"{TOP}.il", top=TOP, side="gold")
         + READ.format(kind="{verilog}", file=f"{TOP}.v", top=TOP, side="gate")
         + "design -copy-from gold -as gold gold; design -copy-from gate -as gate gate; "
         "equiv_make gold gate equiv; hierarchy -top equiv; equiv_simple -seq 2; equiv_induct; equiv_status")
UNPROVEN = re.compile(r"Unproven \$equiv \S+: \\(\S+)_gold( \[\d+\])?")  # `\name_gold [bit] \name_gate [bit]`


def prove_rtl(folder):
    """Prove `folder`'s TOP.v (what `quweit-hw rtl` writes) the same circuit as its TOP.il,
    cycle by cycle. Returns {"equiv_cells", "seconds"}; UserError naming the first signals
    that differ otherwise, or a missing file."""
    folder = Path(folder)
    for name in (f"{TOP}.v", f"{TOP}.il"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name} (a folder that `quweit-hw rtl` wrote is expected)")
    start, cells = time.perf_counter(), 0
    with tempfile.TemporaryDirectory(prefix="quweit-prove-rtl-") as tmp:
        for name in (f"{TOP}.v", f"{TOP}.il"):  # YoWASP's Yosys sees only its working folder
            (Path(tmp) / name).write_bytes((folder / name).read_bytes())
        for form, read in FORMS.items():
            cells += _prove_form(folder, form, *_yosys(EQUIV.format(verilog=read), tmp))
    return {"equiv_cells": cells, "seconds": round(time.perf_counter() - start, 1)}


def _prove_form(folder, form, rc, log):
    """The $equiv cells proven for the .v's `form`, from Yosys' exit code and log; UserError
    naming the first signals that differ otherwise."""
    found = re.search(r"Found (\d+) \$equiv cells", log)
    if rc or found is None:
        raise UserError(f"Yosys could not read {folder}'s {TOP}.v ({form} form) and {TOP}.il into one design: "
                        f"{_last_error(log)}")
    if "Equivalence successfully proven!" not in log:
        # the units' own wires (layer0.o [2]) before Yosys' internal ones (o$32 [2])
        where = sorted(dict.fromkeys(name + bit for name, bit in UNPROVEN.findall(log)), key=lambda w: "$" in w)
        raise UserError(f"{folder}/{TOP}.v ({form} form) differs from {TOP}.il: Yosys did not prove "
                        f"{', '.join(where[:5]) or 'every signal'}{' ...' if len(where) > 5 else ''} equal")
    return int(found[1])


def _last_error(log):
    errors = [line.strip() for line in log.splitlines() if line.startswith("ERROR")]
    return errors[-1] if errors else log[-300:].strip()
