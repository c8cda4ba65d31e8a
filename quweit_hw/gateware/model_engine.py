# amaranth: UnusedElaboratable=no
"""The whole integer model as one Amaranth component: image pixels in, logits and the class out.

`ModelEngine(program, lanes=16)` builds, from a version-2 program (contract.golden_model), a
sequencer that runs the instructions of `model_program.compile_program` one after the other:

- a MAC array of `lanes` multipliers (`MACArray`: one output per lane, the operand A
  broadcast, the operand B a word of `lanes` int8 from the weight ROM or the K/V memories)
  for the patch embedding, Q/K/V, the attention scores and context, the projections, the
  dense MLP and the head;
- the `LayerNormUnit` and `SoftmaxUnit` (model_units), one `MLPEngine` per LUT-MLP block;
- one `PostOp` behind all of them, writing every result into the memory the instruction names.

Each instruction finishes (its post-op writes landed) before the next starts, except the
softmax, which runs beside the instructions after it; the program keeps what it reads and
writes apart from theirs (two SC/P buffers; design.md). The cycles per image are exact:
`cycles_per_image` (the test measures them).
Bit-exact with `contract.golden_model.logits`. Imports amaranth and numpy, no torch.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .engine import MLPEngine
from .model_program import (A_CTX, A_G, A_H, A_P, A_PIX, A_Q, B_K, B_V, B_W, D_CTX, D_G, D_H, D_HT, D_K,
                            D_LOG, D_Q, D_SC, D_V, D_X, FIELD_NAMES, FILL, LAYERNORM, LUT, MAC, SOFTMAX,
                            compile_program)
from .model_units import BankedROM, LayerNormUnit, PostOp, SoftmaxUnit, later, post_latency, times_constant

TOP = "model_engine"


def instruction_layout(instructions):
    """A StructLayout with each field as wide as its largest value needs."""
    widths = {name: max(max(getattr(i, name) for i in instructions).bit_length(), 1) for name in FIELD_NAMES}
    return data.StructLayout({name: unsigned(w) for name, w in widths.items()})


class MACArray(wiring.Component):
    """`lanes` multiply-accumulators: for each row r and group g of lanes, lane l sums
    A[a_base + r*a_stride + k] * B[b_base + g*b_gstride + k*b_kstride][l] over k < K; the
    group's sums then leave one per clock (o_pre, with row r and output o = g*lanes + l).

    The addresses are counters stepped by the strides (no multiplier on the address path);
    the operands are registered out of their memories, the products registered, the sums
    latched into a bank that shifts one sum per clock to `o_pre` (no lanes-to-one mux).
    A group takes max(K, outputs in it) clocks, so the sums of one group have left before the
    next group's arrive. The operands come `OPERAND_DELAY` clocks after their addresses (the
    weight ROM's BankedROM latency, the other memories' outputs registered as long, then a
    register after the engine's source multiplexer, which is on this side). A sum is on `o`
    `LATENCY` clocks after its last operand's address."""

    OPERAND_DELAY = 1 + BankedROM.LATENCY
    LATENCY = OPERAND_DELAY + 4  # operands registered at the DSPs; product; product again; sum

    def __init__(self, ins_layout, lanes, acc_bits, addr_bits, row_bits, out_bits):
        self.lanes, self.acc_bits = lanes, acc_bits
        super().__init__({"ins": In(ins_layout), "start": In(1), "busy": Out(1),
                          "a_addr": Out(addr_bits), "a_data": In(signed(9)),
                          "b_addr": Out(addr_bits), "b_data": In(unsigned(8 * lanes)),
                          "o_valid": Out(1), "o_pre": Out(signed(acc_bits)), "o_r": Out(row_bits), "o_o": Out(out_bits)})

    def elaborate(self, platform):
        m = Module()
        W, ins = self.lanes, self.ins
        logw = W.bit_length() - 1
        r, g, slot = Signal.like(self.o_r), Signal(self.o_o.shape().width), Signal(self.o_o.shape().width + 1)
        a_row, b_group, b_k = Signal.like(self.a_addr), Signal.like(self.b_addr), Signal.like(self.b_addr)
        running = Signal()
        # the instruction's counts, registered (it is steady from the clock before `start`):
        # the last group's index and outputs, each group's slots less 1, the last slot and row
        last_g, last_n = Signal.like(g, name="last_g"), Signal(range(W + 1), name="last_n")
        full_m1, part_m1 = Signal.like(slot, name="full_m1"), Signal.like(slot, name="part_m1")
        k_m1, rows_m1 = Signal.like(slot, name="k_m1"), Signal.like(r, name="rows_m1")
        outs_m1 = ins.O - 1
        m.d.sync += [last_g.eq(outs_m1 >> logw), last_n.eq(outs_m1[:logw] + 1), k_m1.eq(ins.K - 1),
                     full_m1.eq(Mux(ins.K > W, ins.K - 1, W - 1)),
                     part_m1.eq(Mux(ins.K - 1 > outs_m1[:logw], ins.K - 1, outs_m1[:logw])), rows_m1.eq(ins.rows - 1)]
        at_last = Signal()  # g == last_g
        in_group = Mux(at_last, last_n, W)
        issuing = Signal()  # slot < K
        issue = running & issuing
        m.d.comb += [self.a_addr.eq(a_row + slot), self.b_addr.eq(b_group + b_k)]
        with m.If(self.start):
            m.d.sync += [r.eq(0), g.eq(0), slot.eq(0), running.eq(1), issuing.eq(1),
                         a_row.eq(ins.a_base), b_group.eq(ins.b_base), b_k.eq(0)]
        with m.Elif(running):
            m.d.sync += [slot.eq(slot + 1), b_k.eq(b_k + ins.b_kstride)]
            with m.If(slot == k_m1):
                m.d.sync += issuing.eq(0)
            with m.If(slot == Mux(at_last, part_m1, full_m1)):
                m.d.sync += [slot.eq(0), b_k.eq(0), g.eq(g + 1), b_group.eq(b_group + ins.b_gstride), issuing.eq(1)]
                with m.If(at_last):
                    m.d.sync += [g.eq(0), b_group.eq(ins.b_base), r.eq(r + 1), a_row.eq(a_row + ins.a_stride)]
                    with m.If(r == rows_m1):
                        m.d.sync += running.eq(0)
        m.d.comb += at_last.eq(g == last_g)
        # OPERAND_DELAY: operands in; + 1 registered at the DSPs; + 2, + 3 the product (twice), summed; + 4 the bank
        # the operands registered once more, next to the DSPs, and each product twice: a
        # MULT18X18D takes 3.9 ns, which leaves no room for a long route on either side
        v3, first3, last3, r3, g3, n3 = (later(m, v, self.OPERAND_DELAY + 3, n) for v, n in (
            (issue, "v"), (slot == 0, "first"), (slot == k_m1, "last"), (r, "r"), (g, "g"), (in_group, "n")))
        a2, b2 = later(m, self.a_data, 1, "a"), later(m, self.b_data, 1, "b")
        products = [Signal(signed(17), name=f"prod{l}") for l in range(W)]
        sums = [Signal(signed(self.acc_bits), name=f"acc{l}") for l in range(W)]
        bank = [Signal(signed(self.acc_bits), name=f"bank{l}") for l in range(W)]
        load = v3 & last3
        ser, ser_n, ser_active = Signal(range(W)), Signal.like(slot), Signal()
        for l in range(W):
            m.d.sync += products[l].eq(a2 * b2[8 * l:8 * l + 8].as_signed())
            total = Mux(first3, 0, sums[l]) + later(m, products[l], 1, f"prod{l}")
            with m.If(v3):
                m.d.sync += sums[l].eq(total)
            with m.If(load):
                m.d.sync += bank[l].eq(total)
            with m.Elif(ser_active):  # the bank shifts toward lane 0, whose sum is on o_pre
                m.d.sync += bank[l].eq(bank[l + 1] if l + 1 < W else 0)
        ser_r, ser_g = Signal.like(r), Signal.like(g)
        with m.If(load):
            m.d.sync += [ser.eq(0), ser_n.eq(n3), ser_r.eq(r3), ser_g.eq(g3), ser_active.eq(1)]
        with m.Elif(ser_active):
            m.d.sync += ser.eq(ser + 1)
            with m.If(ser == ser_n - 1):
                m.d.sync += ser_active.eq(0)
        m.d.comb += [self.o_valid.eq(ser_active), self.o_pre.eq(bank[0]), self.o_r.eq(ser_r),
                     self.o_o.eq((ser_g << logw) | ser),
                     self.busy.eq(running | Cat(*(later(m, issue, k, f"in{k}") for k in range(1, self.OPERAND_DELAY + 3)),
                                                v3).any() | ser_active)]
        return m


class ModelEngine(wiring.Component):
    """The integer ViT of `program` on one chip. Ports: `i` a stream of uint8 pixels (channel,
    row, column order, C*H*W per image), `o` a stream of one payload per image (`logits`:
    classes x int32, `label`: the argmax, lowest index on ties); `cycles`: the compute cycles
    of the last image. Stalls on either side lose nothing."""

    def __init__(self, program, *, lanes=16, registers="all"):
        self.program = program
        self.invariants = []  # (name, register, expression it stands for), set by elaborate
        self.compiled = c = compile_program(program, lanes)
        if len(set(c.token_bits)) > 1:
            raise ValueError(f"LUT blocks with different token widths {sorted(set(c.token_bits))} are not supported")
        self.engines = [MLPEngine(block, registers=registers) for block in c.lut_blocks]
        self.ins_layout = instruction_layout(c.instructions)
        self.pixels = c.config.get("channels", 1) * c.config["image_size"] ** 2
        self.label_bits = max((c.classes - 1).bit_length(), 1)
        self.layernorm = LayerNormUnit(self.ins_layout, c.d, 1, 1, 1)  # its clocks, for instruction_cycles
        self.post_latency = post_latency(c.pre_bits)
        self.softmax = SoftmaxUnit(self.ins_layout, c.T, c.score_bits)  # its clocks, for instruction_cycles
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(data.StructLayout({"logits": data.ArrayLayout(signed(32), c.classes),
                                                         "label": unsigned(self.label_bits)}))),
            "cycles": Out(32)})

    @property
    def cycles_per_image(self):
        """Clocks from the last pixel's handshake to `o.valid`, exactly (`instruction_cycles`)."""
        return sum(instruction_cycles(self))

    def elaborate(self, platform):
        m = Module()
        c = self.compiled
        d = c.d
        lay = self.ins_layout
        irom = m.submodules.program = Memory(shape=lay, depth=len(c.instructions), init=[
            {n: getattr(i, n) for n in FIELD_NAMES} for i in c.instructions])
        i_rd = irom.read_port()
        ins = Signal(lay)  # the instruction ROM's output, registered (LATCH) before anything reads it

        mem = self._memories(m)
        pix, x, h, q, ctx, g, kmem, vmem, wrom, sc, pm, ht = (mem[k] for k in (
            "pix", "x", "h", "q", "ctx", "g", "k", "v", "weights", "sc", "p", "ht"))

        units = self.units()
        mac, ln, smx, post = (units[k] for k in ("mac", "ln", "softmax", "post"))
        for name, unit in units.items():
            m.submodules[name] = unit
            m.d.comb += unit.ins.eq(ins)

        self._mac_operands(m, ins, mac, {A_PIX: pix, A_H: h, A_Q: q, A_CTX: ctx, A_G: g, A_P: pm},
                           {B_W: wrom, B_K: kmem, B_V: vmem})

        # LayerNorm and softmax operands
        x_ln, x_ln2, x_post = x.read_port(), x.read_port(), x.read_port()
        m.d.comb += [x_ln.addr.eq(ln.x_addr), ln.x_data.eq(x_ln.data),
                     x_ln2.addr.eq(ln.x2_addr), ln.x2_data.eq(x_ln2.data),
                     x_post.addr.eq(post.x_addr), post.x_data.eq(x_post.data)]
        sc_rd, max_rd, p_wr = sc.read_port(), mem["sc_max"].read_port(), pm.write_port()
        m.d.comb += [sc_rd.addr.eq(smx.sc_addr), smx.sc_data.eq(sc_rd.data), max_rd.addr.eq(smx.row),
                     smx.sc_max.eq(later(m, max_rd.data, 1, "sc_max")),
                     p_wr.addr.eq(smx.p_addr), p_wr.data.eq(smx.p_data), p_wr.en.eq(smx.p_we)]

        lut = self._lut_feeder(m, ins, ht, c)
        fill_o, fill_active = Signal(range(d + 1)), Signal()

        # the post-op's input: the unit the instruction runs
        with m.Switch(ins.kind):
            with m.Case(MAC):
                m.d.comb += [post.i_valid.eq(mac.o_valid), post.i_pre.eq(mac.o_pre), post.i_r.eq(mac.o_r), post.i_o.eq(mac.o_o)]
            with m.Case(LAYERNORM):
                m.d.comb += [post.i_valid.eq(ln.o_valid), post.i_pre.eq(ln.o_pre), post.i_r.eq(ln.o_r), post.i_o.eq(ln.o_o)]
            with m.Case(LUT):
                m.d.comb += [post.i_valid.eq(lut["valid"]), post.i_pre.eq(lut["pre"]), post.i_r.eq(lut["r"]),
                             post.i_o.eq(lut["o"])]
            with m.Case(FILL):
                m.d.comb += [post.i_valid.eq(fill_active), post.i_pre.eq(0), post.i_r.eq(0), post.i_o.eq(fill_o)]

        logits = Array(Signal(signed(32), name=f"logit{k}") for k in range(c.classes))
        best, label = Signal(signed(32)), Signal(self.label_bits)
        self._writes(m, post, ins, {D_X: x, D_H: h, D_Q: q, D_CTX: ctx, D_G: g, D_SC: sc},
                     {D_K: kmem, D_V: vmem}, ht, mem["sc_max"], logits, best, label)
        self._sequencer(m, i_rd, ins, mac, ln, smx, post, lut, fill_o, fill_active, pix, logits, label)
        assert post.latency == self.post_latency
        return m

    def units(self):
        """Fresh arithmetic units of this engine, by name: the MAC array, the LayerNorm and
        softmax units, the post-op (bench/model_engine_build.py builds each on its own)."""
        c, lay = self.compiled, self.ins_layout
        T, d = c.T, c.d
        addr_bits = max(len(c.weights), T * max(c.hidden, d, c.patch_len), d * c.GT, c.heads * T * c.GD).bit_length() + 1
        row_bits, out_bits = max(T, c.classes).bit_length() + 1, max(c.hidden, d, T, c.patch_len).bit_length() + 1
        return {"mac": MACArray(lay, c.lanes, c.acc_bits, addr_bits, row_bits, out_bits),
                "ln": LayerNormUnit(lay, d, row_bits, addr_bits, c.pre_bits),
                "softmax": SoftmaxUnit(lay, T, c.score_bits),
                "post": PostOp(lay, c.params, c.gelu, c.pre_bits, row_bits, out_bits, addr_bits)}

    def _memories(self, m):
        """The engine's memories (module docstring of model_program), by name."""
        c = self.compiled
        T, d = c.T, c.d
        wide = unsigned(8 * c.lanes)
        tb = c.token_bits[0] if c.token_bits else 8
        shapes = {"pix": (signed(8), c.N * c.patch_len), "x": (signed(16), T * d), "h": (signed(8), T * d),
                  "q": (signed(8), T * d), "ctx": (signed(8), T * d), "g": (signed(8), T * c.hidden),
                  "k": (wide, d * c.GT), "v": (wide, c.heads * T * c.GD), "sc": (signed(c.score_bits), 2 * T * T),
                  "sc_max": (signed(c.score_bits), 2 * T), "p": (unsigned(8), 2 * T * T), "ht": (unsigned(d * tb), T)}
        out = {"ht": None}  # HT only where a LUT block reads it
        for name, (shape, depth) in shapes.items():
            if name != "ht" or c.lut_blocks:
                out[name] = m.submodules[name] = Memory(shape=shape, depth=max(depth, 1), init=[])
        out["weights"] = m.submodules.weights = BankedROM(wide, [
            sum((v & 0xFF) << (8 * lane) for lane, v in enumerate(word)) for word in c.weights])
        return out

    @staticmethod
    def _mac_operands(m, ins, mac, a_mems, b_mems):
        """One read port per operand memory (the weight ROM a BankedROM), at the MAC array's
        addresses, each memory's data registered to MACArray.OPERAND_DELAY - 1 clocks after
        the address; the instruction's source, registered, to the array."""
        for select, sources, addr, data_in in ((ins.a_src, a_mems, mac.a_addr, mac.a_data),
                                               (ins.b_src, b_mems, mac.b_addr, mac.b_data)):
            ready = {}
            for src, memory in sources.items():
                if isinstance(memory, BankedROM):
                    m.d.comb += memory.addr.eq(addr)
                    ready[src] = memory.data
                else:
                    port = memory.read_port()
                    m.d.comb += port.addr.eq(addr)
                    ready[src] = later(m, port.data, MACArray.OPERAND_DELAY - 2, f"operand{len(data_in)}_{src}")
            with m.Switch(select):
                for src, value in ready.items():
                    with m.Case(src):
                        m.d.sync += data_in.eq(value)

    def _writes(self, m, post, ins, scalar, wide, ht, sc_max, logits, best, label):
        """The post-op's result into the memory the instruction names (a lane of a wide word)."""
        for dest, memory in scalar.items():
            port = memory.write_port()
            m.d.comb += [port.addr.eq(post.w_addr), port.data.eq(post.w_data),
                         port.en.eq(post.w_valid & (ins.dest == dest))]
        lanes = self.compiled.lanes
        for dest, memory in wide.items():
            port = memory.write_port(granularity=8)
            m.d.comb += [port.addr.eq(post.w_addr), port.data.eq(Cat([post.w_data[:8]] * lanes)),
                         port.en.eq(Mux(post.w_valid & (ins.dest == dest), 1 << post.w_lane[:lanes.bit_length() - 1], 0))]
        if ht is not None:
            tb = ht.shape.width // self.compiled.d
            port = ht.write_port(granularity=tb)
            m.d.comb += [port.addr.eq(post.w_addr), port.data.eq(Cat([post.w_data[:tb]] * self.compiled.d)),
                         port.en.eq(Mux(post.w_valid & (ins.dest == D_HT), 1 << post.w_lane[:self.compiled.d.bit_length()], 0))]
        # each score row's maximum, for the softmax: the scores arrive row by row, T per row
        # (the MAC array's order), and the running maximum goes to the row's entry each time
        T = self.compiled.T
        col, row, running = Signal(range(T)), Signal(range(T)), Signal(signed(self.compiled.score_bits))
        highest = Mux((col == 0) | (post.w_data > running), post.w_data, running)
        max_wr = sc_max.write_port()
        m.d.comb += [max_wr.addr.eq(Mux(ins.buf, T, 0) + row), max_wr.data.eq(highest),
                     max_wr.en.eq(post.w_valid & (ins.dest == D_SC))]
        with m.If(max_wr.en):
            m.d.sync += [running.eq(highest), col.eq(Mux(col == T - 1, 0, col + 1))]
            with m.If(col == T - 1):
                m.d.sync += row.eq(Mux(row == T - 1, 0, row + 1))
        with m.If(post.w_valid & (ins.dest == D_LOG)):
            m.d.sync += logits[post.w_addr].eq(post.w_data)
            with m.If((post.w_addr == 0) | (post.w_data > best)):
                m.d.sync += [best.eq(post.w_data), label.eq(post.w_addr)]

    def _lut_feeder(self, m, ins, ht, c):
        """Tokens from HT into the LUT engine of the instruction, its counts out one per clock.

        The hand-off is registered: a word the engine offers is taken (`take`, its o.ready) by a
        decision of local registers only, lands in `landing` (every clock, no enable) and is
        loaded into the counts one clock later by the registered `load`. So no enable of the
        d count registers is computed from the engine's output (the 60 MHz build's worst path:
        one LUT's net to every count register's enable across the fabric). The next word is
        taken while the counts' second-last value goes out, so the counts still leave one per
        clock; the first of an instruction's tokens comes one clock later."""
        out = {"valid": Signal(name="lut_valid"), "pre": Signal(signed(c.pre_bits), name="lut_pre"),
               "r": Signal(range(c.T + 1), name="lut_r"), "o": Signal(range(c.d), name="lut_o"),
               "start": Signal(name="lut_start"), "busy": Signal(name="lut_busy")}
        if ht is None:
            return out
        rd = ht.read_port()
        fed, got = Signal(range(c.T + 1)), Signal(range(c.T + 1))
        # got < rows, registered: the comparison fed the engines' o.ready, whose FIFO enables
        # 320 payload registers (the 60 MHz top's critical path, 12.4 ns of routing)
        more = Signal()
        tok_valid = Signal()
        # as wide as the counts are: constant bits in a d-long shift chain take Yosys' opt loop
        # one round per stage to find (the 16-bit chain of before cost a whole-model build
        # some 80 rounds of `opt` over the whole design)
        width = max(block.count_width for block in c.lut_blocks)
        counts = [Signal(width, name=f"count{j}") for j in range(c.d)]  # shift toward count0, on `pre`
        landing = [Signal(width, name=f"landing{j}") for j in range(c.d)]
        ser, ser_active = Signal(range(c.d)), Signal()
        take, load, accepted = Signal(), Signal(name="lut_load"), Signal()
        m.d.comb += rd.addr.eq(fed)
        running = Signal()
        with m.If(out["start"]):
            m.d.sync += [fed.eq(0), got.eq(0), running.eq(1), tok_valid.eq(0), more.eq(ins.rows != 0)]
        offered = Signal()
        take_next = self._next_take(m, out["start"], ins, take & offered, running, more, load,
                                    ser_active, ser, c.d)
        m.d.sync += take.eq(take_next)
        # for the simulation tests (gateware.simulation checks it every clock): the register
        # equals the comparison it stands for
        self.invariants = [("the LUT feeder's registered take", take,
                            running & more & ~load & (~ser_active | (ser == c.d - 2)))]
        for index, engine in enumerate(self.engines):
            m.submodules[f"lut_engine{index}"] = engine
            mine = ins.x_row == index
            ready = Signal(name=f"lut_ready{index}")  # take & mine, a register of its own next to the engine
            m.d.sync += ready.eq(take_next & mine)
            m.d.comb += [engine.i.payload.eq(rd.data), engine.i.valid.eq(tok_valid & mine),
                         engine.o.ready.eq(ready)]
            with m.If(mine):
                m.d.comb += [accepted.eq(engine.i.valid & engine.i.ready), offered.eq(engine.o.valid)]
                m.d.sync += [landing[j].eq(engine.o.payload[j]) for j in range(c.d)]
        # the word taken in one clock is in `landing` in the next, when `load` moves it on. (An
        # If, not load.eq(take & offered): take reads ~load, so in Icarus an X in one operand
        # for one clock would stay in the loop for good, where an If(X) is not taken.)
        m.d.sync += load.eq(0)
        with m.If(take & offered):
            m.d.sync += [load.eq(1), got.eq(got + 1), more.eq(got + 1 < ins.rows)]
        with m.If(load):
            m.d.sync += [counts[j].eq(landing[j]) for j in range(c.d)]
            m.d.sync += [ser.eq(0), ser_active.eq(1), out["r"].eq(got - 1)]  # no take while load
        with m.Elif(ser_active):
            m.d.sync += [counts[j].eq(counts[j + 1]) for j in range(c.d - 1)]
            m.d.sync += ser.eq(ser + 1)
            with m.If(ser == c.d - 1):
                m.d.sync += ser_active.eq(0)
        # a token is read from HT while the one before is accepted: one every other clock at most
        with m.If(running & ~out["start"]):
            with m.If(~tok_valid & (fed < ins.rows)):
                m.d.sync += [tok_valid.eq(1)]
            with m.Elif(accepted):
                m.d.sync += [tok_valid.eq(0), fed.eq(fed + 1)]
        with m.If(running & (got == ins.rows) & ~ser_active & ~load):
            m.d.sync += running.eq(0)
        m.d.comb += [out["valid"].eq(ser_active), out["pre"].eq(counts[0]), out["o"].eq(ser),
                     out["busy"].eq(running | ser_active | load)]
        return out

    @staticmethod
    def _next_take(m, start, ins, taken, running, more, load, ser_active, ser, d):
        """`take` of the next clock, from this clock's registers, so that `take` and the
        engines' o.ready are registers: take = running & more & ~load & (~ser_active |
        ser == d - 2), with each of those at its next value. A word taken now sets load,
        so no take follows it; START sets more = rows != 0 with the counts idle; otherwise
        running and more keep their values where it matters (running falls only once
        got == rows, when more is 0), and the counts' next state decides the rest. (The 100
        MHz top's worst path: that comparison into the engines' o.ready, then 8.2 ns of
        routing to their FIFOs' 320 output enables.)"""
        near = ser == d - 1
        if d >= 3:
            near |= ser == d - 3
        # Ifs, not one expression: in a 4-state simulator an If(X) is not taken, where an X
        # operand would stay in the loop through `taken` for good (see `load`)
        take_next = Signal(name="lut_take_next")
        with m.If(taken):
            pass
        with m.Elif(start):
            m.d.comb += take_next.eq(ins.rows != 0)
        with m.Elif(running & more):
            with m.If(load):
                m.d.comb += take_next.eq(d == 2)
            with m.Elif(ser_active):
                m.d.comb += take_next.eq(near)
            with m.Else():
                m.d.comb += take_next.eq(1)
        return take_next

    def _sequencer(self, m, i_rd, ins, mac, ln, smx, post, lut, fill_o, fill_active, pix, logits, label):
        c = self.compiled
        p, side = c.config["patch"], c.config["image_size"] // c.config["patch"]
        pc = self._pc = Signal(range(len(c.instructions)))
        m.d.comb += i_rd.addr.eq(pc)
        # pixel (channel, y, x) -> patch element (t, k): counters, no division
        ch, ty, py, tx, px = (Signal(range(max(n, 2))) for n in (c.config.get("channels", 1), side, p, side, p))
        # written 2 clocks after the handshake (the patch's base and the offset in it registered,
        # then their sum); the first read of PIX is 4 clocks after the last pixel's handshake
        pw = pix.write_port()
        patch_base, offset = Signal.like(pw.addr, name="patch_base"), Signal.like(pw.addr, name="patch_offset")
        m.d.sync += [patch_base.eq(times_constant(times_constant(ty, side) + tx, c.patch_len)),
                     offset.eq(times_constant(ch, p * p) + times_constant(py, p) + px),
                     pw.addr.eq(patch_base + offset), pw.data.eq(later(m, self.i.payload ^ 0x80, 1, "pixel")),
                     pw.en.eq(later(m, self.i.valid & self.i.ready, 1, "pixel_valid"))]
        cycles = Signal(32)
        m.d.sync += cycles.eq(cycles + 1)
        unit_busy = Mux(ins.kind == MAC, mac.busy, Mux(ins.kind == LAYERNORM, ln.busy, Mux(
            ins.kind == LUT, lut["busy"], fill_active)))
        # the handshake outputs come from registers (and are never left undefined in a 4-state simulator)
        loading, done = Signal(init=1), Signal()
        m.d.comb += [self.i.ready.eq(loading), self.o.valid.eq(done)]
        with m.FSM():
            with m.State("LOAD"):
                with m.If(self.i.valid & loading):
                    self._advance(m, [(px, p), (tx, side), (py, p), (ty, side), (ch, c.config.get("channels", 1))])
                    with m.If((ch == c.config.get("channels", 1) - 1) & (ty == side - 1) & (py == p - 1) &
                              (tx == side - 1) & (px == p - 1)):
                        m.d.sync += [pc.eq(0), cycles.eq(0), loading.eq(0)]
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += ins.eq(i_rd.data)
                m.next = "START"
            with m.State("START"):
                # the softmax runs beside what follows: it starts once the unit is idle, and
                # the sequencer goes on; an instruction that reads its P waits for it first
                with m.If(ins.kind == SOFTMAX):
                    with m.If(~smx.busy):
                        m.d.comb += smx.start.eq(1)
                        m.d.sync += pc.eq(pc + 1)
                        m.next = "FETCH"
                with m.Elif(~ins.after_softmax | ~smx.busy):
                    m.d.comb += [mac.start.eq(ins.kind == MAC), ln.start.eq(ins.kind == LAYERNORM),
                                 lut["start"].eq(ins.kind == LUT)]
                    with m.If(ins.kind == FILL):
                        m.d.sync += [fill_o.eq(0), fill_active.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(~unit_busy & ~post.busy & ~post.i_valid):
                    with m.If(pc == len(c.instructions) - 1):
                        m.d.sync += [self.cycles.eq(cycles + 1), done.eq(1)]
                        m.next = "OUT"
                    with m.Else():
                        m.d.sync += pc.eq(pc + 1)
                        m.next = "FETCH"
            with m.State("OUT"):
                with m.If(self.o.ready):
                    m.d.sync += [done.eq(0), loading.eq(1)]
                    m.next = "LOAD"
        with m.If(fill_active):
            m.d.sync += fill_o.eq(fill_o + 1)
            with m.If(fill_o == ins.O - 1):
                m.d.sync += fill_active.eq(0)
        m.d.comb += [self.o.payload.logits[k].eq(logits[k]) for k in range(c.classes)]
        m.d.comb += self.o.payload.label.eq(label)

    @staticmethod
    def _advance(m, counters):
        """Step a mixed-radix counter, least significant first."""
        carry = 1
        for counter, radix in counters:
            with m.If(carry):
                m.d.sync += counter.eq(Mux(counter == radix - 1, 0, counter + 1))
            carry = carry & (counter == radix - 1)


def instruction_cycles(engine):
    """Clocks of the sequencer per instruction, from its fetch to the next fetch (exact: the
    test measures their sum). Every instruction: fetch and latch (2 clocks), start (1 clock,
    held while it waits for the softmax unit), then its unit and the post-op's pipeline
    (`post_latency`) drain, except the softmax, which runs beside what follows (its own clocks:
    `softmax_clocks`). MAC: one clock per operand slot, less the trailing bubbles of the last
    group, then the array's latency and the last group's sums through the serializer;
    LayerNorm: its unit's beats; LUT: the engine's latency and the registered hand-off, then
    d clocks per token."""
    out, t, softmax_free = [], 0, 0
    for ins in engine.compiled.instructions:
        start = t + 2  # the clock of START, held until the softmax unit is idle where it must be
        if ins.kind == SOFTMAX or ins.after_softmax:
            start = max(start, softmax_free)
        if ins.kind == SOFTMAX:
            softmax_free, after = start + softmax_clocks(engine, ins), start + 1
        else:
            after = start + _unit_clocks(engine, ins) + 1
        out.append(after - t)
        t = after
    return out


def softmax_clocks(engine, ins):
    """Clocks from the softmax's start to its unit's being idle again."""
    return engine.softmax.last_read(ins.rows) + engine.softmax.pipe2 + 1


def _unit_clocks(engine, ins):
    """Clocks of RUN after START, until the sequencer sees the unit and the post-op idle."""
    c, post = engine.compiled, engine.post_latency
    if ins.kind == MAC:
        groups = [min(c.lanes, ins.O - g * c.lanes) for g in range(-(-ins.O // c.lanes))]
        slots = ins.rows * sum(max(ins.K, n) for n in groups)
        return slots - max(0, groups[-1] - ins.K) + groups[-1] + MACArray.LATENCY + post
    if ins.kind == LAYERNORM:
        ln = engine.layernorm
        return ln.last_read(ins.rows) + ln.out_latency + post + 1
    if ins.kind == LUT:
        return ins.rows * ins.O + engine.engines[ins.x_row].latency + post + 4
    return ins.O + post + 1  # FILL
