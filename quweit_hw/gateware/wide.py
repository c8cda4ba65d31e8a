"""Wide combinational outputs assigned in chunks (the one way every unit drives its vector)."""

from amaranth.hdl import Cat


def assign_chunked(m, target, bits, chunk=32):
    """target[k] = bits[k], as one comb statement per `chunk` bits.

    Why chunks: one statement for a whole wide layer makes Amaranth's Python simulator
    compile one expression thousands of terms deep (RecursionError), and one statement
    per bit costs elaboration time quadratic in the width (Amaranth checks every bit of
    the target per statement). Slice assignments also keep the port's name in the
    Verilog, where a port driven by one bare Cat of many cells becomes one port per bit
    (`port$123$0`); the no-op XOR makes each chunk one cell (it folds away in Yosys).
    """
    for k in range(0, len(bits), chunk):
        part = bits[k:k + chunk]
        m.d.comb += target[k:k + len(part)].eq(Cat(*part) ^ 0)  # ^ 0: one cell, see above
