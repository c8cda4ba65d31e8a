# amaranth: UnusedElaboratable=no
"""The arithmetic units of the whole-model engine, each with exactly `contract.integer`'s semantics.

- `Divider`: floor(num / den) for num >= 0, den >= 1, one quotient bit per clock (restoring).
- `IntegerSqrt`: floor(sqrt(n)), two bits of n per clock (digit by digit). The golden model
  states its square root as Newton steps, which reach floor(sqrt(n)) exactly for every n it
  is given (contract.integer.isqrt); any exact method computes the same integer.
- `PostOp`: everything after an accumulator: gain, bias, the dyadic requantization with round
  half up, saturation, the residual add, the GELU table; a fixed-latency pipeline.

Sequential units take `start` for one clock with their operands valid in that clock and hold
`busy` until the result is on their output (`latency` clocks later, exactly). No torch.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import integer as I
from .model_program import ADD, GELU, LOGIT, RAW


class Divider(wiring.Component):
    """q = numerator // den for a constant numerator < 2**num_bits and 1 <= den < 2**den_bits,
    in `num_bits` clocks.

    Restoring division: one quotient bit per clock, from the top; the numerator's next bit is
    read from the constant by the step counter into a register one clock ahead (a register
    shifting a constant would make Yosys discover its constant bits one optimisation round
    at a time; a lookup in the step would lengthen the subtraction's path). `busy` is high from
    the clock after `start` for `latency` clocks; `q` holds the quotient from then until the
    next start."""

    def __init__(self, numerator, den_bits):
        self.numerator, self.den_bits = numerator, den_bits
        self.num_bits = max(numerator.bit_length(), 1)
        self.latency = self.num_bits
        super().__init__({"start": In(1), "den": In(den_bits), "busy": Out(1), "q": Out(self.num_bits)})

    def elaborate(self, platform):
        m = Module()
        rem = Signal(self.den_bits + 1)
        den = Signal(self.den_bits)
        left = Signal(range(self.num_bits + 1))
        trial = Signal(self.den_bits + 2)
        numerator = Const(self.numerator, self.num_bits + 1)  # a 0 above: the bit after the last
        bit = Signal()
        m.d.comb += [trial.eq(Cat(bit, rem) - den), self.busy.eq(left != 0)]
        with m.If(self.start):
            m.d.sync += [rem.eq(0), den.eq(self.den), left.eq(self.num_bits), self.q.eq(0),
                         bit.eq(numerator[self.num_bits - 1])]
        with m.Elif(left != 0):
            m.d.sync += [left.eq(left - 1), bit.eq(numerator.bit_select((left - 2)[:len(left)], 1))]
            with m.If(trial[-1]):  # negative: keep the remainder, quotient bit 0
                m.d.sync += [rem.eq(Cat(bit, rem)), self.q.eq(self.q << 1)]
            with m.Else():
                m.d.sync += [rem.eq(trial), self.q.eq(Cat(1, self.q))]
        return m


class IntegerSqrt(wiring.Component):
    """root = floor(sqrt(n)) for 0 <= n < 2**bits (bits even), in bits/2 clocks, digit by digit."""

    def __init__(self, bits):
        bits += bits & 1
        self.bits, self.latency = bits, bits // 2
        super().__init__({"start": In(1), "n": In(bits), "busy": Out(1), "root": Out(bits // 2)})

    def elaborate(self, platform):
        m = Module()
        half = self.bits // 2
        n = Signal(self.bits)
        rem = Signal(half + 2)      # rem <= 2 * root < 2**(half + 1)
        left = Signal(range(half + 1))
        pair = Signal(half + 4)
        trial = Signal(half + 5)    # its top bit: pair < 4 * root + 1
        m.d.comb += [pair.eq(Cat(n[-2:], rem)), trial.eq(pair - Cat(Const(1, 2), self.root)),
                     self.busy.eq(left != 0)]
        with m.If(self.start):
            m.d.sync += [n.eq(self.n), rem.eq(0), self.root.eq(0), left.eq(half)]
        with m.Elif(left != 0):
            m.d.sync += [n.eq(n << 2), left.eq(left - 1)]
            with m.If(trial[-1]):
                m.d.sync += [rem.eq(pair), self.root.eq(self.root << 1)]
            with m.Else():
                m.d.sync += [rem.eq(trial), self.root.eq(Cat(1, self.root))]
        return m


def rshift_round(value, shift):
    """round(value / 2**shift), ties toward +inf: (value + 2**(shift-1)) >> shift (shift 0: value)."""
    shift = Value.cast(shift)
    half = Mux(shift == 0, 0, Const(1, len(value) + 1) << (shift - 1)[:len(shift)])
    return (value + half) >> shift


def clamp(value, bits, max_bits):
    """value clamped to the signed `bits`-bit range, `bits` a Signal (<= max_bits)."""
    if isinstance(bits, int):
        hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    else:
        top = (Const(1, max_bits + 1) << (bits - 1)[:len(bits)])[:max_bits + 1]
        hi, lo = top - 1, -top
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def saturate_bits(value, bits):
    """A signed `value` clamped to the signed `bits`-bit range by a check of its top bits (no
    comparator: the bits above bits-1 all equal the sign exactly when it is in range)."""
    value = Value.cast(value)
    if len(value) <= bits:
        return value.as_signed()
    top = value[bits - 1:]
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    return Mux(top.all() | ~top.any(), value[:bits].as_signed(), Mux(value[-1], lo, hi))


def later(m, value, clocks, name):
    """`value` delayed by `clocks` registers (0: the value itself)."""
    for k in range(clocks):
        reg = Signal.like(value, name=f"{name}_d{k + 1}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def stages(m, value, clocks, name):
    """Every stage of a delay line: [value, value 1 clock later, ..., `clocks` later] (a
    pipeline's valid bits, whose `any()` says something is still inside)."""
    out = [value]
    for k in range(clocks):
        out.append(later(m, out[-1], 1, f"{name}{k}"))
    return out


def times_constant(value, k):
    """`value` (unsigned) * `k` (a non-negative integer constant) as a sum of shifted copies
    of `value`, one per set bit of k, so that Yosys builds adders in fabric and not a
    MULT18X18D far from the logic around it: the engine's address arithmetic (a DSP's routing
    both ways cost 9-10 ns on the ECP5-85F, the whole-model top's critical path;
    docs/results.md). The shifts are concatenations: Amaranth writes `value << 0` as a `$shl`
    by a zero-width amount, on which Yosys 0.55's opt_expr asserts."""
    value = Value.cast(value)
    assert not value.shape().signed, "times_constant is for unsigned (address) values"
    terms = [Cat(Const(0, i), value) if i else value for i in range(k.bit_length()) if k >> i & 1]
    total = terms[0] if terms else Const(0, 1)
    for t in terms[1:]:
        total = total + t
    return total


PIECE = 17  # an operand piece: 17 bits zero-extended (or the top one signed) fit a MULT18X18D's 18


def _pieces(value):
    """(shift, 18-bit signed piece) of `value`, least significant first: value = sum piece << shift."""
    value = Value.cast(value)
    signed_, width = value.shape().signed, len(value)
    if width <= (18 if signed_ else PIECE):
        return [(0, value.as_signed() if signed_ else Cat(value, Const(0, 1)).as_signed())]
    out = []
    for lo in range(0, width, PIECE):
        piece = value[lo:min(lo + PIECE, width)]
        top = lo + PIECE >= width
        out.append((lo, piece.as_signed() if top and signed_ else Cat(piece, Const(0, 1)).as_signed()))
    return out


def product_latency(a_shape, b_shape):
    """The clocks `pipelined_product` takes for operands of these shapes."""
    terms = len(_pieces(Signal(a_shape))) * len(_pieces(Signal(b_shape)))
    return 3 + (terms - 1).bit_length()


def shift_latency(amount_bits, step_bits=3):
    """The clocks `pipelined_shift` takes for an amount of `amount_bits` bits."""
    return -(-amount_bits // step_bits)


def pipelined_product(m, a, b, name):
    """(a * b, latency): the product of two Values (signed or unsigned) as a Signal `latency`
    clocks after a and b. The 18x18 partial products (one MULT18X18D each) are registered,
    then summed by a tree of registered two-input adds, so no path holds more than one
    multiplier or one adder (Yosys would otherwise build one long multiplier-and-adder path).
    Each multiplier has a register on its inputs and a second one on its product besides:
    the MULT18X18D's own 3.9 ns leave no room for a long route on either side, and nextpnr
    places such a register next to the DSP."""
    a, b = Value.cast(a), Value.cast(b)
    width = len(a) + len(b) + 2  # holds any partial sum of the pieces' products
    a_regs = [(sa, later(m, pa, 1, f"{name}_a{k}")) for k, (sa, pa) in enumerate(_pieces(a))]
    b_regs = [(sb, later(m, pb, 1, f"{name}_b{k}")) for k, (sb, pb) in enumerate(_pieces(b))]
    terms = []
    for sa, pa in a_regs:
        for sb, pb in b_regs:
            p = Signal(signed(36), name=f"{name}_pp{len(terms)}")
            m.d.sync += p.eq(pa * pb)
            terms.append((sa + sb, later(m, p, 1, f"{name}_pp{len(terms)}")))
    latency, level, expected = 3, 0, product_latency(a.shape(), b.shape())
    while len(terms) > 1:
        terms.sort(key=lambda t: t[0])
        nxt = []
        for k in range(0, len(terms), 2):
            (s0, t0), rest = terms[k], terms[k + 1:k + 2]
            total = Signal(signed(width - s0), name=f"{name}_s{level}_{k // 2}")
            m.d.sync += total.eq(t0 + (rest[0][1] << (rest[0][0] - s0)) if rest else t0)
            nxt.append((s0, total))
        terms, latency, level = nxt, latency + 1, level + 1
    assert latency == expected
    return terms[0][1], latency


def pipelined_shift(m, value, amount, name, step_bits=3):
    """(value >> amount, latency): an arithmetic right shift by a per-value `amount`, `step_bits`
    bits of the amount per registered stage (the amount travels beside the value)."""
    value, amount = Value.cast(value), Value.cast(amount)
    latency = 0
    for lo in reversed(range(0, len(amount), step_bits)):
        part = amount[lo:lo + step_bits]
        shifted = Signal.like(value, name=f"{name}_sh{lo}")
        rest = Signal.like(amount, name=f"{name}_amt{lo}")
        m.d.sync += [shifted.eq(value >> (part << lo) if lo else value >> part), rest.eq(amount)]
        value, amount, latency = shifted, rest, latency + 1
    return value, latency


class BankedROM(wiring.Component):
    """A read-only memory of `init` (values of `shape`) split into banks of `bank_depth`
    entries, so that each bank is one block RAM deep and no multiplexer sits between a block
    RAM's output (5.8 ns of clock-to-out on the ECP5) and its first register: `data` is
    init[addr] `LATENCY` clocks after `addr` (the bank, its register, the bank multiplexer's
    register)."""

    LATENCY = 3

    def __init__(self, shape, init, bank_depth=512):
        assert bank_depth & (bank_depth - 1) == 0
        self.shape, self.init, self.bank_depth = shape, list(init), bank_depth
        super().__init__({"addr": In(range(max(len(self.init), 2))), "data": Out(shape)})

    def elaborate(self, platform):
        m = Module()
        low = self.bank_depth.bit_length() - 1
        banks = []
        for k, lo in enumerate(range(0, max(len(self.init), 1), self.bank_depth)):
            chunk = self.init[lo:lo + self.bank_depth]
            memory = m.submodules[f"bank{k}"] = Memory(shape=self.shape, depth=max(len(chunk), 1), init=chunk)
            port = memory.read_port()
            m.d.comb += port.addr.eq(self.addr[:low])
            banks.append(later(m, Value.cast(port.data), 1, f"bank{k}"))
        which = later(m, self.addr[low:], 2, "which")
        m.d.sync += self.data.eq(Array(banks)[which] if len(banks) > 1 else banks[0])
        return m


def param_layout():
    return data.StructLayout({"bias": signed(32), "m": unsigned(31), "s": unsigned(6), "g": signed(8)})


def post_latency(pre_bits):
    """PostOp's clocks from an input to its memory write (the stages of PostOp.elaborate):
    inputs, shifts, parameter read (5), pre * g, + bias, * m, >> s, saturate, round, + X, mode, table, out."""
    lg = product_latency(signed(pre_bits), signed(8))
    lm = product_latency(signed(32), unsigned(31))
    return 2 + BankedROM.LATENCY + lg + 1 + lm + shift_latency(6) + 2 + 4


class PostOp(wiring.Component):
    """Accumulator in, memory write out, `latency` clocks later, one value per clock:

        acc = (pre * g if use_g else pre) + bias          (g, bias, m, s: parameter entry
        y0  = round_half_up(acc * m / 2**s)                p_base + o + r * p_rstride)
        REQ: saturate(y0, bits)   ADD: saturate(X[word] + y0, 16)   RAW: acc
        GELU: gelu[g_base + saturate(y0, 8) + 128]          LOGIT: saturate(y0, 16)

    The destination word is d_base + (r >> d_rsh) * d_rmul + (o >> d_osh) * d_omul, its lane
    (r & d_rmask) | (o & d_omask). `busy` while any value is inside. Every stage holds at most
    one 18x18 multiplier, one adder or 3 bits of a shift (pipelined_product, pipelined_shift);
    round half up is floor((acc*m*2) >> s) halves plus its last bit, and y0 is saturated to
    18 bits first (exact: every later saturation is to 16 bits or fewer)."""

    Y_BITS = 18

    def __init__(self, ins_layout, params, gelu, pre_bits, row_bits, out_bits, word_bits):
        self.params, self.gelu, self.pre_bits = params, gelu, pre_bits
        self.latency = post_latency(pre_bits)
        super().__init__({
            "ins": In(ins_layout), "i_valid": In(1), "i_pre": In(signed(pre_bits)),
            "i_r": In(row_bits), "i_o": In(out_bits),
            "x_addr": Out(word_bits), "x_data": In(signed(16)),
            "w_valid": Out(1), "w_addr": Out(word_bits), "w_lane": Out(out_bits + 1), "w_data": Out(signed(40)),
            "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        ins = self.ins
        p_rd = m.submodules.params = BankedROM(param_layout(), [
            {"bias": b, "m": mm, "s": s, "g": g} for b, mm, s, g in self.params])
        grom = m.submodules.gelu = Memory(shape=signed(8), depth=len(self.gelu), init=self.gelu)
        g_rd = grom.read_port()
        # 1: inputs registered; 2: row/output shifts and the parameter row offset
        pre1, r1, o1 = (later(m, v, 1, n) for v, n in ((self.i_pre, "pre"), (self.i_r, "r"), (self.i_o, "o")))
        rs2, os2 = Signal.like(r1, name="rs2"), Signal.like(o1, name="os2")
        prow2 = Signal(len(r1) + len(ins.p_rstride), name="prow2")
        lane2 = Signal.like(self.w_lane, name="lane2")
        m.d.sync += [rs2.eq(r1 >> ins.d_rsh), os2.eq(o1 >> ins.d_osh), prow2.eq(r1 * ins.p_rstride),
                     lane2.eq((r1 & ins.d_rmask) | (o1 & ins.d_omask))]
        # 2: the parameter address (data in 5: BankedROM); the destination word's two products
        # (in 3), sum (in 4). A block RAM's output (5.8 ns clock-to-out) feeds a register only
        m.d.comb += p_rd.addr.eq(ins.p_base + later(m, o1, 1, "o") + prow2)
        wr3, wo3 = Signal(len(rs2) + len(ins.d_rmul)), Signal(len(os2) + len(ins.d_omul))
        word4 = Signal.like(self.x_addr, name="word4")
        m.d.sync += [wr3.eq(rs2 * ins.d_rmul), wo3.eq(os2 * ins.d_omul), word4.eq(ins.d_base + wr3 + wo3)]
        pre3, param = later(m, pre1, 1 + BankedROM.LATENCY, "pre"), p_rd.data
        # 5: pre * g; then acc = (pre * g or pre) + bias
        pg, lg = pipelined_product(m, pre3, param.g, "pg")
        a = 2 + BankedROM.LATENCY + lg
        acc = Signal(signed(32), name="acc")  # |acc| < 2**31 (contract.integer.requantize)
        m.d.sync += acc.eq(Mux(ins.use_g, pg, later(m, pre3, lg, "pre")) + later(m, param.bias, lg, "bias"))
        # a + 1: acc * m; then (2 * acc * m) >> s
        prod, lm = pipelined_product(m, acc, later(m, param.m, lg + 1, "m"), "am")
        p = a + 1 + lm
        shifted, ls = pipelined_shift(m, Cat(Const(0, 1), prod).as_signed(), later(m, param.s, p - 2 - BankedROM.LATENCY, "s"), "y")
        # y0 = floor + its round bit, saturated to Y_BITS + 1 bits on the way
        fs, half = Signal(signed(self.Y_BITS), name="fs"), Signal(name="half")
        y0 = Signal(signed(self.Y_BITS + 1), name="y0")
        m.d.sync += [fs.eq(saturate_bits(shifted[1:].as_signed(), self.Y_BITS)), half.eq(shifted[0]), y0.eq(fs + half)]
        y = p + ls + 2  # y0's stage
        # y: the mode; X[word] was read two clocks before (and registered), the GELU table is read
        # here (its value registered in y + 2, beside the result)
        words = later(m, word4, y - 4 - 2, "word")
        m.d.comb += self.x_addr.eq(words)
        x_reg = later(m, self.x_data, 1, "x")
        y1, yx1 = Signal.like(y0, name="y1"), Signal(signed(self.Y_BITS + 2), name="yx1")
        m.d.sync += [y1.eq(y0), yx1.eq(y0 + x_reg)]
        # y + 1: the mode's saturation. The instruction's bounds are registered (the
        # instruction is steady long before its first value gets here)
        hi, mask = Signal(16, name="sat_hi"), Signal(self.Y_BITS + 1, name="sat_mask")
        g_at = Signal(range(len(self.gelu) + 129), name="g_at")
        m.d.sync += [hi.eq((Const(1, 17) << (ins.bits - 1)[:5]) - 1), mask.eq(~hi), g_at.eq(ins.g_base + 128)]
        over = y1 & mask
        yres = Signal(signed(40), name="yres")
        raw = later(m, acc, y + 1 - (a + 1), "acc")
        with m.Switch(ins.mode):
            with m.Case(ADD):
                m.d.sync += yres.eq(saturate_bits(yx1, 16))
            with m.Case(RAW):
                m.d.sync += yres.eq(raw)
            with m.Case(LOGIT):
                m.d.sync += yres.eq(saturate_bits(y1, 16))
            with m.Default():
                m.d.sync += yres.eq(Mux((over == 0) | (over == mask), y1, Mux(y1[-1], ~hi.as_signed(), hi)))
        m.d.comb += g_rd.addr.eq(g_at + saturate_bits(y1, 8))
        # y + 2: the table's value registered beside the result; both to the outputs in y + 4
        assert self.latency == y + 4
        inside = stages(m, self.i_valid, self.latency, "v")  # the valid bit of each stage
        valid = inside[-1]
        m.d.sync += [self.w_data.eq(Mux(ins.mode == GELU, later(m, g_rd.data, 1, "gelu"), later(m, yres, 1, "yres"))),
                     self.w_addr.eq(later(m, word4, y + 3 - 4, "word")),
                     self.w_lane.eq(later(m, lane2, y + 3 - 2, "lane"))]
        m.d.comb += [self.w_valid.eq(valid), self.busy.eq(Cat(inside[1:]).any())]
        return m


class LayerNormUnit(wiring.Component):
    """contract.integer.layernorm's statistics and normalisation for `rows` rows of X (d wide).

    Per row: pass 1 reads x and sums S = sum x and Q = sum x**2; sigma = max(1, isqrt(d*Q - S*S))
    (= isqrt(V // d) of the golden model: V = sum (d*x - S)**2 = d * (d*Q - S*S)); r = 2**40 //
    sigma; pass 2 reads x again (its own read port) and sends z = round_half_up((d*x - S) * r /
    2**30) to the post-op, which applies gamma, beta and the requantization.

    The three steps run as a pipeline of rows in beats of `beat` clocks: in beat b, pass 1 reads
    row b, the square root and the division work on row b-1, pass 2 reads row b-2; S and r move
    one step on at the end of each beat. So `rows` rows take rows + 2 beats (the last one ends
    with pass 2's last read) and `out_latency` clocks for the last z. Every memory output is
    registered first, products are `pipelined_product`s."""

    def __init__(self, ins_layout, d, row_bits, word_bits, z_bits):
        self.d, self.z_bits = d, z_bits
        self.q_bits = 2 * 15 + d.bit_length() + 1            # Q <= d * 2**30
        self.s_bits = 16 + d.bit_length() + 1
        self.sqrt = IntegerSqrt(self.q_bits + d.bit_length())  # n = d*Q - S*S <= d*Q
        self.div = Divider(1 << I.LN_RECIP_BITS, self.sqrt.bits // 2)
        self.ss_latency = product_latency(signed(self.s_bits), signed(self.s_bits))
        self.settle = 3 + self.ss_latency  # from the clock after the last pass-1 read to n's being ready
        # pass-2 read to o_valid: read, register, d*x - S, the product dv * r, the rounding
        self.out_latency = 3 + product_latency(signed(self.s_bits + 2), unsigned(I.LN_RECIP_BITS + 1)) + 1
        # the beat: pass 1's reads and n's settling; the root (start, steps, its clock) and the
        # division (steps, its clock) before the quotient is taken. Pass 2 reads S and r up to
        # 3 clocks after its last read, which is shorter than pass 1's settling
        self.beat = max(d + self.settle, self.sqrt.latency + self.div.latency + 3)
        super().__init__({"ins": In(ins_layout), "start": In(1), "busy": Out(1),
                          "x_addr": Out(word_bits), "x_data": In(signed(16)),
                          "x2_addr": Out(word_bits), "x2_data": In(signed(16)),
                          "o_valid": Out(1), "o_pre": Out(signed(z_bits)), "o_r": Out(row_bits), "o_o": Out(range(d))})

    def last_read(self, rows):
        """Clocks from `start` to pass 2's last read of `rows` rows (its z is `out_latency` later)."""
        return (rows + 1) * self.beat + self.d

    def elaborate(self, platform):
        m = Module()
        d, L = self.d, self.beat
        m.submodules.sqrt, m.submodules.div = self.sqrt, self.div
        # the beat (b) and its clock (k); the rows of pass 1 (b) and pass 2 (b - 2) as addresses
        b, k = Signal(range(2 ** len(self.o_r) + 2)), Signal(range(L))
        base1, base2, r2row = Signal.like(self.x_addr), Signal.like(self.x_addr), Signal.like(self.o_r)
        running = Signal()
        S, Q = Signal(signed(self.s_bits)), Signal(self.q_bits)
        S_next, S2, rr = Signal.like(S), Signal.like(S), Signal(I.LN_RECIP_BITS + 1)  # rows b-1, b-2
        reading = running & (k < d)
        issue1 = reading & (b < self.ins.rows)
        issue2 = reading & (b >= 2)
        m.d.comb += [self.x_addr.eq(base1 + k), self.x2_addr.eq(base2 + k)]
        # pass 1. 1: x out of the memory; 2: registered, S; x*x registered in 2 and summed into Q in 3
        x2 = later(m, self.x_data, 1, "x")
        acc2, first2 = later(m, issue1, 2, "acc"), later(m, k == 0, 2, "first")
        sq3 = Signal(32, name="sq3")
        acc3, first3 = later(m, acc2, 1, "acc"), later(m, first2, 1, "first")
        m.d.sync += sq3.eq(x2 * x2)
        with m.If(acc2):
            m.d.sync += S.eq(Mux(first2, 0, S) + x2)
        with m.If(acc3):
            m.d.sync += Q.eq(Mux(first3, 0, Q) + sq3)
        ss, lss = pipelined_product(m, S, S, "ss")
        assert lss == self.ss_latency
        n_reg = Signal(self.sqrt.bits, name="n")
        m.d.sync += n_reg.eq(Q * d - ss)
        # the statistics of row b-1: n (settled in the beat before) into the root in clock 0,
        # the root into the division as soon as it is out
        stats = running & (b >= 1) & (b <= self.ins.rows)
        m.d.comb += [self.sqrt.start.eq(stats & (k == 0)), self.sqrt.n.eq(n_reg),
                     self.div.start.eq(stats & (k == self.sqrt.latency + 1)),
                     self.div.den.eq(Mux(self.sqrt.root == 0, 1, self.sqrt.root))]
        # pass 2: dv = d*x - S in 3; prod = dv * rr; z = round(prod / 2**30) one clock later
        y2 = later(m, self.x2_data, 1, "x2")
        dv = Signal(signed(self.s_bits + 2))
        m.d.sync += dv.eq(y2 * d - S2)
        prod, lp = pipelined_product(m, dv, rr, "dvr")
        t = prod[I.LN_RECIP_BITS - I.LN_FRAC_BITS - 1:][:self.z_bits + 1].as_signed()  # |z| < 2**(z_bits-1)
        m.d.sync += self.o_pre.eq((t >> 1) + t[0])
        assert self.out_latency == 3 + lp + 1
        in_flight = stages(m, issue2, self.out_latency - 1, "norm")
        m.d.sync += [self.o_valid.eq(in_flight[-1]), self.o_o.eq(later(m, k, 3 + lp, "c")),
                     self.o_r.eq(later(m, r2row, 3 + lp, "r"))]
        with m.If(self.start):
            m.d.sync += [running.eq(1), b.eq(0), k.eq(0), base1.eq(0), base2.eq(0), r2row.eq(0)]
        with m.Elif(running):
            m.d.sync += k.eq(k + 1)
            with m.If((b == self.ins.rows + 1) & (k == d - 1)):  # pass 2's last read
                m.d.sync += running.eq(0)
            with m.If(k == L - 1):  # the beat's end: every row one step on
                m.d.sync += [k.eq(0), b.eq(b + 1), S_next.eq(S), S2.eq(S_next), rr.eq(self.div.q)]
                with m.If(b + 1 < self.ins.rows):  # (no read past the last row, even while pass 1 idles)
                    m.d.sync += base1.eq(base1 + d)
                with m.If(b >= 2):
                    m.d.sync += [base2.eq(base2 + d), r2row.eq(r2row + 1)]
        m.d.comb += self.busy.eq(running | Cat(in_flight[1:]).any() | self.o_valid)
        return m


class SoftmaxUnit(wiring.Component):
    """contract.integer.softmax of `rows` rows of T scores (SC row r at base + r*T, its
    maximum `sc_max` read at `row` = buf*T + r) into P (row r at base + r*T), base = buf*T*T.
    The instruction's fields are latched at `start`, so the sequencer may go on to other
    instructions while the unit runs.

    Pass 1 per score: delta = min(max - s, DELTA_MAX); u = min(round(delta * m / 2**s'),
    EXP_U_MAX); e = EXP2_TABLE[u & 63] >> (u >> 6), kept in E, summed into Z. Then R = 255 *
    2**30 // Z (the row's one division), and pass 2: p = (e * R + 2**29) >> 30. Both passes
    are pipelines with one multiplier, adder or 3-bit shift step per stage: `pipe1` clocks
    from a score's read to its e's write, `pipe2` from an e's read to its p's write.

    The three steps run as a pipeline of rows in beats of `beat` clocks: in beat b, pass 1
    reads row b, the division works on row b-1, pass 2 reads row b-2 (E holds three rows, one
    per step); Z and R move one step on at the end of each beat. So `rows` rows take rows + 2
    beats (the last one ends with pass 2's last read) and `pipe2` clocks for the last p.
    `sc_max` must hold row `row`'s maximum from two clocks after `row` changes."""

    def __init__(self, ins_layout, T, score_bits):
        self.T, self.score_bits = T, score_bits
        self.z_bits = (T << I.EXP_ONE_BITS).bit_length()
        self.div = Divider(I.PROB_MAX << I.PROB_RECIP_BITS, self.z_bits)
        # Z >= 2**15 (the row maximum's e), so R < 255 * 2**15
        self.r_bits = ((I.PROB_MAX << I.PROB_RECIP_BITS) >> I.EXP_ONE_BITS).bit_length()
        self.e_bits = I.EXP_ONE_BITS + 1
        # delta = max - s < 2**score_bits; DELTA_MAX matters only above 31 bits
        self.delta_bits = min(score_bits, 31)
        layout = data.Layout.cast(ins_layout)
        m_bits, s_bits = layout["imm_m"].shape.width, layout["imm_s"].shape.width
        self.pipe1 = 3 + product_latency(unsigned(self.delta_bits), unsigned(m_bits)) + shift_latency(s_bits) + 4
        self.pipe2 = 2 + product_latency(unsigned(self.e_bits), unsigned(self.r_bits)) + 1
        # the beat: pass 1's reads and its last e into Z; the division (start, steps, its
        # clock) before the quotient is taken; pass 2 reads R up to 3 clocks after its last read
        self.beat = max(T + self.pipe1, self.div.latency + 2, T + 3)
        super().__init__({"ins": In(ins_layout), "start": In(1), "busy": Out(1), "row": Out(range(2 * T)),
                          "sc_addr": Out(range(2 * T * T)), "sc_data": In(signed(score_bits)),
                          "sc_max": In(signed(score_bits)), "p_we": Out(1), "p_addr": Out(range(2 * T * T)),
                          "p_data": Out(8)})

    def last_read(self, rows):
        """Clocks from `start` to pass 2's last read of `rows` rows (its p is written `pipe2` later)."""
        return (rows + 1) * self.beat + self.T

    def elaborate(self, platform):
        m = Module()
        T, L = self.T, self.beat
        m.submodules.div = self.div
        ins = Signal.like(self.ins, name="latched")  # the instruction's fields, latched at start
        with m.If(self.start):
            m.d.sync += ins.eq(self.ins)
        exp_rom = m.submodules.exp2 = Memory(shape=unsigned(self.e_bits), depth=len(I.EXP2_TABLE),
                                             init=[int(v) for v in I.EXP2_TABLE])
        e_mem = m.submodules.e = Memory(shape=unsigned(self.e_bits), depth=3 * T, init=[])
        x_rd, e_wr, e_rd = exp_rom.read_port(), e_mem.write_port(), e_mem.read_port()
        # the beat (b) and its clock (j, the score in the row while j < T); per pass, its row's
        # first score (r * T) and E row ((r mod 3) * T)
        b, j = Signal(range(T + 3)), Signal(range(L))
        base1, base2 = Signal(range(2 * T * T)), Signal(range(2 * T * T))
        e1, e2 = Signal(range(3 * T)), Signal(range(3 * T))
        running = Signal()
        reading = running & (j < T)
        issue1, issue2 = reading & (b < ins.rows), reading & (b >= 2)
        m.d.comb += [self.sc_addr.eq(base1 + j), e_rd.addr.eq(e2 + j)]
        # pass 1. 1: the score out of SC; 2: registered; 3: delta
        sc2 = later(m, self.sc_data, 1, "sc")
        delta = Signal(self.delta_bits)
        diff = self.sc_max - sc2
        m.d.sync += delta.eq(Mux(diff > I.DELTA_MAX, I.DELTA_MAX, diff) if self.score_bits > 31 else diff)
        prod, lp = pipelined_product(m, delta, ins.imm_m, "dm")
        shifted, ls = pipelined_shift(m, Cat(Const(0, 1), prod).as_signed(), ins.imm_s, "u")
        # u = min(floor + round bit, EXP_U_MAX): floor >= EXP_U_MAX already gives EXP_U_MAX
        floor, u_bits = shifted[1:], I.EXP_U_MAX.bit_length() - 1
        u = Signal(range(I.EXP_U_MAX + 1))
        m.d.sync += u.eq(Mux(floor[u_bits:].any(), I.EXP_U_MAX, floor[:u_bits] + shifted[0]))
        m.d.comb += x_rd.addr.eq(u[:I.EXP_FRAC_BITS])  # the table's value registered, beside u >> 6
        shift = later(m, (u >> I.EXP_FRAC_BITS)[:5], 2, "shift")
        e = Signal(self.e_bits)
        m.d.sync += e.eq(later(m, x_rd.data, 1, "table") >> shift)
        assert 3 + lp + ls + 4 == self.pipe1
        v1, j1 = later(m, issue1, self.pipe1, "v"), later(m, j, self.pipe1, "j")
        m.d.comb += [e_wr.addr.eq(later(m, e1 + j, self.pipe1, "ej")), e_wr.data.eq(e), e_wr.en.eq(v1)]
        Z = Signal(self.z_bits)
        with m.If(v1):
            m.d.sync += Z.eq(Mux(j1 == 0, 0, Z) + e)
        # the division of row b-1: Z (complete since the beat before) in clock 0
        m.d.comb += [self.div.start.eq(running & (b >= 1) & (b <= ins.rows) & (j == 0)), self.div.den.eq(Z)]
        R = Signal(self.r_bits)
        # pass 2. 1: e out of E; 2: registered; then e * R; p = (e * R + 2**29) >> 30 registered
        er = later(m, e_rd.data, 1, "e")
        pr, lq = pipelined_product(m, er, R, "er")
        t = pr[I.PROB_RECIP_BITS - 1:][:10]  # p <= 255
        p = Signal(8)
        m.d.sync += p.eq((t >> 1) + t[0])
        assert 2 + lq + 1 == self.pipe2
        in_flight = stages(m, issue2, self.pipe2, "w")
        m.d.comb += [self.p_we.eq(in_flight[-1]), self.p_addr.eq(later(m, base2 + j, self.pipe2, "pj")),
                     self.p_data.eq(p)]
        next_e = lambda v: Mux(v == 2 * T, 0, v + T)
        with m.If(self.start):
            first = Mux(self.ins.buf, T * T, 0)
            m.d.sync += [running.eq(1), b.eq(0), j.eq(0), base1.eq(first), base2.eq(first), e1.eq(0), e2.eq(0),
                         self.row.eq(Mux(self.ins.buf, T, 0))]
        with m.Elif(running):
            m.d.sync += j.eq(j + 1)
            with m.If((b == ins.rows + 1) & (j == T - 1)):  # pass 2's last read
                m.d.sync += running.eq(0)
            with m.If(j == L - 1):  # the beat's end: every row one step on
                m.d.sync += [j.eq(0), b.eq(b + 1), R.eq(self.div.q), e1.eq(next_e(e1))]
                with m.If(b + 1 < ins.rows):  # (no read past the last row, even while pass 1 idles)
                    m.d.sync += [base1.eq(base1 + T), self.row.eq(self.row + 1)]
                with m.If(b >= 2):
                    m.d.sync += [base2.eq(base2 + T), e2.eq(next_e(e2))]
        m.d.comb += self.busy.eq(running | Cat(in_flight[1:]).any())
        return m
