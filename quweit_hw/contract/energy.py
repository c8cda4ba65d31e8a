"""Energy per operation, in pJ: the constants every accounting (float or integer) charges.

45 nm, 0.9 V: M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, table on p. 11 (the add and mult rows). Imports no torch.
"""

ENERGY_PJ = {
    "fp32": {"mult": 3.7, "add": 0.9},
    "int8": {"mult": 0.2, "add": 0.03},  # 8-bit integer mult/add, as in an integer-only I-ViT
    "int32": {"mult": 3.1, "add": 0.1},  # the same table's 32-bit integer rows
}
# No such published figure exists for a LUT lookup. Our assumption: a 6-input lookup is a
# 64:1 multiplexer of constants (63 two-input muxes), charged as one 32-bit integer add
# (0.1 pJ, Horowitz) — more than an 8-bit add, less than any multiplication. A thermometer
# comparator and a popcount addition are charged as an 8-bit add (0.03 pJ, Horowitz).
LUT_LOOKUP_PJ = 0.1
COMPARE_PJ = 0.03
POPCOUNT_ADD_PJ = 0.03
# The integer model's other steps have no Horowitz row either; our assumptions: a rounding
# right shift (a barrel shifter and its rounding add) and a table lookup (the softmax's
# 64-entry exp2 table, the dense twin's 256-entry GELU table) as a 32-bit add; an integer
# division as 32 restoring steps, each a 32-bit subtract.
SHIFT_PJ = ENERGY_PJ["int32"]["add"]
TABLE_LOOKUP_PJ = LUT_LOOKUP_PJ
DIVISION_PJ = 32 * ENERGY_PJ["int32"]["add"]
