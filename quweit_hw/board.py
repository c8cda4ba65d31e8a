"""Board top: the bundle's MLP engines behind a framed UART link (docs/uart-protocol.md), for the ULX3S.

`LinkCore` is the whole design minus the pins: UART receiver and transmitter, the
frame decoder (CRC, length and block checks, an inter-byte timeout), a payload
buffer that commits a frame only once its CRC checks, the feeder that turns
committed bytes into tokens for the engine the frame selects, and the reply
encoder that streams counts out as the engine produces them. Every frame gets
exactly one reply, in frame order. `BoardTop` adds the PLL, the reset button,
the FT231X UART pins and the LEDs for an `amaranth_boards` platform.
"""

from amaranth import Array, C, Cat, ClockDomain, Const, DomainRenamer, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib import data, io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import host
from .host import BoardInfo

LEDS = 8


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an int >= 4, got {divisor!r}")
    return divisor


def uart_divisor(clock_hz, baud):
    """Clock cycles per UART bit; ValueError when the rate error would exceed 2 %."""
    divisor = round(clock_hz / baud)
    if divisor < 4 or abs(clock_hz / divisor - baud) / baud > 0.02:
        raise ValueError(f"baud rate {baud!r} is not reachable from a {clock_hz / 1e6:g} MHz clock "
                         f"(divisor {clock_hz / baud:.2f})")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver. `o.valid` pulses one cycle per byte whose stop bit is high (no backpressure);
    `frame_error` pulses when the stop bit is low."""

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_error: Out(1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)
        # valid and error come from registers (one cycle after the stop bit's sample): the
        # frame decoder's logic hangs off `o.valid`
        valid = Signal()
        error = Signal()
        m.d.sync += [valid.eq(0), error.eq(0)]
        m.d.comb += [self.o.payload.eq(shreg), self.o.valid.eq(valid), self.frame_error.eq(error)]
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)  # to the middle of the start bit
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
                    with m.If(rx):  # a glitch, not a start bit
                        m.next = "IDLE"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    m.d.sync += [valid.eq(rx), error.eq(~rx)]
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter: takes a byte from `i` whenever idle; `tx` is registered."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        left = Signal(range(11))
        shreg = Signal(10)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(left != 0):
            m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1), left.eq(left - 1),
                         timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [shreg.eq(Cat(C(0, 1), self.i.payload, C(1, 1))), left.eq(10)]
        return m


def crc16_update(crc, byte):
    """CRC-16/CCITT-FALSE register after shifting in `byte` MSB first (same as host.crc16)."""
    for i in reversed(range(8)):
        feedback = byte[i] ^ crc[15]
        crc = (crc << 1)[:16] ^ Mux(feedback, 0x1021, 0)
    return crc


def pipe(m, value, stages, name, domain="sync"):
    """`value` delayed by `stages` flip-flops in `m` (no logic between them: placement can
    spread them along a long route). Data pipes have no reset; pulses reset to 0."""
    for k in range(stages):
        reg = Signal(len(value), name=f"{name}_{k}", reset_less=len(value) > 1)
        m.d[domain] += reg.eq(value)
        value = reg
    return value


def _gray(value):
    return value ^ (value >> 1)


class CrossingFIFO(wiring.Component):
    """A FIFO from clock domain `w_domain` to `r_domain` whose every decision comes from a
    register: a write is never refused (the caller sizes `depth` so it cannot fill), and
    the reader takes a word at most every other clock, so "a word is waiting" is a
    register computed the clock before. Amaranth's `AsyncFIFO` decides w_rdy and r_rdy
    combinationally from its Gray pointers, and that loop (compare -> enable -> increment
    -> Gray code) was build O's worst path (137.8 MHz). The pointers cross the same way:
    in Gray code, through `FFSynchronizer`s (Cummings' style #2); a word is in `Memory`
    (LUT RAM) before its pointer can be seen on the other side.

    Ports: `w_data`, `w_en` (write domain); `r_data` with a one-clock `r_valid` per word,
    in order (read domain, both from registers); `overflow` (write domain, sticky): a
    write may have found the FIFO full. It is checked on a level one clock old with a
    margin of one word, so it never misses an overflow and may flag a write that leaves
    the FIFO exactly full.
    """

    def __init__(self, width, depth, *, w_domain, r_domain):
        if depth < 4 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of 2, at least 4; got {depth!r}")
        self.width, self.depth, self.w_domain, self.r_domain = width, depth, w_domain, r_domain
        super().__init__({"w_data": In(width), "w_en": In(1),
                          "r_data": Out(width), "r_valid": Out(1), "overflow": Out(1)})

    def elaborate(self, platform):
        m = Module()
        wd, rd = m.d[self.w_domain], m.d[self.r_domain]
        bits = self.depth.bit_length()  # address bits + 1: full and empty differ in the top bit
        storage = m.submodules.storage = Memory(shape=self.width, depth=self.depth, init=[])
        w_port, r_port = storage.write_port(domain=self.w_domain), storage.read_port(domain="comb")

        produce, produce_gray = Signal(bits), Signal(bits)
        produce_next = (produce + 1)[:bits]  # wraps: the Gray code of the wider sum would not
        m.d.comb += [w_port.addr.eq(produce[:-1]), w_port.data.eq(self.w_data), w_port.en.eq(self.w_en)]
        with m.If(self.w_en):
            wd += [produce.eq(produce_next), produce_gray.eq(_gray(produce_next))]

        seen_produce = Signal(bits)  # Gray, in the read domain
        m.submodules.produce_cdc = FFSynchronizer(produce_gray, seen_produce, o_domain=self.r_domain)
        consume, consume_gray = Signal(bits), Signal(bits)
        waiting = Signal()  # a word waits, and none was taken the clock before
        m.d.comb += r_port.addr.eq(consume[:-1])
        rd += [waiting.eq((consume_gray != seen_produce) & ~waiting), self.r_valid.eq(waiting)]
        consume_next = (consume + 1)[:bits]
        with m.If(waiting):
            rd += [consume.eq(consume_next), consume_gray.eq(_gray(consume_next)), self.r_data.eq(r_port.data)]

        # overflow check, write domain: the consumer's pointer, decoded, then the level
        seen_consume = Signal(bits)
        m.submodules.consume_cdc = FFSynchronizer(consume_gray, seen_consume, o_domain=self.w_domain)
        consumed = Signal(bits)
        decoded = seen_consume
        for k in range(1, bits):
            decoded = decoded ^ (seen_consume >> k)
        level = Signal(bits)
        wd += [consumed.eq(decoded), level.eq(produce - consumed)]
        with m.If(self.w_en & (level >= self.depth - 1)):
            wd += self.overflow.eq(1)
        return m


class EngineSocket(wiring.Component):
    """An `MLPEngine` behind register pipes, so that the link logic and the engines may sit
    far apart on the die: every signal between the two crosses `stages` flip-flops each way
    with no logic between, and the engine's handshakes stay inside the socket.

    Link side: a token arrives a feature at a time (`feature` with a one-cycle `shift`, d
    of them, feature 0 first), then a one-cycle `push` hands it to the engine. The socket
    assembles it in a shift register beside its engine, so only `bits` wires, not d * bits,
    run from the link. A push is allowed only while the link holds a credit (it starts
    with `credits`, the engine's output FIFO depth; each `credit` pulse returns one, when
    a token leaves the engine) and at least `spacing` clocks (the engine's fold) after the
    previous push. So the engine always has room and no FIFO stands before it: the wide
    token register's only enable is the piped `shift` (an inbox FIFO's read enable, from
    the engine's credit counter, was build K's worst path; docs/results.md). `overrun` is
    a sticky flag, set if a push ever found the engine unable to take it (a broken
    contract; the tests check that it stays low, and that it fires).

    A one-cycle `pull` asks for the next count: the socket takes the engine's results one
    token at a time and hands them out one count per pull, in order, on `result` with a
    one-cycle `result_valid` (the link pulls again only after it), so the wide count
    vector never leaves the engine's side of the die. The counts are read in place from
    the engine's output FIFO, and its `o.ready` is a flip-flop (`pop`).

    `domain`: the engine's clock domain. "sync" (the default): the link's. Any other: the
    engine, the token register, the count select and the engine side's pipes run on that
    clock, and two `CrossingFIFO`s carry the link side's signals across (link -> engine:
    feature, shift, push and pull; engine -> link: result, result_valid and credit), so
    the link can run at UART speed while the engines run fast. The engine clock must be
    at least the link's: each side then drains its FIFO faster than the other fills it
    (a write into a full one would set `overrun`).
    """

    GROUP = 8  # counts in the first stage of the count select
    # words of each CrossingFIFO: the feeder writes at most 2 per 3 link clocks and the engine
    # side reads up to 1 per 2 engine clocks (>= link clocks); the way back carries a result
    # per pull (the link pulls again only after it) and a credit per token
    CROSSING_DEPTH = 16

    def __init__(self, engine, stages=2, domain="sync"):
        if not isinstance(stages, int) or stages < 0:
            raise ValueError(f"pipe stages must be an int >= 0, got {stages!r}")
        self.engine, self.stages, self.domain = engine, stages, domain
        self.credits, self.spacing = engine.fifo_depth, engine.fold
        block = engine.block
        super().__init__({
            "feature": In(block.bits), "shift": In(1), "push": In(1), "credit": Out(1), "overrun": Out(1),
            "pull": In(1), "result": Out(block.count_width), "result_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        dom, st = self.domain, self.stages
        m.submodules.engine = engine = self.engine if dom == "sync" else DomainRenamer(dom)(self.engine)
        bits = self.engine.block.bits
        d, cw = self.engine.block.d, self.engine.block.count_width
        overrun = Signal()  # in the engine's domain
        if dom == "sync":
            feature, shift, push, pull = (pipe(m, v, st, n) for v, n in (
                (self.feature, "feature"), (self.shift, "shift"), (self.push, "push"), (self.pull, "pull")))
        else:
            inbound = m.submodules.inbound = CrossingFIFO(bits + 3, self.CROSSING_DEPTH, w_domain="sync",
                                                          r_domain=dom)
            outbound = m.submodules.outbound = CrossingFIFO(cw + 2, self.CROSSING_DEPTH, w_domain=dom,
                                                            r_domain="sync")
            m.d.comb += [inbound.w_data.eq(Cat(self.feature, self.shift, self.push, self.pull)),
                         inbound.w_en.eq(self.shift | self.push | self.pull)]
            word, arrived = inbound.r_data, inbound.r_valid
            feature = pipe(m, word[:bits], st, "feature", dom)
            shift, push, pull = (pipe(m, arrived & word[bits + k], st, n, dom)
                                 for k, n in enumerate(("shift", "push", "pull")))
            overrun_sync = Signal()
            m.submodules.overrun_cdc = FFSynchronizer(overrun, overrun_sync)
            m.d.comb += self.overrun.eq(inbound.overflow | overrun_sync)
        token = Signal(d * bits, reset_less=True)
        with m.If(shift):
            m.d[dom] += token.eq(Cat(token[bits:], feature))
        # push: a clock after the last shift at the earliest
        m.d.comb += [engine.i.payload.eq(token), engine.i.valid.eq(push)]
        with m.If(push & ~engine.i.ready):
            m.d[dom] += overrun.eq(1)

        # the counts are read in place from the engine's output FIFO (its output register
        # holds them until popped), through a two-stage select: the group of `GROUP` counts
        # first, then the count in it; no register wider than a group
        group = min(d, self.GROUP)
        index = Signal(range(d))  # the next count of the token at the FIFO's head
        want, pop, picked, answered = Signal(), Signal(), Signal(), Signal()
        counts = Signal(group * cw, reset_less=True)
        offset = Signal(range(group), reset_less=True)
        result = Signal(cw, reset_less=True)
        m.d.comb += engine.o.ready.eq(pop)
        ed = m.d[dom]  # the engine's domain
        ed += [picked.eq(0), answered.eq(0), pop.eq(0)]
        with m.If(picked):
            ed += [result.eq(counts.word_select(offset, cw)), answered.eq(1)]
        with m.If(want & engine.o.valid & ~pop):
            groups = Cat(engine.o.payload.as_value(), C(0, (-d % group) * cw))  # padded to whole groups
            ed += [counts.eq(groups.word_select(index // group, group * cw)),
                   offset.eq(index % group), picked.eq(1), want.eq(0)]
            with m.If(index == d - 1):
                ed += [index.eq(0), pop.eq(1)]
            with m.Else():
                ed += index.eq(index + 1)
        with m.If(pull):
            ed += want.eq(1)
        # pop: a token left the engine, a credit back
        credit, result, answered = (pipe(m, v, st, n, dom) for v, n in ((pop, "credit"), (result, "result"),
                                                                       (answered, "answered")))
        if dom == "sync":
            m.d.comb += [self.credit.eq(credit), self.result.eq(result), self.result_valid.eq(answered),
                         self.overrun.eq(overrun)]
        else:
            m.d.comb += [outbound.w_data.eq(Cat(result, answered, credit)), outbound.w_en.eq(answered | credit)]
            with m.If(outbound.overflow):
                ed += overrun.eq(1)
            word, arrived = outbound.r_data, outbound.r_valid
            m.d.sync += [self.result.eq(word[:cw]), self.result_valid.eq(arrived & word[cw]),
                         self.credit.eq(arrived & word[cw + 1])]
        return m


class LinkCore(wiring.Component):
    """The board design without pins: `rx`/`tx` are the UART lines, `leds` the status LEDs.

    engines: [(bundle block index, engine component)], all with the same d, bits <= 8 and
    count width <= 8. max_tokens: tokens per INFER frame. timeout: cycles of silence that
    abort a frame in progress. stretch: cycles an activity LED stays lit. engine_domain: the
    engines' clock domain (default "sync", the link's; see `EngineSocket`).
    """

    rx: In(1, init=1)
    tx: Out(1)
    leds: Out(LEDS)

    def __init__(self, engines, *, divisor, max_tokens=32, timeout=1_000_000, stretch=1 << 20, bundle_id=0,
                 stages=2, engine_domain="sync"):
        if not engines or len(engines) > 16:
            raise ValueError(f"need 1 to 16 engines, got {len(engines)}")
        first = engines[0][1]
        self.d, self.bits, self.count_width = first.block.d, first.block.bits, first.block.count_width
        for index, engine in engines:
            b = engine.block
            if (b.d, b.bits, b.count_width) != (self.d, self.bits, self.count_width):
                raise ValueError(f"block {index} has (d, bits, count width) {(b.d, b.bits, b.count_width)}, "
                                 f"block {engines[0][0]} {(self.d, self.bits, self.count_width)}")
        if self.bits > 8 or self.count_width > 8:
            raise ValueError(f"the link carries one byte per feature and count, got bits={self.bits} "
                             f"and count width {self.count_width}")
        if not 1 <= max_tokens * self.d <= 0xFFFF:
            raise ValueError(f"max_tokens={max_tokens!r} x d={self.d} does not fit the 16-bit length")
        self.engines = engines
        self.divisor, self.max_tokens, self.timeout, self.stretch = divisor, max_tokens, timeout, stretch
        self.engine_domain = engine_domain
        self.sockets = [EngineSocket(engine, stages, engine_domain) for _, engine in engines]
        self.info = BoardInfo(host.PROTOCOL_VERSION, self.d, self.bits, self.count_width, max_tokens,
                              bundle_id, tuple(i for i, _ in engines),
                              tuple(min(e.latency, 255) for _, e in engines))  # one byte: 255 = 255 or more
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d, bits, cw, n_eng = self.d, self.bits, self.count_width, len(self.engines)
        sockets = self.sockets
        for k, socket in enumerate(sockets):
            m.submodules[f"socket{k}"] = socket

        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # payload buffer: a ring of two full frames; wr runs ahead, commit marks accepted
        # frames, rd is the feeder. Pointers carry one extra bit to tell full from empty.
        frame_bytes = self.max_tokens * d
        depth = 1 << (2 * frame_bytes - 1).bit_length()
        abits = depth.bit_length() - 1
        m.submodules.buffer = buf = Memory(shape=8, depth=depth, init=[])
        wr_port, rd_port = buf.write_port(), buf.read_port()
        wr_ptr, commit_ptr, rd_ptr = (Signal(abits + 1, name=n) for n in ("wr_ptr", "commit_ptr", "rd_ptr"))

        slot_bits = max(1, (n_eng - 1).bit_length())
        event = data.StructLayout({"kind": 2, "code": 8, "block": 8, "slot": slot_bits, "length": 16})
        job = data.StructLayout({"slot": slot_bits, "tokens": 16})
        m.submodules.events = events = SyncFIFOBuffered(width=event.size, depth=4)
        m.submodules.jobs = jobs = SyncFIFOBuffered(width=job.size, depth=4)
        # the decoder's writes (reply events, jobs, payload bytes) leave it through registers
        # and land one cycle after its decision: only it writes, and at most once per byte
        ev_in = Signal(event, reset_less=True)
        job_in = Signal(job, reset_less=True)
        ev_we, job_we, byte_we = Signal(), Signal(), Signal()
        byte_addr, byte_data = Signal(abits, reset_less=True), Signal(8, reset_less=True)
        m.d.sync += [ev_we.eq(0), job_we.eq(0), byte_we.eq(0)]
        m.d.comb += [events.w_data.eq(ev_in), events.w_en.eq(ev_we), jobs.w_data.eq(job_in), jobs.w_en.eq(job_we),
                     wr_port.addr.eq(byte_addr), wr_port.data.eq(byte_data), wr_port.en.eq(byte_we)]
        KIND_RESULT, KIND_INFO, KIND_ERROR = 0, 1, 2

        # ---- frame decoder ----
        # Timing: a byte arrives at most once per 10 * divisor cycles and the receiver holds it
        # for at least 1.5 * divisor cycles after `got`, so the decoder acts on it two cycles
        # later (`step`), when every flag it decides on (CRC zero, length limits, buffer full,
        # last byte, end of a token, silence) has been computed from it into a register: no
        # decision waits on a carry chain or a wide compare.
        byte, got = urx.o.payload, urx.o.valid
        got_d, step = Signal(), Signal()
        m.d.sync += [got_d.eq(got), step.eq(got_d)]
        crc = Signal(16, init=0xFFFF)
        crc_next = crc16_update(crc, byte)
        cmd = Signal(8)
        blk = Signal(8)
        length = Signal(16)
        remaining = Signal(16)
        tokens = Signal(16)
        in_token = Signal(range(d))
        slot_ok = Signal()
        overflow = Signal()
        silent = Signal(range(self.timeout + 1))
        error_seen = Signal()
        dropped = Signal()
        slot_of = Signal(slot_bits)

        def reply(kind, code=0):
            """Queue a reply for the frame now ending."""
            m.d.sync += [ev_in.kind.eq(kind), ev_in.code.eq(code), ev_in.block.eq(blk),
                         ev_in.slot.eq(slot_of), ev_in.length.eq(length), ev_we.eq(1)]
            with m.If(~events.w_rdy):
                m.d.sync += dropped.eq(1)

        def error(code):
            reply(KIND_ERROR, code)
            m.d.sync += [wr_ptr.eq(commit_ptr), error_seen.eq(1)]

        crc_ok, len_zero, len_long, buf_full, last_byte, token_end, token_open, expired = (
            Signal(name=n) for n in ("crc_ok", "len_zero", "len_long", "buf_full", "last_byte", "token_end",
                                     "token_open", "expired"))
        full = Cat(length[:8], byte)  # the length field, as its second byte arrives
        m.d.sync += [crc_ok.eq(crc == 0), len_zero.eq(full == 0), len_long.eq(full > frame_bytes),
                     last_byte.eq(remaining == 1), token_end.eq(in_token == d - 1), token_open.eq(in_token != 0),
                     # rd_ptr one cycle old at worst: it only grows, so "full" errs on the safe side
                     buf_full.eq((wr_ptr - rd_ptr)[:abits + 1] == depth)]
        with m.If(got):
            m.d.sync += crc.eq(crc_next)
        with m.If(step):
            m.d.sync += [silent.eq(0), expired.eq(0)]
        with m.Elif(silent != self.timeout):
            m.d.sync += silent.eq(silent + 1)
        with m.Else():
            m.d.sync += expired.eq(1)

        def timed_out():
            """Abort a frame whose bytes stopped (checked in every state but HUNT)."""
            with m.If(~step & expired):
                error(host.ERR_TIMEOUT)
                m.next = "HUNT"

        with m.FSM(name="decoder"):
            with m.State("HUNT"):
                m.d.sync += crc.eq(0xFFFF)
                with m.If(step & (byte == host.SOF_REQUEST)):
                    m.d.sync += [tokens.eq(0), in_token.eq(0), overflow.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                timed_out()
                with m.If(step):
                    m.d.sync += cmd.eq(byte)
                    m.next = "BLOCK"
            with m.State("BLOCK"):
                # the engine slot is decoded as the byte arrives (off the timing path; and a
                # comb decode of a register that never changes stays X in Icarus)
                timed_out()
                with m.If(step):
                    m.d.sync += [blk.eq(byte), slot_ok.eq(0), slot_of.eq(0)]
                    with m.Switch(byte):
                        for k, (index, _) in enumerate(self.engines):
                            with m.Case(index):
                                m.d.sync += [slot_ok.eq(1), slot_of.eq(k)]
                    m.next = "LEN0"
            with m.State("LEN0"):
                timed_out()
                with m.If(step):
                    m.d.sync += length[:8].eq(byte)
                    m.next = "LEN1"
            with m.State("LEN1"):
                timed_out()
                with m.If(step):
                    m.d.sync += [length[8:].eq(byte), remaining.eq(full)]
                    with m.If(cmd == host.CMD_INFER):
                        with m.If(len_zero | len_long):
                            error(host.ERR_LENGTH)
                            m.next = "HUNT"
                        with m.Elif(~slot_ok):
                            error(host.ERR_BLOCK)
                            m.next = "HUNT"
                        with m.Else():
                            m.next = "PAYLOAD"
                    with m.Elif(cmd == host.CMD_INFO):
                        m.next = "CRC0"
                        with m.If(~len_zero):
                            error(host.ERR_LENGTH)
                            m.next = "HUNT"
                    with m.Else():
                        error(host.ERR_COMMAND)
                        m.next = "HUNT"
            with m.State("PAYLOAD"):
                timed_out()
                with m.If(step):
                    with m.If(buf_full):
                        m.d.sync += overflow.eq(1)
                    with m.Else():
                        m.d.sync += [byte_addr.eq(wr_ptr[:abits]), byte_data.eq(byte), byte_we.eq(1)]
                        m.d.sync += wr_ptr.eq(wr_ptr + 1)
                    m.d.sync += [remaining.eq(remaining - 1), in_token.eq(Mux(token_end, 0, in_token + 1))]
                    with m.If(token_end):
                        m.d.sync += tokens.eq(tokens + 1)
                    with m.If(last_byte):
                        m.next = "CRC0"
            with m.State("CRC0"):
                timed_out()
                with m.If(step):
                    m.next = "CRC1"
            with m.State("CRC1"):
                timed_out()
                with m.If(step):
                    m.next = "HUNT"
                    with m.If(~crc_ok):
                        error(host.ERR_CRC)
                    with m.Elif(cmd == host.CMD_INFO):
                        reply(KIND_INFO)
                    with m.Elif(overflow):
                        error(host.ERR_OVERFLOW)
                    with m.Elif(token_open):
                        error(host.ERR_LENGTH)
                    with m.Elif(~events.w_rdy | ~jobs.w_rdy):
                        m.d.sync += [wr_ptr.eq(commit_ptr), dropped.eq(1)]
                    with m.Else():
                        reply(KIND_RESULT)
                        m.d.sync += [job_in.slot.eq(slot_of), job_in.tokens.eq(tokens), job_we.eq(1)]
                        m.d.sync += [commit_ptr.eq(wr_ptr), error_seen.eq(0)]

        # ---- feeder: committed bytes -> tokens -> the selected engine ----
        job_out = data.View(job, jobs.r_data)
        f_slot = Signal(slot_bits)
        f_left = Signal(16)
        f_byte = Signal(range(d))
        shift = Signal()
        # a block RAM's data leaves 5.8 ns after the clock (DP16KD without its output register):
        # into a flip-flop beside it before it goes anywhere
        fetched = Signal(bits, reset_less=True)
        m.d.sync += fetched.eq(rd_port.data[:bits])
        m.d.comb += rd_port.addr.eq(rd_ptr[:abits])
        credits = [Signal(range(s.credits + 1), init=s.credits, name=f"credits{k}") for k, s in enumerate(sockets)]
        push = [Signal(name=f"push{k}") for k in range(n_eng)]
        for k, socket in enumerate(sockets):
            # every socket sees every feature (only the one pushed next uses them)
            m.d.comb += [socket.feature.eq(fetched), socket.shift.eq(shift), socket.push.eq(push[k])]
            m.d.sync += credits[k].eq(credits[k] + socket.credit - push[k])
        ready = Array(c != 0 for c in credits)[f_slot]
        spacing = max(s.spacing for s in sockets)  # a folded engine takes a token every `fold` clocks
        if spacing > 1 and self.engine_domain != "sync":
            spacing += 4  # the crossing may move a push by a few engine clocks (<= link clocks)
        if spacing > 1:
            wait = Signal(range(spacing), name="spacing_wait")
            with m.If(Cat(*push).any()):
                m.d.sync += wait.eq(spacing - 1)
            with m.Elif(wait != 0):
                m.d.sync += wait.eq(wait - 1)
            ready &= wait == 0
        with m.FSM(name="feeder") as feeder:
            with m.State("IDLE"):
                with m.If(jobs.r_rdy):
                    m.d.comb += jobs.r_en.eq(1)
                    m.d.sync += [f_slot.eq(job_out.slot), f_left.eq(job_out.tokens), f_byte.eq(0)]
                    m.next = "READ"
            with m.State("READ"):  # the read port answers one cycle later, into `fetched` one more
                m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.comb += shift.eq(1)
                m.d.sync += rd_ptr.eq(rd_ptr + 1)
                m.d.sync += f_byte.eq(Mux(f_byte == d - 1, 0, f_byte + 1))
                m.next = "READ"
                with m.If(f_byte == d - 1):
                    m.next = "PUSH"
            with m.State("PUSH"):
                with m.If(ready):
                    m.d.comb += Array(push)[f_slot].eq(1)
                    m.d.sync += f_left.eq(f_left - 1)
                    m.next = "READ"
                    with m.If(f_left == 1):
                        m.next = "IDLE"

        # ---- reply encoder: events in order; RESULT payload streams from the engine ----
        # Timing: the UART transmitter is busy for 10 * divisor cycles after taking a byte, so
        # the payload byte and the CRC are computed through registers a few cycles behind and
        # are current when it takes the next one.
        ev = Signal(event)
        ev_next = data.View(event, events.r_data)
        tx_byte = Signal(8)
        tx_valid = Signal()
        tx_crc_on = Signal()
        e_crc = Signal(16, init=0xFFFF)
        e_len = Signal(16)
        e_left = Signal(16)
        have = Signal()  # the RESULT payload byte has arrived from the socket
        info_bytes = self.info.encode()
        info_rom = Array(Const(b, 8) for b in info_bytes)
        index = Signal(range(len(info_bytes) + 1))  # byte of the INFO payload
        payload_byte = Signal(8)
        # each count of a RESULT is pulled from the socket and arrives some cycles later
        result = Array(socket.result for socket in sockets)[ev.slot]
        result_valid = Array(socket.result_valid for socket in sockets)[ev.slot]
        pull = Signal()
        asked = Signal()
        for k, socket in enumerate(sockets):
            m.d.comb += socket.pull.eq(pull & (ev.slot == k))
        with m.Switch(ev.kind):
            with m.Case(KIND_RESULT):
                with m.If(result_valid):
                    m.d.sync += payload_byte.eq(result)
            with m.Case(KIND_INFO):
                m.d.sync += payload_byte.eq(info_rom[index])
            with m.Default():
                m.d.sync += payload_byte.eq(ev.code)
        m.d.comb += [utx.i.payload.eq(tx_byte), utx.i.valid.eq(tx_valid)]
        sent = tx_valid & utx.i.ready
        crc_pending = Signal()
        crc_byte = Signal(8)
        m.d.sync += [crc_pending.eq(sent & tx_crc_on), crc_byte.eq(tx_byte)]
        with m.If(crc_pending):
            m.d.sync += e_crc.eq(crc16_update(e_crc, crc_byte))
        reply_kind = Array([C(host.REPLY_RESULT, 8), C(host.REPLY_INFO, 8), C(host.REPLY_ERROR, 8),
                            C(host.REPLY_ERROR, 8)])[ev.kind]
        with m.FSM(name="encoder") as encoder:
            with m.State("IDLE"):
                with m.If(events.r_rdy):
                    m.d.comb += events.r_en.eq(1)
                    m.d.sync += [ev.eq(ev_next), e_crc.eq(0xFFFF), have.eq(0), index.eq(0),
                                 e_len.eq(Mux(ev_next.kind == KIND_RESULT, ev_next.length,
                                              Mux(ev_next.kind == KIND_INFO, len(info_bytes), 1)))]
                    m.next = "SOF"
            header = [("SOF", C(host.SOF_REPLY, 8), False, "KIND"), ("KIND", reply_kind, True, "BLOCK"),
                      ("BLOCK", ev.block, True, "LEN0"), ("LEN0", e_len[:8], True, "LEN1"),
                      ("LEN1", e_len[8:], True, "PAYLOAD")]
            for state, value, crc_on, nxt in header:
                with m.State(state):
                    m.d.comb += [tx_byte.eq(value), tx_valid.eq(1), tx_crc_on.eq(crc_on)]
                    m.d.sync += e_left.eq(e_len)
                    with m.If(sent):
                        m.next = nxt
            with m.State("PAYLOAD"):
                m.d.comb += [tx_byte.eq(payload_byte), tx_crc_on.eq(1)]
                with m.If((ev.kind == KIND_RESULT) & ~have):  # fetch the next count
                    m.d.comb += pull.eq(~asked)
                    m.d.sync += asked.eq(1)
                    with m.If(result_valid):
                        m.d.sync += [have.eq(1), asked.eq(0)]
                with m.Else():
                    m.d.comb += tx_valid.eq(1)
                    with m.If(sent):
                        m.d.sync += [e_left.eq(e_left - 1), index.eq(index + 1), have.eq(0)]
                        with m.If(e_left == 1):
                            m.next = "CRC0"
            for state, value, nxt in (("CRC0", e_crc[8:], "CRC1"), ("CRC1", e_crc[:8], "IDLE")):
                with m.State(state):
                    m.d.comb += [tx_byte.eq(value), tx_valid.eq(1)]
                    with m.If(sent):
                        m.next = nxt

        # ---- LEDs: 0 heartbeat, 1 rx activity, 2 tx activity, 3 last frame refused,
        # 4 engine work pending, 5 a reply was dropped (sticky until reset). Pulses and
        # outputs go through registers: the LED pins sit far from the link logic. ----
        heartbeat = Signal(range(self.stretch * 8))
        rx_led = Signal(range(self.stretch + 1))
        tx_led = Signal(range(self.stretch + 1))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        for led, pulse in ((rx_led, got), (tx_led, sent)):
            pulse_r = Signal()
            m.d.sync += pulse_r.eq(pulse)
            with m.If(pulse_r):
                m.d.sync += led.eq(self.stretch)
            with m.Elif(led != 0):
                m.d.sync += led.eq(led - 1)
        m.d.sync += self.leds.eq(Cat(heartbeat[-1], rx_led != 0, tx_led != 0, error_seen,
                                     ~feeder.ongoing("IDLE") | ~encoder.ongoing("IDLE"), dropped))
        return m


def pll_params(clock_in_hz, clock_hz, second_hz=None):
    """EHXPLLL dividers (CLKI_DIV, CLKFB_DIV, CLKOP_DIV) giving exactly `clock_hz` from `clock_in_hz`
    with the VCO in 400-800 MHz (closest to 600); ValueError when none does. With `second_hz`,
    also CLKOS_DIV for a second output of exactly that frequency from the same VCO."""
    best = None
    for clki in range(1, 129):
        for fb in range(1, 81):
            out = clock_in_hz * fb / clki
            if out != clock_hz or not 3.125e6 <= clock_in_hz / clki <= 400e6:
                continue
            for op in range(1, 129):
                vco = out * op
                os_div = round(vco / second_hz) if second_hz else 0
                if second_hz and not (1 <= os_div <= 128 and vco / os_div == second_hz):
                    continue
                if 400e6 <= vco <= 800e6 and (best is None or abs(vco - 600e6) < abs(best[3] - 600e6)):
                    best = (clki, fb, op, vco, os_div)
    if best is None:
        also = f" and {second_hz / 1e6:g} MHz" if second_hz else ""
        raise ValueError(f"no ECP5 PLL setting makes {clock_hz / 1e6:g} MHz{also} from {clock_in_hz / 1e6:g} MHz")
    return best[:3] + ((best[4],) if second_hz else ())


class BoardTop(Elaboratable):
    """A `LinkCore` on an amaranth_boards ULX3S platform: PLL to `clock_hz`, reset on
    `reset_button`, UART on the FT231X pins, LEDs 0-7. When the core's engines have a domain
    of their own, the PLL's second output clocks it at `engine_clock_hz` (>= clock_hz)."""

    def __init__(self, core, *, clock_hz, reset_button="button_fire", engine_clock_hz=None):
        self.core, self.clock_hz, self.reset_button = core, clock_hz, reset_button
        self.engine_domain = getattr(core, "engine_domain", "sync")
        self.engine_clock_hz = engine_clock_hz or clock_hz
        if (self.engine_domain == "sync") != (self.engine_clock_hz == clock_hz):
            raise ValueError(f"engine clock {self.engine_clock_hz!r} Hz with engine domain {self.engine_domain!r}: "
                             f"a second clock needs a core whose engines have their own domain, and back")
        if self.engine_clock_hz < clock_hz:
            raise ValueError(f"the engine clock ({self.engine_clock_hz / 1e6:g} MHz) must be at least the link's "
                             f"({clock_hz / 1e6:g} MHz)")

    def elaborate(self, platform):
        m = Module()
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        clk_in = clk_buf.i
        clock_in_hz = platform.default_clk_frequency
        m.domains.sync = cd_sync = ClockDomain("sync")
        two = self.engine_domain != "sync"
        if two:
            cd_engine = ClockDomain(self.engine_domain)
            m.domains += cd_engine
        locked = Signal(init=1)
        if self.clock_hz == clock_in_hz and not two:
            m.d.comb += cd_sync.clk.eq(clk_in)
        else:
            clki, fb, op, *second = pll_params(clock_in_hz, self.clock_hz, self.engine_clock_hz if two else None)
            extra = {}
            if two:
                extra = dict(a_FREQUENCY_PIN_CLKOS=f"{self.engine_clock_hz / 1e6:g}", p_CLKOS_ENABLE="ENABLED",
                             p_CLKOS_DIV=second[0], p_CLKOS_CPHASE=second[0] // 2, p_CLKOS_FPHASE=0,
                             o_CLKOS=cd_engine.clk, i_ENCLKOS=0)
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{clock_in_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=clki, p_CLKFB_DIV=fb, p_CLKOP_DIV=op, p_CLKOP_CPHASE=op // 2, p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=cd_sync.clk, i_CLKFB=cd_sync.clk, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
                i_ENCLKOP=0, o_LOCK=locked, **extra)
            # no add_clock_constraint: nextpnr derives the PLL output's constraint from the dividers
        m.submodules.button_buf = button = io.Buffer("i", platform.request(self.reset_button, 0, dir="-"))
        m.submodules.reset_sync = ResetSynchronizer(button.i | ~locked, domain="sync")
        if two:
            m.submodules.engine_reset_sync = ResetSynchronizer(button.i | ~locked, domain=self.engine_domain)

        m.submodules.core = core = self.core
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx.i), tx.o.eq(core.tx)]
        for i in range(LEDS):
            m.submodules[f"led{i}_buf"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(core.leds[i])
        return m
