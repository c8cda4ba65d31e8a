"""`Feeder`: committed payload bytes to the engines, a token at a time, against their credits."""

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from .frame_decoder import job_layout, queue_write


class Feeder(wiring.Component):
    """Takes jobs (engine slot, token count) in order from its queue and sends each token of
    a job, read from the payload buffer, to the job's engine socket: d features of `bits` bits,
    one per `shift` pulse (feature 0 first), then a one-cycle `push`. Every socket sees every
    feature; only the one pushed next uses them. A push waits for a credit of that socket (it
    starts with `credits[k]`, one comes back per `credit` pulse) and for `spacing` clocks
    after the previous push (a folded engine takes a token every `fold` clocks).

    The payload buffer is a block RAM: its read data leaves 5.8 ns after the clock (DP16KD
    without its output register), so it goes into a flip-flop beside it (`fetched`) before
    it goes anywhere, and each feature takes three clocks (READ, FETCH, LATCH).

    Parameters
    ----------
    n_slots : int
        Engine slots (sockets).
    bits : int
        Bits per feature (the low bits of each payload byte).
    d : int
        Features per token.
    abits : int
        Address bits of the payload buffer.
    credits : list of int
        The credits each socket starts with (its engine's output FIFO depth).
    spacing : int
        Clocks from one push to the next, at least.

    Attributes
    ----------
    jobs : In(queue_write(job_layout(slot_bits)))
        The job queue's write side (from the frame decoder; `rdy` low when it is full).
    buffer : In(ReadPort.Signature(addr_width=abits, shape=8))
        The payload buffer's (synchronous) read port.
    rd_ptr : Out(abits + 1)
        The next byte to read (one extra bit tells a full buffer from an empty one).
    feature : Out(bits)
        The feature being sent, to every socket (a register).
    shift : Out(1)
        One cycle per feature: the sockets shift `feature` in.
    push : Out(n_slots)
        One cycle per token, bit k to socket k: the token is complete, hand it to the engine.
    credit : In(n_slots)
        Bit k pulses when socket k's engine hands a token on (a credit back).
    busy : Out(1)
        A job is being fed.
    """

    JOB_QUEUE = 4

    def __init__(self, *, n_slots, bits, d, abits, credits, spacing):
        self.n_slots, self.bits, self.d, self.abits = n_slots, bits, d, abits
        self.credits, self.spacing = list(credits), spacing
        self.slot_bits = max(1, (n_slots - 1).bit_length())
        self.job = job_layout(self.slot_bits)
        super().__init__({
            "jobs": In(queue_write(self.job)),
            "buffer": In(ReadPort.Signature(addr_width=abits, shape=8)),
            "rd_ptr": Out(abits + 1),
            "feature": Out(bits), "shift": Out(1), "push": Out(n_slots), "credit": In(n_slots),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.d
        m.submodules.queue = queue = SyncFIFOBuffered(width=self.job.size, depth=self.JOB_QUEUE)
        m.d.comb += [queue.w_data.eq(self.jobs.data), queue.w_en.eq(self.jobs.en), self.jobs.rdy.eq(queue.w_rdy)]
        job = data.View(self.job, queue.r_data)
        slot = Signal(self.slot_bits)
        left = Signal(16)
        f_byte = Signal(range(d))
        # a block RAM's data leaves 5.8 ns after the clock: into a flip-flop beside it first
        fetched = Signal(self.bits, reset_less=True)
        m.d.sync += fetched.eq(self.buffer.data[:self.bits])
        m.d.comb += [self.buffer.addr.eq(self.rd_ptr[:self.abits]), self.feature.eq(fetched)]
        push = [Signal(name=f"push{k}") for k in range(self.n_slots)]
        m.d.comb += self.push.eq(Cat(*push))
        ready = self._ready(m, slot, push)
        with m.FSM(name="feeder") as fsm:
            with m.State("IDLE"):
                with m.If(queue.r_rdy):
                    m.d.comb += queue.r_en.eq(1)
                    m.d.sync += [slot.eq(job.slot), left.eq(job.tokens), f_byte.eq(0)]
                    m.next = "READ"
            with m.State("READ"):  # the read port answers one cycle later, into `fetched` one more
                m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.comb += self.shift.eq(1)
                m.d.sync += [self.rd_ptr.eq(self.rd_ptr + 1), f_byte.eq(Mux(f_byte == d - 1, 0, f_byte + 1))]
                m.next = "READ"
                with m.If(f_byte == d - 1):
                    m.next = "PUSH"
            with m.State("PUSH"):
                with m.If(ready):
                    m.d.comb += Array(push)[slot].eq(1)
                    m.d.sync += left.eq(left - 1)
                    m.next = "READ"
                    with m.If(left == 1):
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

    def _ready(self, m, slot, push):
        """Whether the engine in `slot` may take a token now: a credit, and the spacing."""
        credits = [Signal(range(c + 1), init=c, name=f"credits{k}") for k, c in enumerate(self.credits)]
        for k, count in enumerate(credits):
            m.d.sync += count.eq(count + self.credit[k] - push[k])
        ready = Array(c != 0 for c in credits)[slot]
        if self.spacing > 1:
            wait = Signal(range(self.spacing), name="spacing_wait")
            with m.If(Cat(*push).any()):
                m.d.sync += wait.eq(self.spacing - 1)
            with m.Elif(wait != 0):
                m.d.sync += wait.eq(wait - 1)
            ready &= wait == 0
        return ready
