"""8N1 UART receiver and transmitter for the board link (the ULX3S's FT231X)."""

from amaranth import C, Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an int >= 4, got {divisor!r}")
    return divisor



class UARTRx(wiring.Component):
    """8N1 receiver. `o.valid` pulses one cycle per byte whose stop bit is high (no backpressure:
    `o` is always ready); `frame_error` pulses when the stop bit is low."""

    rx: In(1, init=1)
    o: Out(stream.Signature(8, always_ready=True))
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
