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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import integer as I
from .model_program import ADD, GELU, LOGIT, RAW


class Divider(wiring.Component):
    """q = numerator // den for a constant numerator < 2**num_bits and 1 <= den < 2**den_bits,
    in `num_bits` clocks.

    Restoring division: one quotient bit per clock, from the top; the numerator's bits are
    read from the constant by the step counter (a register shifting a constant would make
    Yosys discover its constant bits one optimisation round at a time). `busy` is high from
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
        bit = Const(self.numerator, self.num_bits).bit_select((left - 1)[:len(left)], 1)
        m.d.comb += [trial.eq(Cat(bit, rem) - den), self.busy.eq(left != 0)]
        with m.If(self.start):
            m.d.sync += [rem.eq(0), den.eq(self.den), left.eq(self.num_bits), self.q.eq(0)]
        with m.Elif(left != 0):
            m.d.sync += left.eq(left - 1)
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


def param_layout():
    return data.StructLayout({"bias": signed(32), "m": unsigned(31), "s": unsigned(6), "g": signed(8)})


class PostOp(wiring.Component):
    """Accumulator in, memory write out, `POST_LATENCY` clocks later, one value per clock:

        acc = (pre * g if use_g else pre) + bias          (g, bias, m, s: parameter entry
        y0  = round_half_up(acc * m / 2**s)                p_base + o + r * p_rstride)
        REQ: saturate(y0, bits)   ADD: saturate(X[word] + y0, 16)   RAW: acc
        GELU: gelu[g_base + saturate(y0, 8) + 128]          LOGIT: saturate(y0, 16)

    The destination word is d_base + (r >> d_rsh) * d_rmul + (o >> d_osh) * d_omul, its lane
    (r & d_rmask) | (o & d_omask). `busy` while any value is inside."""

    def __init__(self, ins_layout, params, gelu, pre_bits, row_bits, out_bits, word_bits):
        self.params, self.gelu, self.pre_bits = params, gelu, pre_bits
        super().__init__({
            "ins": In(ins_layout), "i_valid": In(1), "i_pre": In(signed(pre_bits)),
            "i_r": In(row_bits), "i_o": In(out_bits),
            "x_addr": Out(word_bits), "x_data": In(signed(16)),
            "w_valid": Out(1), "w_addr": Out(word_bits), "w_lane": Out(out_bits + 1), "w_data": Out(signed(40)),
            "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        ins = self.ins
        prom = m.submodules.params = Memory(shape=param_layout(), depth=len(self.params), init=[
            {"bias": b, "m": mm, "s": s, "g": g} for b, mm, s, g in self.params])
        grom = m.submodules.gelu = Memory(shape=signed(8), depth=len(self.gelu), init=self.gelu)
        p_rd, g_rd = prom.read_port(), grom.read_port()
        valid = [Signal(name=f"v{i}") for i in range(7)]
        m.d.comb += valid[0].eq(self.i_valid)
        m.d.sync += [valid[i + 1].eq(valid[i]) for i in range(6)]

        def carry(value, stages, name):
            """value delayed by 1..stages clocks: [value, d1, d2, ...]."""
            out = [value]
            for i in range(stages):
                reg = Signal.like(value, name=f"{name}{i + 1}")
                m.d.sync += reg.eq(out[-1])
                out.append(reg)
            return out

        word = ins.d_base + ((self.i_r >> ins.d_rsh) * ins.d_rmul) + ((self.i_o >> ins.d_osh) * ins.d_omul)
        words = carry(Signal.like(self.x_addr, init=0), 6, "word")
        m.d.comb += [words[0].eq(word), p_rd.addr.eq(ins.p_base + self.i_o + self.i_r * ins.p_rstride)]
        lanes = carry((self.i_r & ins.d_rmask) | (self.i_o & ins.d_omask), 6, "lane")
        pre1 = carry(self.i_pre, 1, "pre")[1]
        param = p_rd.data
        pre2 = Signal(signed(self.pre_bits + 9))
        bias2, m2, s2 = Signal(signed(32)), Signal(31), Signal(6)
        m.d.sync += [pre2.eq(Mux(ins.use_g, pre1 * param.g, pre1)), bias2.eq(param.bias), m2.eq(param.m), s2.eq(param.s)]
        acc3 = Signal(signed(self.pre_bits + 10))
        m3, s3 = carry(m2, 1, "m")[1], carry(s2, 1, "s")[1]
        m.d.sync += acc3.eq(pre2 + bias2)
        prod4 = Signal(signed(self.pre_bits + 42))
        s4 = carry(s3, 1, "s_")[1]
        m.d.sync += prod4.eq(acc3 * m3)
        acc5 = carry(acc3, 2, "acc")[2]
        y05 = Signal(signed(self.pre_bits + 42))
        m.d.sync += y05.eq(rshift_round(prod4, s4))
        m.d.comb += self.x_addr.eq(words[4])
        y6 = Signal(signed(40))
        with m.Switch(ins.mode):
            with m.Case(ADD):
                m.d.sync += y6.eq(clamp(y05 + self.x_data, 16, 16))
            with m.Case(RAW):
                m.d.sync += y6.eq(acc5)
            with m.Case(LOGIT):
                m.d.sync += y6.eq(clamp(y05, 16, 16))
            with m.Default():
                m.d.sync += y6.eq(clamp(y05, ins.bits, 16))
        m.d.comb += g_rd.addr.eq(ins.g_base + clamp(y05, 8, 8) + 128)
        m.d.comb += [self.w_valid.eq(valid[6]), self.w_addr.eq(words[6]), self.w_lane.eq(lanes[6]),
                     self.w_data.eq(Mux(ins.mode == GELU, g_rd.data, y6)),
                     self.busy.eq(Cat(valid[1:]).any())]
        return m


class LayerNormUnit(wiring.Component):
    """contract.integer.layernorm's statistics and normalisation for `rows` rows of X (d wide).

    Per row: pass 1 reads x and sums S = sum x and Q = sum x**2; sigma = max(1, isqrt(d*Q - S*S))
    (= isqrt(V // d) of the golden model: V = sum (d*x - S)**2 = d * (d*Q - S*S)); r = 2**40 //
    sigma; pass 2 reads x again and sends z = round_half_up((d*x - S) * r / 2**30) to the
    post-op, which applies gamma, beta and the requantization. Clocks per row: 2d + 4 + d's
    square-root and division latencies (`row_cycles`)."""

    def __init__(self, ins_layout, d, row_bits, word_bits, z_bits):
        self.d = d
        self.q_bits = 2 * 15 + d.bit_length() + 1            # Q <= d * 2**30
        self.sqrt = IntegerSqrt(self.q_bits + d.bit_length())  # n = d*Q - S*S <= d*Q
        self.div = Divider(1 << I.LN_RECIP_BITS, self.sqrt.bits // 2)
        self.row_cycles = 2 * d + 4 + self.sqrt.latency + self.div.latency
        self.tail = 3
        super().__init__({"ins": In(ins_layout), "start": In(1), "busy": Out(1),
                          "x_addr": Out(word_bits), "x_data": In(signed(16)),
                          "o_valid": Out(1), "o_pre": Out(signed(z_bits)), "o_r": Out(row_bits), "o_o": Out(range(d))})

    def elaborate(self, platform):
        m = Module()
        d = self.d
        m.submodules.sqrt, m.submodules.div = self.sqrt, self.div
        r, c = Signal.like(self.o_r), Signal(range(d))
        S, Q = Signal(signed(16 + d.bit_length() + 1)), Signal(self.q_bits)
        rr = Signal(I.LN_RECIP_BITS + 1)
        acc_v = Signal()  # pass 1: x_data is a value to add (the row's first: acc_first)
        acc_first = Signal()
        issue2 = Signal()  # pass 2: x_data is a value to normalise
        c1, r1 = Signal.like(c), Signal.like(r)
        m.d.comb += self.x_addr.eq(r * d + c)
        m.d.sync += [acc_v.eq(0), acc_first.eq(0), issue2.eq(0), c1.eq(c), r1.eq(r)]
        with m.If(acc_v):  # S and Q change only here: pass 2 of the row before has read them
            m.d.sync += [S.eq(Mux(acc_first, 0, S) + self.x_data),
                         Q.eq(Mux(acc_first, 0, Q) + self.x_data * self.x_data)]
        # pass 2 pipeline: dv = d*x - S; prod = dv * rr; z = round(prod / 2**30)
        dv = Signal(signed(len(S) + 2))
        prod = Signal(signed(len(dv) + len(rr) + 1))
        v2, v3 = Signal(), Signal()
        c2, c3, r2, r3 = Signal.like(c), Signal.like(c), Signal.like(r), Signal.like(r)
        m.d.sync += [dv.eq(self.x_data * d - S), v2.eq(issue2), c2.eq(c1), r2.eq(r1),
                     prod.eq(dv * rr), v3.eq(v2), c3.eq(c2), r3.eq(r2),
                     self.o_pre.eq(rshift_round(prod, I.LN_RECIP_BITS - I.LN_FRAC_BITS)),
                     self.o_valid.eq(v3), self.o_o.eq(c3), self.o_r.eq(r3)]
        tail = Signal(range(self.tail + 1))
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [r.eq(0), c.eq(0)]
                    m.next = "PASS1"
            with m.State("PASS1"):
                m.d.sync += [acc_v.eq(1), acc_first.eq(c == 0), c.eq(Mux(c == d - 1, 0, c + 1))]
                with m.If(c == d - 1):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.next = "NORM"
            with m.State("NORM"):
                m.d.comb += [self.sqrt.start.eq(1), self.sqrt.n.eq(Q * d - S * S)]
                m.next = "SQRT"
            with m.State("SQRT"):
                with m.If(~self.sqrt.busy):
                    m.d.comb += [self.div.start.eq(1),
                                 self.div.den.eq(Mux(self.sqrt.root == 0, 1, self.sqrt.root))]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(~self.div.busy):
                    m.d.sync += rr.eq(self.div.q)
                    m.next = "PASS2"
            with m.State("PASS2"):
                m.d.sync += [issue2.eq(1), c.eq(Mux(c == d - 1, 0, c + 1))]
                with m.If(c == d - 1):
                    with m.If(r == self.ins.rows - 1):
                        m.d.sync += tail.eq(self.tail)
                        m.next = "TAIL"
                    with m.Else():
                        m.d.sync += r.eq(r + 1)
                        m.next = "PASS1"
            with m.State("TAIL"):
                m.d.sync += tail.eq(tail - 1)
                with m.If(tail == 1):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class SoftmaxUnit(wiring.Component):
    """contract.integer.softmax of one row of T scores (SC, its maximum `sc_max`) into P.

    Pass 1 per score: delta = min(max - s, DELTA_MAX); u = min(round(delta * m / 2**s'),
    EXP_U_MAX); e = EXP2_TABLE[u & 63] >> (u >> 6), kept in E, summed into Z. Then R = 255 *
    2**30 // Z (the row's one division), and pass 2: p = (e * R + 2**29) >> 30. Clocks:
    `row_cycles`."""

    PIPE1 = 5  # pass 1: read, delta, product, exponent, table

    def __init__(self, ins_layout, T, score_bits):
        self.T, self.score_bits = T, score_bits
        self.z_bits = (T << I.EXP_ONE_BITS).bit_length()
        self.div = Divider(I.PROB_MAX << I.PROB_RECIP_BITS, self.z_bits)
        self.row_cycles = 2 * T + (self.PIPE1 + 1) + (self.div.latency + 1) + 1
        super().__init__({"ins": In(ins_layout), "start": In(1), "busy": Out(1),
                          "sc_addr": Out(range(T)), "sc_data": In(signed(score_bits)), "sc_max": In(signed(score_bits)),
                          "p_we": Out(1), "p_addr": Out(range(T)), "p_data": Out(8)})

    def elaborate(self, platform):
        m = Module()
        T, ins = self.T, self.ins
        m.submodules.div = self.div
        exp_rom = m.submodules.exp2 = Memory(shape=unsigned(I.EXP_ONE_BITS + 1), depth=len(I.EXP2_TABLE),
                                             init=[int(v) for v in I.EXP2_TABLE])
        e_mem = m.submodules.e = Memory(shape=unsigned(I.EXP_ONE_BITS + 1), depth=T, init=[])
        x_rd, e_wr, e_rd = exp_rom.read_port(), e_mem.write_port(), e_mem.read_port()
        j = Signal(range(T))
        issue1, issue2 = Signal(), Signal()
        v = [issue1] + [Signal(name=f"sv{i}") for i in range(1, self.PIPE1 + 1)]
        jj = [j] + [Signal(range(T), name=f"sj{i}") for i in range(1, self.PIPE1 + 1)]
        m.d.sync += [v[i + 1].eq(v[i]) for i in range(self.PIPE1)] + [jj[i + 1].eq(jj[i]) for i in range(self.PIPE1)]
        delta = Signal(32)
        prod = Signal(63)
        u = Signal(range(I.EXP_U_MAX + 1))
        shift = Signal(range(I.EXP_U_MAX // 2**I.EXP_FRAC_BITS + 1))
        Z = Signal(self.z_bits)
        diff = self.sc_max - self.sc_data
        rounded = rshift_round(prod, ins.imm_s)
        m.d.comb += self.sc_addr.eq(j)
        m.d.sync += [delta.eq(Mux(diff > I.DELTA_MAX, I.DELTA_MAX, diff)),
                     prod.eq(delta * ins.imm_m),
                     u.eq(Mux(rounded > I.EXP_U_MAX, I.EXP_U_MAX, rounded)),
                     shift.eq(u >> I.EXP_FRAC_BITS)]
        m.d.comb += x_rd.addr.eq(u[:I.EXP_FRAC_BITS])
        e = x_rd.data >> shift
        m.d.comb += [e_wr.addr.eq(jj[5]), e_wr.data.eq(e), e_wr.en.eq(v[5])]
        with m.If(v[5]):
            m.d.sync += Z.eq(Mux(jj[5] == 0, 0, Z) + e)
        R = Signal(self.div.num_bits)
        # pass 2: p = (e * R + 2**29) >> 30, written the clock after the read
        j2, w2 = Signal(range(T)), Signal()
        m.d.comb += e_rd.addr.eq(j)
        m.d.sync += [j2.eq(j), w2.eq(issue2)]
        m.d.comb += [self.p_we.eq(w2), self.p_addr.eq(j2),
                     self.p_data.eq(rshift_round(e_rd.data * R, I.PROB_RECIP_BITS))]
        wait = Signal(range(self.PIPE1 + 2))
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += j.eq(0)
                    m.next = "PASS1"
            with m.State("PASS1"):
                m.d.comb += issue1.eq(1)
                m.d.sync += j.eq(Mux(j == T - 1, 0, j + 1))
                with m.If(j == T - 1):
                    m.d.sync += wait.eq(self.PIPE1 + 1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 1):
                    m.d.comb += [self.div.start.eq(1), self.div.den.eq(Z)]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(~self.div.busy):
                    m.d.sync += R.eq(self.div.q)
                    m.next = "PASS2"
            with m.State("PASS2"):
                m.d.comb += issue2.eq(1)
                m.d.sync += j.eq(Mux(j == T - 1, 0, j + 1))
                with m.If(j == T - 1):
                    m.next = "TAIL"
            with m.State("TAIL"):  # the last probability is written here
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | w2)
        return m
