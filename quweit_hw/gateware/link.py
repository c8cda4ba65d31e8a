"""`LinkCore`: the bundle's MLP engines behind a framed UART link (docs/uart-protocol.md).

The whole board design minus the pins: UART receiver and transmitter, the frame
decoder (CRC, length and block checks, an inter-byte timeout), a payload buffer that
commits a frame only once its CRC checks, the feeder that turns committed bytes into
tokens for the engine the frame selects, and the reply encoder that streams counts
out as the engine produces them. Every frame gets exactly one reply, in frame order.
`quweit_hw.gateware.top.BoardTop` adds the pins.
"""

from amaranth import Array, C, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import protocol
from ..contract.protocol import BoardInfo
from .engine_socket import EngineSocket
from .uart import UARTRx, UARTTx

LEDS = 8


def crc16_update(crc, byte):
    """CRC-16/CCITT-FALSE register after shifting in `byte` MSB first (same as protocol.crc16)."""
    for i in reversed(range(8)):
        feedback = byte[i] ^ crc[15]
        crc = (crc << 1)[:16] ^ Mux(feedback, 0x1021, 0)
    return crc


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
        self.info = BoardInfo(protocol.PROTOCOL_VERSION, self.d, self.bits, self.count_width, max_tokens,
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
                error(protocol.ERR_TIMEOUT)
                m.next = "HUNT"

        with m.FSM(name="decoder"):
            with m.State("HUNT"):
                m.d.sync += crc.eq(0xFFFF)
                with m.If(step & (byte == protocol.SOF_REQUEST)):
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
                    with m.If(cmd == protocol.CMD_INFER):
                        with m.If(len_zero | len_long):
                            error(protocol.ERR_LENGTH)
                            m.next = "HUNT"
                        with m.Elif(~slot_ok):
                            error(protocol.ERR_BLOCK)
                            m.next = "HUNT"
                        with m.Else():
                            m.next = "PAYLOAD"
                    with m.Elif(cmd == protocol.CMD_INFO):
                        m.next = "CRC0"
                        with m.If(~len_zero):
                            error(protocol.ERR_LENGTH)
                            m.next = "HUNT"
                    with m.Else():
                        error(protocol.ERR_COMMAND)
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
                        error(protocol.ERR_CRC)
                    with m.Elif(cmd == protocol.CMD_INFO):
                        reply(KIND_INFO)
                    with m.Elif(overflow):
                        error(protocol.ERR_OVERFLOW)
                    with m.Elif(token_open):
                        error(protocol.ERR_LENGTH)
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
        reply_kind = Array([C(protocol.REPLY_RESULT, 8), C(protocol.REPLY_INFO, 8), C(protocol.REPLY_ERROR, 8),
                            C(protocol.REPLY_ERROR, 8)])[ev.kind]
        with m.FSM(name="encoder") as encoder:
            with m.State("IDLE"):
                with m.If(events.r_rdy):
                    m.d.comb += events.r_en.eq(1)
                    m.d.sync += [ev.eq(ev_next), e_crc.eq(0xFFFF), have.eq(0), index.eq(0),
                                 e_len.eq(Mux(ev_next.kind == KIND_RESULT, ev_next.length,
                                              Mux(ev_next.kind == KIND_INFO, len(info_bytes), 1)))]
                    m.next = "SOF"
            header = [("SOF", C(protocol.SOF_REPLY, 8), False, "KIND"), ("KIND", reply_kind, True, "BLOCK"),
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
