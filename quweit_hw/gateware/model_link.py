"""`ModelLinkCore`: the whole-model engine behind the framed UART link, protocol version 2
(docs/uart-protocol.md).

The link side (the system clock: UART, `FrameDecoder` against `protocol.model_requests`, the
payload buffer, `PayloadFeeder`, `ReplyEncoder`, `StatusLEDs`) is `LinkCore`'s; the engine
side (`ModelRunner`: the `ModelEngine`, the batch memory and the benchmark's counters) runs in
a clock domain of its own, and two `amaranth.lib.fifo.AsyncFIFO`s join them: payload bytes
in, reply payload bytes out. Every frame gets exactly one reply, in frame order.
`quweit_hw.gateware.top.BoardTop` adds the pins.
"""

from types import SimpleNamespace

from amaranth import Cat, DomainRenamer, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import AsyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from ..contract import protocol
from ..contract.protocol import ModelInfo, ModelResult
from .frame_decoder import FrameDecoder, decoder_sizes, job_layout, queue_write
from .model_units import times_constant
from .reply_encoder import ReplyEncoder
from .status_leds import LEDS, StatusLEDs
from .uart import UARTRx, UARTTx

__all__ = ["LEDS", "ModelLinkCore", "ModelRunner", "PayloadFeeder"]

CROSSING_DEPTH = 16  # words of each clock-crossing FIFO: a handshake each way, nothing is ever dropped
IMAGE, LOAD, BENCH = 0, 1, 2  # the work commands' indices in protocol.model_requests (the jobs' `command`)


def word_layout(slot_bits, command_bits):
    """A payload byte on its way to the engine side, with its frame's command and slot."""
    return data.StructLayout({"byte": 8, "command": command_bits, "slot": slot_bits})


class PayloadFeeder(wiring.Component):
    """Takes jobs in order from its queue and sends each job's payload bytes, read from the
    payload buffer, on `o` with the job's command and slot. The buffer is a block RAM whose
    data goes into a flip-flop beside it first (as in `Feeder`): three clocks per byte, far
    faster than the UART brings them.

    Attributes
    ----------
    jobs : In(queue_write(job_layout(slot_bits, command_bits)))
        The job queue's write side (from the frame decoder).
    buffer : In(ReadPort.Signature(addr_width=abits, shape=8))
        The payload buffer's read port.
    rd_ptr : Out(abits + 1)
        The next byte to read (one extra bit tells a full buffer from an empty one).
    o : Out(stream.Signature(word_layout(slot_bits, command_bits)))
        The payload bytes, to the engine side.
    busy : Out(1)
        A job is being sent.
    """

    JOB_QUEUE = 4

    def __init__(self, *, abits, slot_bits, command_bits):
        self.abits, self.job = abits, job_layout(slot_bits, command_bits)
        super().__init__({
            "jobs": In(queue_write(self.job)),
            "buffer": In(ReadPort.Signature(addr_width=abits, shape=8)),
            "rd_ptr": Out(abits + 1),
            "o": Out(stream.Signature(word_layout(slot_bits, command_bits))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = SyncFIFOBuffered(width=self.job.size, depth=self.JOB_QUEUE)
        m.d.comb += [queue.w_data.eq(self.jobs.data), queue.w_en.eq(self.jobs.en), self.jobs.rdy.eq(queue.w_rdy)]
        job, current = data.View(self.job, queue.r_data), Signal(self.job)
        fetched = Signal(8, reset_less=True)  # a block RAM's data into a flip-flop beside it first
        m.d.sync += fetched.eq(self.buffer.data)
        m.d.comb += [self.buffer.addr.eq(self.rd_ptr[:self.abits]), self.o.payload.byte.eq(fetched),
                     self.o.payload.command.eq(current.command), self.o.payload.slot.eq(current.slot)]
        with m.FSM(name="payload_feeder") as fsm:
            with m.State("IDLE"):
                with m.If(queue.r_rdy):
                    m.d.comb += queue.r_en.eq(1)
                    m.d.sync += current.eq(job)
                    m.next = "READ"
            with m.State("READ"):  # the read port answers a clock later, into `fetched` one more
                m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += [self.rd_ptr.eq(self.rd_ptr + 1), current.tokens.eq(current.tokens - 1)]
                    m.next = "READ"
                    with m.If(current.tokens == 1):
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class ModelRunner(wiring.Component):
    """The engine side: runs each job's bytes (`i`) through the `ModelEngine` and sends its
    reply's payload bytes on `o` (docs/uart-protocol.md, version 2):

    - IMAGE: the pixels into the engine; its result (class, cycles, logits) back, read in
      place from the engine's output and popped after its last byte;
    - LOAD: the pixels into the batch memory at slot * pixels; then the slot byte;
    - BENCH (slot n - 1, payload R): slots 0 .. n-1 into the engine back to back, R times
      (0 meaning 65536), a pixel per clock from the batch memory, every result taken as it
      comes; then the clocks from entering the run to the last result (LE48) and the sum of
      every logit (LE32). The sum adds one logit per clock from a copy, while the next image's
      pixels go in, so it never holds the engine up (the engine's output waits while it does).

    Parameters
    ----------
    engine : ModelEngine
    batch : int
        Images the batch memory holds.
    slot_bits, command_bits : int
        The decoder's field widths (`frame_decoder.decoder_sizes`).
    """

    def __init__(self, engine, *, batch, slot_bits, command_bits):
        self.engine, self.batch = engine, batch
        self.pixels, self.classes = engine.pixels, engine.compiled.classes
        super().__init__({"i": In(stream.Signature(word_layout(slot_bits, command_bits))),
                          "o": Out(stream.Signature(8)), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        P = self.pixels
        m.submodules.batch = batch = Memory(shape=8, depth=self.batch * P, init=[])
        word = self.i.payload
        slot, count = Signal(range(self.batch)), Signal(range(self.batch * P + 1))
        index = Signal(range(max(P, ModelResult.size(self.classes), protocol.BENCH_REPLY_BYTES) + 1))
        result = Cat(engine.o.payload.label, Signal(8 - len(engine.o.payload.label)), engine.cycles,
                     engine.o.payload.logits.as_value())
        wr = batch.write_port()
        m.d.comb += [wr.addr.eq(count), wr.data.eq(word.byte)]
        bench = self._bench(m, batch.read_port(), slot)
        with m.FSM(name="runner") as fsm:
            with m.State("IDLE"):
                m.d.sync += [count.eq(0), index.eq(0)]
                with m.If(self.i.valid):
                    m.d.sync += slot.eq(word.slot)
                    with m.Switch(word.command):
                        with m.Case(IMAGE):
                            m.next = "IMAGE"
                        with m.Case(LOAD):
                            m.d.sync += count.eq(times_constant(word.slot, P))
                            m.next = "LOAD"
                        with m.Case(BENCH):
                            m.next = "BENCH_ARGS"
            with m.State("IMAGE"):
                m.d.comb += [engine.i.payload.eq(word.byte), engine.i.valid.eq(self.i.valid),
                             self.i.ready.eq(engine.i.ready)]
                with m.If(self.i.valid & engine.i.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == P - 1):
                        m.next = "RESULT"
            with m.State("RESULT"):  # the engine's output, a byte at a time, then popped
                m.d.comb += [self.o.payload.eq(result.word_select(index, 8)), self.o.valid.eq(engine.o.valid)]
                with m.If(self.o.valid & self.o.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == ModelResult.size(self.classes) - 1):
                        m.d.comb += engine.o.ready.eq(1)
                        m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += [count.eq(count + 1), index.eq(index + 1)]
                    with m.If(index == P - 1):
                        m.next = "LOADED"
            with m.State("LOADED"):
                m.d.comb += [self.o.payload.eq(slot), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
            with m.State("BENCH_ARGS"):  # repeats R, little-endian
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [bench.repeats.word_select(index[0], 8).eq(word.byte), index.eq(index + 1)]
                    with m.If(index == protocol.BENCH_REQUEST_BYTES - 1):
                        m.d.sync += index.eq(0)
                        m.next = "BENCH_START"
            with m.State("BENCH_START"):
                m.d.comb += bench.start.eq(1)
                m.next = "BENCH_RUN"
            with m.State("BENCH_RUN"):
                m.d.comb += bench.run.eq(1)
                with m.If(bench.done):
                    m.next = "BENCH_REPLY"
            with m.State("BENCH_REPLY"):
                m.d.comb += [self.o.payload.eq(bench.reply.word_select(index, 8)), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == protocol.BENCH_REPLY_BYTES - 1):
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

    def _bench(self, m, rd, slot):
        """The benchmark's feeder, result taker, cycle counter and checksum; its controls."""
        engine, P, C = self.engine, self.pixels, self.classes
        repeats = Signal(16)
        start, run, done = Signal(), Signal(), Signal()
        end = Signal(range(self.batch * P + 1))      # pixels of the n images
        addr = Signal(range(self.batch * P))
        reps_left = Signal(17)                       # passes still to feed
        # results still to come, as passes and results of the current pass (less one): two
        # counters, not the product (slot + 1) * passes, whose multiplier was the 60 MHz whole-
        # model top's critical path (17.2 ns, 11.5 of it routing to and from a MULT18X18D)
        passes_out, outs_in_pass = Signal(17), Signal.like(slot)
        total = Signal(8 * protocol.BENCH_CYCLE_BYTES)
        checksum = Signal(32)
        held = Signal(32 * C, reset_less=True)       # the last result's logits, shifted into the sum
        summing = Signal(range(C + 1))
        have = Signal()                              # rd.data holds a pixel to offer
        passes = Signal(17)
        m.d.comb += passes.eq(repeats | ((repeats == 0) << 16))
        with m.If(start):
            m.d.sync += [end.eq(times_constant(slot + 1, P)), addr.eq(0), reps_left.eq(passes), passes_out.eq(passes),
                         outs_in_pass.eq(slot), total.eq(0), checksum.eq(0), have.eq(0), summing.eq(0)]
        # pixels from the batch memory: a synchronous read whose data holds while the engine stalls
        advance = ~have | engine.i.ready
        m.d.comb += [rd.addr.eq(addr), rd.en.eq(advance)]
        with m.If(run):
            m.d.comb += [engine.i.payload.eq(rd.data), engine.i.valid.eq(have)]
            m.d.sync += total.eq(total + 1)
            with m.If(advance):
                m.d.sync += have.eq(reps_left != 0)
                with m.If(reps_left != 0):
                    m.d.sync += addr.eq(addr + 1)
                    with m.If(addr == end - 1):
                        m.d.sync += [addr.eq(0), reps_left.eq(reps_left - 1)]
            # every result taken as it comes; its logits summed a clock each from a copy
            m.d.comb += engine.o.ready.eq(summing == 0)
            with m.If(engine.o.valid & (summing == 0)):
                m.d.sync += [held.eq(engine.o.payload.logits.as_value()), summing.eq(C),
                             outs_in_pass.eq(Mux(outs_in_pass == 0, slot, outs_in_pass - 1))]
                with m.If(outs_in_pass == 0):
                    m.d.sync += passes_out.eq(passes_out - 1)
            with m.Elif(summing != 0):
                m.d.sync += [checksum.eq(checksum + held[:32]), held.eq(held >> 32), summing.eq(summing - 1)]
            m.d.comb += done.eq((passes_out == 0) & (summing == 0))
        reply = Cat(total, checksum)
        return SimpleNamespace(repeats=repeats, start=start, run=run, done=done, reply=reply)


class ReplySource(wiring.Component):
    """The reply encoder's side of the engine's reply bytes: a one-cycle `pull` asks for the
    next byte, which comes on `result` with a one-cycle `result_valid` (the encoder pulls
    again only after it), taken from the crossing FIFO `i` as soon as one waits there."""

    i: In(stream.Signature(8))
    pull: In(1)
    result: Out(8)
    result_valid: Out(1)

    def elaborate(self, platform):
        m = Module()
        want = Signal()
        m.d.sync += self.result_valid.eq(0)
        with m.If(self.pull):
            m.d.sync += want.eq(1)
        with m.If(want & self.i.valid):
            m.d.comb += self.i.ready.eq(1)
            m.d.sync += [self.result.eq(self.i.payload), self.result_valid.eq(1), want.eq(0)]
        return m


def crossing(m, name, width, w_domain, r_domain):
    """A FIFO of `width`-bit words from `w_domain` to `r_domain` (an AsyncFIFO when they differ)."""
    if w_domain == r_domain:
        fifo = DomainRenamer(w_domain)(SyncFIFOBuffered(width=width, depth=CROSSING_DEPTH))
    else:
        fifo = AsyncFIFO(width=width, depth=CROSSING_DEPTH, w_domain=w_domain, r_domain=r_domain)
    m.submodules[name] = fifo
    return fifo


class ModelLinkCore(wiring.Component):
    """The whole-model board design without pins (docs/uart-protocol.md, version 2).

    Parameters
    ----------
    engine : ModelEngine
        The whole-model engine (built for the board's MAC-array width).
    divisor : int
        Clocks per UART bit.
    batch : int
        Images the batch memory holds (1 .. 255; BENCH runs up to that many).
    timeout : int
        Cycles of silence that abort a frame in progress.
    stretch : int
        Cycles an activity LED stays lit.
    bundle_id : int
        The bundle's 32-bit id, for the INFO reply.
    engine_domain : str
        The engine side's clock domain (default "sync", the link's).
    engine_clock_hz : int
        The engine clock, for the INFO reply (the host turns cycles into seconds with it).
    fit_estimate : dict or None
        The board fit check's resource estimate (`model_fit.check_model_fit`), for the
        build report; None when no check ran.

    Attributes
    ----------
    rx : In(1, init=1)
        The UART's receive line (from the host; synchronised inside).
    tx : Out(1)
        The UART's transmit line (to the host; a register).
    leds : Out(LEDS)
        The status LEDs (`StatusLEDs`; a register).
    """

    rx: In(1, init=1)
    tx: Out(1)
    leds: Out(LEDS)

    def __init__(self, engine, *, divisor, batch=8, timeout=1_000_000, stretch=1 << 20, bundle_id=0,
                 engine_domain="sync", engine_clock_hz=0, fit_estimate=None):
        self.engine, self.divisor, self.batch = engine, divisor, batch
        self.timeout, self.stretch, self.engine_domain = timeout, stretch, engine_domain
        c = engine.compiled
        self.requests = protocol.model_requests(engine.pixels, c.classes, batch)
        self.info = ModelInfo(protocol.MODEL_PROTOCOL_VERSION, c.config.get("channels", 1), c.config["image_size"],
                              c.classes, c.lanes, batch, engine.cycles_per_image, engine_clock_hz, bundle_id)
        self.fit_estimate = fit_estimate
        super().__init__()

    def runner_fields(self):
        """What the build report says of this top's engine (the generator's figures)."""
        return {"protocol": self.info.version, "lanes": self.info.lanes, "cycles_per_image": self.info.cycles_per_image,
                "batch_images": self.batch, "pixels": self.engine.pixels, "classes": self.info.classes,
                "fit_estimate": self.fit_estimate and {k: self.fit_estimate[k] for k in
                                                       ("lut4", "ff", "mult18x18d", "dp16kd", "lutram")}}

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        # payload buffer: a ring of two images, written ahead by the decoder and committed once
        # a frame's CRC checks, read by the feeder
        depth = 1 << (2 * max(q.max_length for q in self.requests) - 1).bit_length()
        m.submodules.buffer = buf = Memory(shape=8, depth=depth, init=[])
        m.submodules.decoder = decoder = FrameDecoder(self.requests, d=1, depth=depth, timeout=self.timeout)
        slot_bits, command_bits = decoder_sizes(self.requests)
        m.submodules.feeder = feeder = PayloadFeeder(abits=decoder.abits, slot_bits=slot_bits,
                                                     command_bits=command_bits)
        m.submodules.encoder = encoder = ReplyEncoder(n_slots=1, count_width=8, info=self.info.encode(),
                                                      slot_bits=slot_bits)
        m.submodules.status = status = StatusLEDs(self.stretch)
        runner = ModelRunner(self.engine, batch=self.batch, slot_bits=slot_bits, command_bits=command_bits)
        m.submodules.runner = DomainRenamer(self.engine_domain)(runner)
        m.submodules.replies = replies = ReplySource()

        wiring.connect(m, urx.o, decoder.i)
        wiring.connect(m, decoder.buffer, buf.write_port())
        wiring.connect(m, feeder.buffer, buf.read_port())
        wiring.connect(m, decoder.jobs, feeder.jobs)
        wiring.connect(m, decoder.events, encoder.events)
        wiring.connect(m, encoder.o, utx.i)
        m.d.comb += decoder.rd_ptr.eq(feeder.rd_ptr)

        inbound = crossing(m, "inbound", len(feeder.o.payload.as_value()), "sync", self.engine_domain)
        outbound = crossing(m, "outbound", 8, self.engine_domain, "sync")
        m.d.comb += [inbound.w_data.eq(feeder.o.payload), inbound.w_en.eq(feeder.o.valid),
                     feeder.o.ready.eq(inbound.w_rdy),
                     runner.i.payload.eq(inbound.r_data), runner.i.valid.eq(inbound.r_rdy),
                     inbound.r_en.eq(runner.i.ready),
                     outbound.w_data.eq(runner.o.payload), outbound.w_en.eq(runner.o.valid),
                     runner.o.ready.eq(outbound.w_rdy),
                     replies.i.payload.eq(outbound.r_data), replies.i.valid.eq(outbound.r_rdy),
                     outbound.r_en.eq(replies.i.ready),
                     replies.pull.eq(encoder.pull[0]), encoder.result[0].eq(replies.result),
                     encoder.result_valid[0].eq(replies.result_valid)]
        m.d.comb += [status.rx.eq(urx.o.valid), status.tx.eq(utx.i.valid & utx.i.ready),
                     status.refused.eq(decoder.refused), status.busy.eq(feeder.busy | encoder.busy),
                     status.dropped.eq(decoder.dropped), self.leds.eq(status.leds)]
        return m
