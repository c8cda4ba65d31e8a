"""Clock and reset of a testbench's stream DUT, shared by the cocotb testbenches."""

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


async def start_stream_dut(dut, period_ns=10):
    """Start dut.clk, hold dut.rst for 3 clocks with the input stream idle (i.valid = 0) and
    the output stream stalled (o.ready = 0), and release it on a falling edge."""
    Clock(dut.clk, period_ns, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
