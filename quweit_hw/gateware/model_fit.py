"""The whole-model engine's ECP5 resources before any build (LUT4, flip-flops, MULT18X18D,
DP16KD, LUT RAM), counted from the elaborated design, and the check that a board's device
holds them (`check_model_fit`: one-line UserError naming the resource, the excess and the
option that would make it fit).

How each figure is counted (docs/results.md, "Fit estimate", has the error against the
measured 32-lane build of the reference):
- memories: every `Memory` of the elaborated engine, mapped as Yosys' `memory_libmap` does
  with synth_ecp5's libraries (share/lattice/brams_16kd.txt, lutrams.txt): a DP16KD (cost 128)
  in one of its configurations 16384x1 ... 512x36, column slices of different
  configurations allowed; a TRELLIS_DPR16X4 (16x4, cost 4, RAMs only: `prune_rom`); soft
  logic at 1 per bit (RAM) or 1/16 per bit (ROM); the cheapest wins. A RAM keeps one copy
  per read port (one write and one read port per copy); a ROM takes two read ports per
  DP16KD; an asynchronous read port rules out block RAM.
- multipliers: every `*` of the design, split as Yosys' mul2dsp.v splits it into 18x18
  pieces (17 bits per partial slice of a signed operand).
- flip-flops: the bits of every signal a clocked domain drives, plus the read registers of
  memories that land in LUT RAM or logic.
- LUT4: the LUT-MLP engines by gateware.estimate (per element, calibrated on synth_ecp5),
  the rest of the datapath by LUT4 per bit of each operator kind (`LUT4_PER_BIT`), their sum
  scaled by `LUT4_CALIBRATION` (the measured build over this count); the LUT RAM as its
  slices' LUT4s on top.
"""

import math
from dataclasses import dataclass

from amaranth.hdl import Fragment, Shape
from amaranth.hdl._ast import Assign, Concat, Const, Operator, Part, Signal, Slice, Switch, SwitchValue
from amaranth.hdl._mem import MemoryInstance

from ..errors import UserError
from .engine import MLPEngine
from .estimate import estimate_lut4
from .model_engine import ModelEngine

# (depth, width) of a DP16KD's configurations (ECP5 sysMEM, Lattice TN1264); 512x36 is the
# pseudo-dual-port mode, one write and one read port
DP16KD_CONFIGS = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
DP16KD_COST, DPR16X4_COST = 128, 4      # memory_libmap's costs (brams_16kd.txt, lutrams.txt)
LOGIC_COST_RAM, LOGIC_COST_ROM = 1.0, 1 / 16  # memory_libmap's defaults per bit of soft logic
LUT4_PER_DPR16X4 = 4                    # a TRELLIS_DPR16X4 takes two slices' four LUT4s

# LUT4 per output bit (per operand bit for comparisons) of the datapath's operators, in the
# convention of estimate.py (a CCU2C carry cell counts as 2 LUT4, PFUMX/L6MUX21 are free):
# an adder or a magnitude comparison is a carry chain, one LUT4 per bit; a 2:1 multiplexer
# takes half a LUT4 (ABC packs two of its three inputs' functions per LUT4); a bitwise or
# equality gate a quarter (four inputs per LUT4); a variable shift one 2:1 level per
# shift-amount bit.
LUT4_PER_BIT = {"add": 1.0, "compare": 1.0, "mux": 0.5, "gate": 0.25, "equal": 0.25, "shift": 0.5}
_ADD, _COMPARE, _EQUAL = {"+", "-"}, {"<", "<=", ">", ">="}, {"==", "!="}
_GATE = {"&", "|", "^", "~", "b", "r|", "r&", "r^", "u-"}

# ECP5 LFE5U devices (Lattice ECP5 family data sheet, FPGA-DS-02012): LUT4 (one flip-flop
# each), 18x18 multipliers, EBR blocks (DP16KD), keyed by the board file's `luts`
ECP5_DEVICES = {
    12_288: {"device": "LFE5U-12F", "lut4": 12_288, "ff": 12_288, "mult18x18d": 28, "dp16kd": 32},
    24_288: {"device": "LFE5U-25F", "lut4": 24_288, "ff": 24_288, "mult18x18d": 28, "dp16kd": 56},
    43_848: {"device": "LFE5U-45F", "lut4": 43_848, "ff": 43_848, "mult18x18d": 72, "dp16kd": 108},
    83_640: {"device": "LFE5U-85F", "lut4": 83_640, "ff": 83_640, "mult18x18d": 156, "dp16kd": 208},
}
RESOURCES = ("lut4", "ff", "mult18x18d", "dp16kd")
RESOURCE_NAMES = {"lut4": "LUT4", "ff": "flip-flops", "mult18x18d": "MULT18X18D", "dp16kd": "DP16KD"}

# The one measured build (docs/results.md, "Build of the whole-model engine on the ECP5-85F"):
# the reference at 32 lanes, Yosys 0.55 synth_ecp5: 31,145 LUT4 + 1,562 CCU2C (2 LUT4 each),
# 17,026 FF, 63 MULT18X18D, 61 DP16KD, 438 TRELLIS_DPR16X4. The per-operator and per-element
# LUT4 counts above overshoot its 34,269 LUT4 by 21.6 % (estimate.py's comparators and nodes
# count more than ABC keeps), so the LUT4 figure is scaled by the ratio there; the other
# figures are counted, not scaled.
MEASURED_REFERENCE_32 = {"lut4": 31_145 + 2 * 1_562, "ff": 17_026, "mult18x18d": 63, "dp16kd": 61, "lutram": 438}
# The pipelined engine inside the whole-model ULX3S top (docs/results.md, "Fewer cycles per
# image": the build of commit d1a76b6 at 60 MHz), as nextpnr packed it: the top adds the link,
# its FIFOs (LUT RAM), the batch memory and the payload ring (14 DP16KD) to the engine, so its
# figures bound the engine's from above.
MEASURED_TOP_REFERENCE_32 = {"ff": 25_417, "mult18x18d": 58, "dp16kd": 79, "lutram": 471}
LUT4_CALIBRATION = 34_269 / 41_662
# Relative error of each figure: the largest of that build and a second, synth_ecp5 only (the
# tiny two-block LUT test model at 8 lanes: LUT4 -6.5 %, FF +14.9 %, MULT18X18D +2.8 %, DP16KD
# 9 against 8, LUT RAM exact); LUT4: the uncalibrated overshoot of the first.
STATED_ERROR = {"lut4": 0.22, "ff": 0.15, "mult18x18d": 0.05, "dp16kd": 0.125}


@dataclass(frozen=True)
class MemoryMapping:
    """One memory of the engine and where Yosys would put it."""
    name: str
    width: int
    depth: int
    read_ports: int
    write_ports: int
    kind: str        # "dp16kd", "lutram" or "logic"
    cells: int       # DP16KD or TRELLIS_DPR16X4 cells (0 for logic)
    ff: int          # read-register bits outside the block RAM


def dp16kd_blocks(depth, width):
    """DP16KD blocks of one copy of a depth x width memory: the width covered by column
    slices, each in the configuration that serves its share cheapest (unbounded knapsack)."""
    best = [0] + [math.inf] * width
    for w in range(1, width + 1):
        for cfg_depth, cfg_width in DP16KD_CONFIGS:
            best[w] = min(best[w], best[max(w - cfg_width, 0)] + math.ceil(depth / cfg_depth))
    return best[width]


def map_memory(name, width, depth, read_ports, write_ports, async_read=False):
    """Where memory_libmap puts a memory (the module docstring's rules), as a MemoryMapping."""
    rom = write_ports == 0
    copies = math.ceil(read_ports / 2) if rom else read_ports
    options = {"logic": (width * depth * (LOGIC_COST_ROM if rom else LOGIC_COST_RAM), 0)}
    if depth > 1 and not async_read:
        blocks = copies * dp16kd_blocks(depth, width)
        options["dp16kd"] = (blocks * DP16KD_COST, blocks)
    if depth > 1 and not rom:
        cells = read_ports * math.ceil(depth / 16) * math.ceil(width / 4)
        options["lutram"] = (cells * DPR16X4_COST, cells)
    kind = min(options, key=lambda k: (options[k][0], k != "dp16kd"))  # ties to block RAM, as Yosys
    sync_reads = 0 if async_read else read_ports
    return MemoryMapping(name, width, depth, read_ports, write_ports, kind, options[kind][1],
                         0 if kind == "dp16kd" else sync_reads * width)


def _fragments(fragment, path="", in_mlp=False):
    """(path, fragment, in_mlp) of the fragment and all below it; in_mlp: inside an MLPEngine."""
    origins = getattr(fragment, "origins", None) or ()
    in_mlp = in_mlp or any(isinstance(o, MLPEngine) for o in origins)
    yield path, fragment, in_mlp
    for sub, name, *_ in fragment.subfragments:
        yield from _fragments(sub, f"{path}/{name}", in_mlp)


class _Operators:
    """The operators of a set of statements: multipliers (their operand widths and
    signedness) and the datapath LUT4 by `LUT4_PER_BIT`. Each value is counted once, however
    often it is used (Amaranth emits a shared value once)."""

    def __init__(self):
        self.seen, self.multipliers, self.lut4 = set(), [], 0.0

    def statements(self, stmts):
        for stmt in stmts:
            if isinstance(stmt, Assign):
                self.value(stmt.rhs)
                self.value(stmt.lhs)
            elif isinstance(stmt, Switch):
                self.value(stmt.test)
                branches = len(stmt.cases)
                for _, body, _ in stmt.cases:
                    self.statements(body)
                # each bit a case assigns becomes a multiplexer over the branches
                bits = sum(len(s) for s in stmt._lhs_signals())
                self.lut4 += LUT4_PER_BIT["mux"] * bits * max(branches - 1, 0) / max(branches, 1)

    def value(self, v):
        if id(v) in self.seen or isinstance(v, (Const, Signal)):
            return
        self.seen.add(id(v))
        if isinstance(v, Operator):
            for operand in v.operands:
                self.value(operand)
            self._operator(v)
        elif isinstance(v, Slice):
            self.value(v.value)
        elif isinstance(v, Part):
            self.value(v.value)
            self.value(v.offset)
            self.lut4 += LUT4_PER_BIT["shift"] * v.width * len(v.offset)
        elif isinstance(v, Concat):
            for part in v.parts:
                self.value(part)
        elif isinstance(v, SwitchValue):
            self.value(v.test)
            for _, value in v.cases:
                if value is not None:
                    self.value(value)
            self.lut4 += LUT4_PER_BIT["mux"] * len(v) * max(len(v.cases) - 1, 0)

    def _operator(self, v):
        op, width = v.operator, len(v)
        operand_bits = max((len(o) for o in v.operands), default=0)
        if op == "*":
            self.multipliers.append(tuple((len(o), o.shape().signed, o.value if isinstance(o, Const) else None)
                                          for o in v.operands))
        elif op in _ADD and len(v.operands) == 2:
            self.lut4 += LUT4_PER_BIT["add"] * width
        elif op in _COMPARE:
            self.lut4 += LUT4_PER_BIT["compare"] * operand_bits
        elif op in _EQUAL:
            self.lut4 += LUT4_PER_BIT["equal"] * operand_bits
        elif op == "m":
            self.lut4 += LUT4_PER_BIT["mux"] * width
        elif op in ("<<", ">>") and not isinstance(v.operands[1], Const):
            self.lut4 += LUT4_PER_BIT["shift"] * width * len(v.operands[1])
        elif op in _GATE:
            self.lut4 += LUT4_PER_BIT["gate"] * width


def mult18x18d_count(a_bits, a_signed, b_bits, b_signed):
    """MULT18X18D cells of an a x b multiplier as Yosys' mul2dsp.v splits it (18x18 maximum,
    2x2 minimum; a mixed-signedness product is signed with the unsigned operand one bit wider)."""
    if a_signed != b_signed:
        a_bits, b_bits = a_bits + (not a_signed), b_bits + (not b_signed)
    signed = a_signed or b_signed
    if min(a_bits, b_bits) < 2:
        return 0

    def slices(bits):  # mul2dsp: n partial slices of 18 - signed bits, then the last
        return 1 if bits <= 18 else 1 + (bits - 1 - signed) // (18 - signed)

    return slices(a_bits) * slices(b_bits)


def estimate_model_resources(program, lanes, *, registers="all", engine=None):
    """The ECP5 resources of `ModelEngine(program, lanes=lanes, registers=registers)` (or of
    `engine`, already built): {"lut4", "ff", "mult18x18d", "dp16kd", "lutram", "breakdown",
    "memories", "method"}. "lut4" is in LUT4 slots (a CCU2C counts 2) and includes the LUT RAM's
    LUT4s; each figure's error against the measured build is STATED_ERROR."""
    engine = engine or ModelEngine(program, lanes=lanes, registers=registers)
    fragment = Fragment.get(engine, None)
    memories, ops, ff, mlp_ff = [], _Operators(), 0, 0
    for path, frag, in_mlp in _fragments(fragment):
        if isinstance(frag, MemoryInstance):
            reads = frag._read_ports
            memories.append(map_memory(path.strip("/") if in_mlp else path.rsplit("/", 1)[-1],
                                       Shape.cast(frag._data.shape).width, frag._data.depth, len(reads),
                                       len(frag._write_ports), any(p._domain == "comb" for p in reads)))
            continue
        register_bits = sum(len(s) for domain, stmts in frag.statements.items() if domain != "comb"
                            for s in _lhs(stmts))
        if in_mlp:  # the MLP engines' LUT4 come from gateware.estimate, their registers from here
            mlp_ff += register_bits
            continue
        ff += register_bits
        for stmts in frag.statements.values():
            ops.statements(stmts)
    dsps = sum(_multiplier_dsps(m) for m in ops.multipliers)
    mlp_lut4 = sum(estimate_lut4(e)["total"] for e in engine.engines)
    lutram = sum(m.cells for m in memories if m.kind == "lutram")
    memory_ff = sum(m.ff for m in memories)
    datapath_lut4 = math.ceil(ops.lut4)
    logic_lut4 = round((mlp_lut4 + datapath_lut4) * LUT4_CALIBRATION)
    lut4 = logic_lut4 + LUT4_PER_DPR16X4 * lutram
    return {
        "lanes": engine.compiled.lanes,
        "lut4": lut4, "ff": ff + mlp_ff + memory_ff, "mult18x18d": dsps,
        "dp16kd": sum(m.cells for m in memories if m.kind == "dp16kd"), "lutram": lutram,
        "breakdown": {"lut4_logic": logic_lut4, "lut4_mlp_engines_raw": mlp_lut4, "lut4_datapath_raw": datapath_lut4,
                      "lut4_mlp_lut_layers_raw": sum(estimate_lut4(e)["lut_layers"] for e in engine.engines),
                      "lut4_lutram": LUT4_PER_DPR16X4 * lutram, "ff_datapath": ff, "ff_mlp_engines": mlp_ff,
                      "ff_memory_reads": memory_ff, "multipliers": len(ops.multipliers)},
        "memories": [m.__dict__ for m in memories],
        "method": "counted from the elaborated engine (gateware.model_fit): memories as Yosys memory_libmap "
                  "maps them, multipliers as mul2dsp.v splits them, registers bit by bit, LUT4 per operator "
                  "bit and gateware.estimate for the LUT-MLP engines",
    }


def _lhs(stmts):
    for stmt in stmts:
        yield from stmt._lhs_signals()


def _multiplier_dsps(operands):
    """MULT18X18D of one multiplier from its operands' (bits, signed, constant value or None):
    a product by a power of two is a shift (opt_expr), a constant is only as wide as its value
    (wreduce)."""
    (a_bits, a_signed, a_const), (b_bits, b_signed, b_const) = operands
    for const in (a_const, b_const):
        if const is not None and const & (const - 1) == 0 and const >= 0:
            return 0
    if a_const is not None:
        a_bits = a_const.bit_length() + (a_const < 0 or a_signed)
    if b_const is not None:
        b_bits = b_const.bit_length() + (b_const < 0 or b_signed)
    return mult18x18d_count(a_bits, a_signed, b_bits, b_signed)


def device_resources(board):
    """The ECP5 device resources of a BoardConfig (by its `luts`), or UserError if unknown."""
    try:
        return ECP5_DEVICES[board.luts]
    except KeyError:
        raise UserError(f"board {board.name!r}: no ECP5 device with {board.luts} LUT4 is known to the fit "
                        f"check (known: {sorted(ECP5_DEVICES)})") from None


def _over(estimate, device, board):
    """{resource: (estimated, available)} of every resource the estimate exceeds; LUT4 against
    the board's fit_fraction of the device (routing needs the rest), the others in full."""
    limits = {k: device[k] for k in RESOURCES}
    limits["lut4"] = math.floor(device["lut4"] * board.fit_fraction)
    return {k: (estimate[k], limits[k]) for k in RESOURCES if estimate[k] > limits[k]}


def check_model_fit(program, board, lanes, *, registers="all", boards=None, engine=None):
    """The estimate (`estimate_model_resources`) of the whole-model engine if it fits `board`
    (a BoardConfig or a board name); otherwise UserError, one line: each resource over, by how
    much, and what would fit: the largest smaller --lanes that fits, ROM LUT layers when they
    would save enough LUT4, or the smallest board variant of `boards` (default: boards/) that
    holds it."""
    from ..contract.boards import board_names, load_board

    board = load_board(board) if isinstance(board, str) else board
    device = device_resources(board)
    estimate = estimate_model_resources(program, lanes, registers=registers, engine=engine)
    over = _over(estimate, device, board)
    if not over:
        return estimate
    parts = [f"{RESOURCE_NAMES[k]} {need:,} estimated of {have:,}{' usable' if k == 'lut4' else ''} "
             f"(over by {need - have:,}, {100 * (need - have) / max(have, 1):.0f} %)" for k, (need, have) in over.items()]
    fixes = []
    smaller = _fitting_lanes(program, board, device, lanes, registers)
    if smaller:
        fixes.append(f"--lanes {smaller}")
    rom_saving = round(estimate["breakdown"]["lut4_mlp_lut_layers_raw"] * LUT4_CALIBRATION)
    if set(over) == {"lut4"} and estimate["lut4"] - rom_saving <= math.floor(device["lut4"] * board.fit_fraction):
        fixes.append(f"ROM LUT layers in the MLP engines (block RAM instead of up to {rom_saving:,} LUT4)")
    # the smallest variant first; of one device's names the longest, its own rather than an alias
    for name in sorted(boards if boards is not None else board_names(), key=lambda n: (load_board(n).luts, -len(n))):
        other = load_board(name)
        if other.luts > board.luts and other.luts in ECP5_DEVICES and not _over(estimate, ECP5_DEVICES[other.luts], other):
            fixes.append(f"a bigger device: --board {name} ({ECP5_DEVICES[other.luts]['device']})")
            break
    advice = "; it would fit with " + " or ".join(fixes) if fixes else "; no smaller --lanes or listed board holds it"
    raise UserError(f"the whole model ({lanes} lanes) does not fit {board.name} ({device['device']}): "
                    + ", ".join(parts) + advice)


def _fitting_lanes(program, board, device, lanes, registers):
    """The largest power-of-two lane count below `lanes` whose estimate fits, or None."""
    smaller = lanes // 2
    while smaller >= 2:
        if not _over(estimate_model_resources(program, smaller, registers=registers), device, board):
            return smaller
        smaller //= 2
    return None
