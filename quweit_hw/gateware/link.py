"""`LinkCore`: the bundle's MLP engines behind a framed UART link (docs/uart-protocol.md).

The whole board design minus the pins, as components: UART receiver and transmitter
(`uart`), the `FrameDecoder` (CRC, length and block checks, an inter-byte timeout), a
payload buffer that commits a frame only once its CRC checks, the `Feeder` that turns
committed bytes into tokens for the engine the frame selects, the `ReplyEncoder` that
streams counts out as the engine produces them, an `EngineSocket` per engine and the
`StatusLEDs`. Every frame gets exactly one reply, in frame order.
`quweit_hw.gateware.top.BoardTop` adds the pins.
"""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import protocol
from ..contract.protocol import BoardInfo
from .engine_socket import EngineSocket
from .feeder import Feeder
from .frame_decoder import FrameDecoder
from .reply_encoder import ReplyEncoder
from .status_leds import LEDS, StatusLEDs
from .uart import UARTRx, UARTTx

__all__ = ["LEDS", "LinkCore"]


class LinkCore(wiring.Component):
    """The board design without pins: the components wired together (docs/uart-protocol.md,
    "Inside the board top").

    Parameters
    ----------
    engines : list of (int, MLPEngine)
        (bundle block index, engine component), all with the same d, bits <= 8 and count
        width <= 8; 1 to 16 of them.
    divisor : int
        Clocks per UART bit.
    max_tokens : int
        Tokens per INFER frame, at most.
    timeout : int
        Cycles of silence that abort a frame in progress.
    stretch : int
        Cycles an activity LED stays lit.
    bundle_id : int
        The bundle's id, for the INFO reply.
    stages : int
        Register stages each way between the link and each engine (`EngineSocket`).
    engine_domain : str
        The engines' clock domain (default "sync", the link's; see `EngineSocket`).

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
        d, n_eng, sockets = self.d, len(self.engines), self.sockets
        for k, socket in enumerate(sockets):
            m.submodules[f"socket{k}"] = socket
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # payload buffer: a ring of two full frames; the decoder writes ahead and commits
        # accepted frames, the feeder reads them. Pointers carry one extra bit to tell full
        # from empty. The read port answers into the feeder's `fetched` register.
        frame_bytes = self.max_tokens * d
        depth = 1 << (2 * frame_bytes - 1).bit_length()
        m.submodules.buffer = buf = Memory(shape=8, depth=depth, init=[])
        requests = protocol.mlp_requests([i for i, _ in self.engines], frame_bytes)
        m.submodules.decoder = decoder = FrameDecoder(requests, d=d, depth=depth, timeout=self.timeout)
        spacing = max(s.spacing for s in sockets)  # a folded engine takes a token every `fold` clocks
        if spacing > 1 and self.engine_domain != "sync":
            spacing += 4  # the crossing may move a push by a few engine clocks (<= link clocks)
        m.submodules.feeder = feeder = Feeder(n_slots=n_eng, bits=self.bits, d=d, abits=decoder.abits,
                                              credits=[s.credits for s in sockets], spacing=spacing)
        m.submodules.encoder = encoder = ReplyEncoder(n_slots=n_eng, count_width=self.count_width,
                                                      info=self.info.encode())
        m.submodules.status = status = StatusLEDs(self.stretch)

        wiring.connect(m, urx.o, decoder.i)
        wiring.connect(m, decoder.buffer, buf.write_port())
        wiring.connect(m, feeder.buffer, buf.read_port())
        wiring.connect(m, decoder.jobs, feeder.jobs)
        wiring.connect(m, decoder.events, encoder.events)
        wiring.connect(m, encoder.o, utx.i)
        m.d.comb += decoder.rd_ptr.eq(feeder.rd_ptr)
        for k, socket in enumerate(sockets):
            # every socket sees every feature (only the one pushed next uses them)
            m.d.comb += [socket.feature.eq(feeder.feature), socket.shift.eq(feeder.shift),
                         socket.push.eq(feeder.push[k]), feeder.credit[k].eq(socket.credit),
                         socket.pull.eq(encoder.pull[k]), encoder.result[k].eq(socket.result),
                         encoder.result_valid[k].eq(socket.result_valid)]
        m.d.comb += [status.rx.eq(urx.o.valid), status.tx.eq(utx.i.valid & utx.i.ready),
                     status.refused.eq(decoder.refused), status.busy.eq(feeder.busy | encoder.busy),
                     status.dropped.eq(decoder.dropped), self.leds.eq(status.leds)]
        return m
