"""`StatusLEDs`: the link's state on the board's LEDs (docs/uart-protocol.md, "Status LEDs")."""

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

LEDS = 8


class StatusLEDs(wiring.Component):
    """LED 0 heartbeat, 1 rx activity, 2 tx activity, 3 last frame refused, 4 engine work or a
    reply pending, 5 a reply was dropped; 6 and 7 off. The activity pulses stay lit for
    `stretch` cycles. Pulses and outputs go through registers: the LED pins sit far from the
    link logic.

    Parameters
    ----------
    stretch : int
        Cycles an activity LED stays lit after a pulse; the heartbeat's period is 8 * stretch.

    Attributes
    ----------
    rx : In(1)
        Pulses once per byte received.
    tx : In(1)
        Pulses once per byte sent.
    refused : In(1)
        The last finished frame was refused.
    busy : In(1)
        Engine work or a reply is in progress.
    dropped : In(1)
        A reply was dropped (sticky where it comes from).
    leds : Out(LEDS)
        To the LED pins (a register).
    """

    rx: In(1)
    tx: In(1)
    refused: In(1)
    busy: In(1)
    dropped: In(1)
    leds: Out(LEDS)

    def __init__(self, stretch):
        self.stretch = stretch
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        heartbeat = Signal(range(self.stretch * 8))
        rx_led = Signal(range(self.stretch + 1))
        tx_led = Signal(range(self.stretch + 1))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        for led, pulse in ((rx_led, self.rx), (tx_led, self.tx)):
            pulse_r = Signal()
            m.d.sync += pulse_r.eq(pulse)
            with m.If(pulse_r):
                m.d.sync += led.eq(self.stretch)
            with m.Elif(led != 0):
                m.d.sync += led.eq(led - 1)
        m.d.sync += self.leds.eq(Cat(heartbeat[-1], rx_led != 0, tx_led != 0, self.refused, self.busy, self.dropped))
        return m
