"""Moving signals across the die and between clocks: register pipes and `CrossingFIFO`."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


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
