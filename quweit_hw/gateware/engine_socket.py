"""`EngineSocket`: an MLP engine behind register pipes (and a clock crossing) for the board link."""

from amaranth import C, Cat, DomainRenamer, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .cdc import CrossingFIFO, pipe


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
    the engine's credit counter, was build K's worst path; docs/results.md). Behind a
    clock crossing, `shift` is a tree: one copy per `ENABLE_FANOUT` flip-flops of the token
    (whole features), each its own column of the crossing FIFO and its own pipe, so no
    single enable net spans the token register (one did in build Q: 6.85 ns across the die).
    The copies come from distinct memory bits because Yosys' `opt_merge` merges identical
    flip-flops even when their wires carry `keep` (Yosys 0.55; only a cell's own `keep`,
    which Amaranth cannot set on a flip-flop, stops it). `overrun` is
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
    ENABLE_FANOUT = 64  # token flip-flops per copy of the shift enable (a cluster of 32 slices)

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
        per_copy = max(1, self.ENABLE_FANOUT // bits)  # features under one copy of the shift enable
        copies = -(-d // per_copy)
        if dom == "sync":
            feature, shift, push, pull = (pipe(m, v, st, n) for v, n in (
                (self.feature, "feature"), (self.shift, "shift"), (self.push, "push"), (self.pull, "pull")))
            shifts = [shift] * copies  # copies of one pipe would be merged back (above)
        else:
            inbound = m.submodules.inbound = CrossingFIFO(bits + copies + 2, self.CROSSING_DEPTH, w_domain="sync",
                                                          r_domain=dom)
            outbound = m.submodules.outbound = CrossingFIFO(cw + 2, self.CROSSING_DEPTH, w_domain=dom,
                                                            r_domain="sync")
            m.d.comb += [inbound.w_data.eq(Cat(self.feature, self.shift.replicate(copies), self.push, self.pull)),
                         inbound.w_en.eq(self.shift | self.push | self.pull)]
            word, arrived = inbound.r_data, inbound.r_valid
            feature = pipe(m, word[:bits], st, "feature", dom)
            shifts = [pipe(m, arrived & word[bits + k], st, f"shift{k}", dom) for k in range(copies)]
            push, pull = (pipe(m, arrived & word[bits + copies + k], st, n, dom)
                          for k, n in enumerate(("push", "pull")))
            overrun_sync = Signal()
            m.submodules.overrun_cdc = FFSynchronizer(overrun, overrun_sync)
            m.d.comb += self.overrun.eq(inbound.overflow | overrun_sync)
        token = Signal(d * bits, reset_less=True)
        shifted = Cat(token[bits:], feature)  # feature k moves to k - 1, the new one is d - 1
        for k, shift in enumerate(shifts):
            lo, hi = k * per_copy * bits, min(d, (k + 1) * per_copy) * bits
            with m.If(shift):
                m.d[dom] += token[lo:hi].eq(shifted[lo:hi])
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
