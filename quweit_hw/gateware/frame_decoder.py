"""`FrameDecoder`: request frames from the UART into payload-buffer writes, jobs and reply events."""

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from ..contract import protocol

# what a reply event asks the encoder for (`event_layout`'s `kind`)
KIND_RESULT, KIND_INFO, KIND_ERROR = 0, 1, 2


def event_layout(slot_bits):
    """A reply to send: its kind, reply type byte, error code, bundle block, slot and payload length."""
    return data.StructLayout({"kind": 2, "reply": 8, "code": 8, "block": 8, "slot": slot_bits, "length": 16})


def job_layout(slot_bits, command_bits=1):
    """Work for the feeder: the request (its index among the decoder's work commands), the
    slot and how many tokens of the payload buffer it takes."""
    return data.StructLayout({"command": command_bits, "slot": slot_bits, "tokens": 16})


def queue_write(shape):
    """A write into a queue that may refuse it: `data` with a one-cycle `en`, taken while `rdy`
    is high (the writer looks at `rdy` when it decides, and drops what finds it low). Unlike a
    stream's, `en` is not held until taken."""
    return wiring.Signature({"data": Out(shape), "en": Out(1), "rdy": In(1)})


def decoder_sizes(requests):
    """(slot_bits, command_bits) of a decoder for `requests` (protocol.Request)."""
    slots = max((len(q.blocks) for q in requests if q.blocks is not None), default=1)
    work = sum(not q.info for q in requests)
    return max(1, (slots - 1).bit_length()), max(1, (work - 1).bit_length())


class FrameDecoder(wiring.Component):
    """Checks request frames byte by byte (CRC, command, block, length, an inter-byte timeout)
    against a table of `protocol.Request`s (`protocol.mlp_requests`, `protocol.model_requests`)
    and turns each into exactly one reply event, in order; an accepted frame's payload goes
    into the payload buffer, and a job for the feeder goes with its reply.

    Timing: a byte arrives at most once per 10 * divisor cycles and the receiver holds it for
    at least 1.5 * divisor cycles after its `valid`, so the decoder acts on it two cycles later
    (`step`), when every flag it decides on (CRC residue, length limits, buffer full, last
    byte, end of a token, silence) has been computed from it into a register: no decision
    waits on a carry chain or a wide compare. The CRC unit (`protocol.CRC`'s `Processor`) takes
    the byte as it arrives and holds the new CRC a cycle later, in time for `crc_ok`. All of
    the decoder's writes (reply events, jobs, payload bytes) leave it through registers and
    land one cycle after its decision: only it writes, and at most once per byte.

    Parameters
    ----------
    requests : tuple of protocol.Request
        The commands accepted: their codes, lengths, blocks and replies.
    d : int
        Bytes per token (a work frame's payload must be a whole number of them; 1: any).
    depth : int
        Bytes in the payload buffer (a power of 2, at least two frames).
    timeout : int
        Cycles of silence that abort a frame in progress.

    Attributes
    ----------
    i : In(stream.Signature(8, always_ready=True))
        Bytes from the UART receiver, a one-cycle `valid` each, held for some cycles after.
    buffer : In(WritePort.Signature(addr_width=log2(depth), shape=8))
        The payload buffer's write port (registered address, data and enable).
    rd_ptr : In(log2(depth) + 1)
        The feeder's read pointer into the payload buffer (one extra bit tells full from
        empty); the decoder never overwrites a byte at or after it.
    events : Out(queue_write(event_layout(slot_bits)))
        One reply event per frame, to the reply encoder's queue (registered).
    jobs : Out(queue_write(job_layout(slot_bits, command_bits)))
        One job per accepted work frame, to the feeder's queue (registered); its `command` is
        the request's index among the work (non-INFO) requests, in table order.
    refused : Out(1)
        The last finished frame was refused (set by an error reply, cleared by an accepted
        work frame).
    dropped : Out(1)
        A reply or an accepted frame had to be dropped, its queue being full; sticky until reset.
    """

    def __init__(self, requests, *, d, depth, timeout):
        self.requests, self.d, self.depth, self.timeout = tuple(requests), d, depth, timeout
        codes = [q.code for q in self.requests]
        if len(set(codes)) != len(codes):
            raise ValueError(f"request codes {codes!r} repeat")
        self.work = [q for q in self.requests if not q.info]
        self.abits = depth.bit_length() - 1
        self.slot_bits, self.command_bits = decoder_sizes(self.requests)
        self.event, self.job = event_layout(self.slot_bits), job_layout(self.slot_bits, self.command_bits)
        super().__init__({
            "i": In(stream.Signature(8, always_ready=True)),
            "buffer": In(WritePort.Signature(addr_width=self.abits, shape=8)),
            "rd_ptr": In(self.abits + 1),
            "events": Out(queue_write(self.event)),
            "jobs": Out(queue_write(self.job)),
            "refused": Out(1),
            "dropped": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        byte, got = self.i.payload, self.i.valid
        got_d, step = Signal(), Signal()
        m.d.sync += [got_d.eq(got), step.eq(got_d)]
        m.submodules.crc = crc = protocol.CRC.create()
        regs = self._registers(m)
        self._flags(m, regs, crc)
        timed_out = self._silence(m, regs, step)
        with m.FSM(name="decoder") as fsm:
            self._header(m, regs, step, timed_out)
            self._payload_and_crc(m, regs, step, timed_out)
        # the CRC runs over command .. CRC; in HUNT it waits at its initial value
        m.d.comb += [crc.data.eq(byte), crc.valid.eq(got & ~fsm.ongoing("HUNT")), crc.start.eq(fsm.ongoing("HUNT"))]
        return m

    def _registers(self, m):
        """The decoder's state besides its FSM, as a namespace; the writes' output registers."""
        r = SimpleNamespace()
        r.wr_ptr, r.commit_ptr = Signal(self.abits + 1, name="wr_ptr"), Signal(self.abits + 1, name="commit_ptr")
        r.cmd, r.blk, r.length, r.remaining, r.tokens = (Signal(w, name=n) for w, n in (
            (8, "cmd"), (8, "blk"), (16, "length"), (16, "remaining"), (16, "tokens")))
        r.in_token = Signal(range(self.d))
        r.slot_ok, r.overflow = Signal(), Signal()
        # the request table's entry for the command byte, decoded into registers as it arrives
        r.known, r.info, r.same_length = Signal(), Signal(), Signal()
        r.reply_code, r.reply_length = Signal(8), Signal(16)
        r.command = Signal(self.command_bits)
        r.slot_of = Signal(self.slot_bits)
        r.silent = Signal(range(self.timeout + 1))
        # the writes leave through registers: data without reset, one-cycle enables
        ev_in, job_in = Signal(self.event, reset_less=True), Signal(self.job, reset_less=True)
        ev_we, job_we, byte_we = Signal(), Signal(), Signal()
        r.byte_addr, r.byte_data = Signal(self.abits, reset_less=True), Signal(8, reset_less=True)
        m.d.sync += [ev_we.eq(0), job_we.eq(0), byte_we.eq(0)]
        m.d.comb += [self.events.data.eq(ev_in), self.events.en.eq(ev_we),
                     self.jobs.data.eq(job_in), self.jobs.en.eq(job_we),
                     self.buffer.addr.eq(r.byte_addr), self.buffer.data.eq(r.byte_data), self.buffer.en.eq(byte_we)]
        r.ev_in, r.ev_we, r.job_in, r.job_we, r.byte_we = ev_in, ev_we, job_in, job_we, byte_we
        r.full = Cat(r.length[:8], self.i.payload)  # the length field, as its second byte arrives
        return r

    def _flags(self, m, r, crc):
        """Every flag a decision looks at, a register computed from the byte before `step`."""
        r.crc_ok, r.len_bad, r.buf_full, r.last_byte, r.token_end, r.token_open, r.expired = (
            Signal(name=n) for n in ("crc_ok", "len_bad", "buf_full", "last_byte", "token_end",
                                     "token_open", "expired"))
        with m.Switch(r.cmd):  # the length's limits of the command's request
            for q in self.requests:
                with m.Case(q.code):
                    m.d.sync += r.len_bad.eq((r.full < q.min_length) | (r.full > q.max_length))
        m.d.sync += [r.crc_ok.eq(crc.match_detected),  # the CRC register holds the residue (0)
                     r.last_byte.eq(r.remaining == 1), r.token_end.eq(r.in_token == self.d - 1),
                     r.token_open.eq(r.in_token != 0),
                     # rd_ptr one cycle old at worst: it only grows, so "full" errs on the safe side
                     r.buf_full.eq((r.wr_ptr - self.rd_ptr)[:self.abits + 1] == self.depth)]

    def _reply(self, m, r, kind, code=0):
        """Queue a reply for the frame now ending."""
        m.d.sync += [r.ev_in.kind.eq(kind), r.ev_in.code.eq(code), r.ev_in.block.eq(r.blk),
                     r.ev_in.reply.eq(protocol.REPLY_ERROR if kind == KIND_ERROR else r.reply_code),
                     r.ev_in.slot.eq(r.slot_of), r.ev_in.length.eq(Mux(r.same_length, r.length, r.reply_length)),
                     r.ev_we.eq(1)]
        with m.If(~self.events.rdy):
            m.d.sync += self.dropped.eq(1)

    def _error(self, m, r, code):
        """Refuse the frame now ending: an error reply, and its payload bytes forgotten."""
        self._reply(m, r, KIND_ERROR, code)
        m.d.sync += [r.wr_ptr.eq(r.commit_ptr), self.refused.eq(1)]

    def _silence(self, m, r, step):
        """The inter-byte timer (`expired` a register), and `timed_out()` for the FSM's states."""
        with m.If(step):
            m.d.sync += [r.silent.eq(0), r.expired.eq(0)]
        with m.Elif(r.silent != self.timeout):
            m.d.sync += r.silent.eq(r.silent + 1)
        with m.Else():
            m.d.sync += r.expired.eq(1)

        def timed_out():
            """Abort a frame whose bytes stopped (checked in every state but HUNT)."""
            with m.If(~step & r.expired):
                self._error(m, r, protocol.ERR_TIMEOUT)
                m.next = "HUNT"
        return timed_out

    def _header(self, m, r, step, timed_out):
        """HUNT for the start marker, then command, block and length; decide on the length."""
        byte = self.i.payload
        with m.State("HUNT"):
            with m.If(step & (byte == protocol.SOF_REQUEST)):
                m.d.sync += [r.tokens.eq(0), r.in_token.eq(0), r.overflow.eq(0)]
                m.next = "CMD"
        with m.State("CMD"):
            timed_out()
            with m.If(step):
                m.d.sync += [r.cmd.eq(byte), r.known.eq(0)]
                with m.Switch(byte):
                    for q in self.requests:
                        with m.Case(q.code):
                            m.d.sync += [r.known.eq(1), r.info.eq(q.info), r.reply_code.eq(q.reply),
                                         r.same_length.eq(q.reply_length is None),
                                         r.reply_length.eq(q.reply_length or 0),
                                         r.command.eq(self.work.index(q) if not q.info else 0)]
                m.next = "BLOCK"
        with m.State("BLOCK"):
            # the slot is decoded as the byte arrives (off the timing path; and a comb decode
            # of a register that never changes stays X in Icarus)
            timed_out()
            with m.If(step):
                m.d.sync += [r.blk.eq(byte), r.slot_ok.eq(1), r.slot_of.eq(0)]
                with m.Switch(r.cmd):
                    for q in self.requests:
                        if q.blocks is not None:
                            with m.Case(q.code):
                                m.d.sync += r.slot_ok.eq(0)
                                with m.Switch(byte):
                                    for k, index in enumerate(q.blocks):
                                        with m.Case(index):
                                            m.d.sync += [r.slot_ok.eq(1), r.slot_of.eq(k)]
                m.next = "LEN0"
        with m.State("LEN0"):
            timed_out()
            with m.If(step):
                m.d.sync += r.length[:8].eq(byte)
                m.next = "LEN1"
        with m.State("LEN1"):
            timed_out()
            with m.If(step):
                m.d.sync += [r.length[8:].eq(byte), r.remaining.eq(r.full)]
                m.next = "HUNT"
                with m.If(~r.known):
                    self._error(m, r, protocol.ERR_COMMAND)
                with m.Elif(r.len_bad):
                    self._error(m, r, protocol.ERR_LENGTH)
                with m.Elif(~r.slot_ok):
                    self._error(m, r, protocol.ERR_BLOCK)
                with m.Elif(r.info):  # no payload (its length is 0 by the table)
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYLOAD"

    def _payload_and_crc(self, m, r, step, timed_out):
        """The payload into the buffer, then the CRC; the frame's one reply (and job)."""
        with m.State("PAYLOAD"):
            timed_out()
            with m.If(step):
                with m.If(r.buf_full):
                    m.d.sync += r.overflow.eq(1)
                with m.Else():
                    m.d.sync += [r.byte_addr.eq(r.wr_ptr[:self.abits]), r.byte_data.eq(self.i.payload),
                                 r.byte_we.eq(1), r.wr_ptr.eq(r.wr_ptr + 1)]
                m.d.sync += [r.remaining.eq(r.remaining - 1), r.in_token.eq(Mux(r.token_end, 0, r.in_token + 1))]
                with m.If(r.token_end):
                    m.d.sync += r.tokens.eq(r.tokens + 1)
                with m.If(r.last_byte):
                    m.next = "CRC0"
        with m.State("CRC0"):
            timed_out()
            with m.If(step):
                m.next = "CRC1"
        with m.State("CRC1"):
            timed_out()
            with m.If(step):
                m.next = "HUNT"
                with m.If(~r.crc_ok):
                    self._error(m, r, protocol.ERR_CRC)
                with m.Elif(r.info):
                    self._reply(m, r, KIND_INFO)
                with m.Elif(r.overflow):
                    self._error(m, r, protocol.ERR_OVERFLOW)
                with m.Elif(r.token_open):
                    self._error(m, r, protocol.ERR_LENGTH)
                with m.Elif(~self.events.rdy | ~self.jobs.rdy):
                    m.d.sync += [r.wr_ptr.eq(r.commit_ptr), self.dropped.eq(1)]
                with m.Else():
                    self._reply(m, r, KIND_RESULT)
                    m.d.sync += [r.job_in.command.eq(r.command), r.job_in.slot.eq(r.slot_of),
                                 r.job_in.tokens.eq(r.tokens), r.job_we.eq(1),
                                 r.commit_ptr.eq(r.wr_ptr), self.refused.eq(0)]
