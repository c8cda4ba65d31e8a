"""`BoardTop`: a `LinkCore` on an amaranth_boards ULX3S platform (PLL, reset, UART pins, LEDs)."""

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from ..contract.boards import pll_params
from .link import LEDS


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
