"""`ReplyEncoder`: reply events to reply frames for the UART, RESULT counts pulled from the engines."""

from amaranth import Array, C, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..contract import protocol
from .frame_decoder import KIND_INFO, KIND_RESULT, event_layout, queue_write


class ReplyEncoder(wiring.Component):
    """Sends one reply frame per event, in the order of its queue: SOF, type (the event's
    `reply`), block, length, payload, CRC (`protocol.CRC`'s `Processor`). An INFO reply's
    payload is `info` (a constant); an ERROR reply's the event's code; a RESULT reply's
    payload (the event's `length` bytes, at least 1) streams from the event's slot, one byte
    per `pull`, each arriving on `result` some cycles later.

    Timing: the UART transmitter is busy for 10 * divisor cycles after taking a byte, so the
    payload byte and the CRC are computed through registers a few cycles behind and are
    current when it takes the next one.

    Parameters
    ----------
    n_slots : int
        Engine slots (sockets).
    count_width : int
        Bits per count (at most 8: a count is a byte on the wire).
    info : bytes
        The INFO reply's payload (`protocol.BoardInfo.encode()`, `protocol.ModelInfo.encode()`).
    slot_bits : int
        The events' slot width (the frame decoder's); default: enough for `n_slots`. With one
        slot, every RESULT reply pulls from it whatever the event's slot.

    Attributes
    ----------
    events : In(queue_write(event_layout(slot_bits)))
        The event queue's write side (from the frame decoder; `rdy` low when it is full).
    o : Out(stream.Signature(8))
        Reply bytes, to the UART transmitter.
    pull : Out(n_slots)
        Bit k pulses to ask socket k for its next count (again only after it came).
    result : In(data.ArrayLayout(count_width, n_slots))
        Each socket's count, valid with its bit of `result_valid`.
    result_valid : In(n_slots)
        Bit k pulses when socket k's `result` holds the count pulled.
    busy : Out(1)
        A reply is being sent.
    """

    EVENT_QUEUE = 4

    def __init__(self, *, n_slots, count_width, info, slot_bits=None):
        self.n_slots, self.count_width, self.info = n_slots, count_width, bytes(info)
        self.event = event_layout(slot_bits or max(1, (n_slots - 1).bit_length()))
        super().__init__({
            "events": In(queue_write(self.event)),
            "o": Out(stream.Signature(8)),
            "pull": Out(n_slots),
            "result": In(data.ArrayLayout(count_width, n_slots)),
            "result_valid": In(n_slots),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = SyncFIFOBuffered(width=self.event.size, depth=self.EVENT_QUEUE)
        m.d.comb += [queue.w_data.eq(self.events.data), queue.w_en.eq(self.events.en),
                     self.events.rdy.eq(queue.w_rdy)]
        ev = Signal(self.event)
        ev_next = data.View(self.event, queue.r_data)
        e_len, e_left = Signal(16), Signal(16)
        index = Signal(range(len(self.info) + 1))  # byte of the INFO payload
        have, result_valid, payload_byte = self._payload(m, ev, index)
        crc_on = Signal()  # the byte on `o` counts in the CRC
        crc = self._crc(m, crc_on)
        pull, asked = Signal(), Signal()  # ask the event's socket for a count; asked, not yet come
        for k in range(self.n_slots):
            m.d.comb += self.pull[k].eq(pull & ((ev.slot == k) if self.n_slots > 1 else 1))
        sent = self.o.valid & self.o.ready
        with m.FSM(name="encoder") as fsm:
            with m.State("IDLE"):
                with m.If(queue.r_rdy):
                    m.d.comb += [queue.r_en.eq(1), crc.start.eq(1)]
                    m.d.sync += [ev.eq(ev_next), have.eq(0), index.eq(0),
                                 e_len.eq(Mux(ev_next.kind == KIND_RESULT, ev_next.length,
                                              Mux(ev_next.kind == KIND_INFO, len(self.info), 1)))]
                    m.next = "SOF"
            header = [("SOF", C(protocol.SOF_REPLY, 8), False, "KIND"), ("KIND", ev.reply, True, "BLOCK"),
                      ("BLOCK", ev.block, True, "LEN0"), ("LEN0", e_len[:8], True, "LEN1"),
                      ("LEN1", e_len[8:], True, "PAYLOAD")]
            for state, value, counted, nxt in header:
                with m.State(state):
                    m.d.comb += [self.o.payload.eq(value), self.o.valid.eq(1), crc_on.eq(counted)]
                    m.d.sync += e_left.eq(e_len)
                    with m.If(sent):
                        m.next = nxt
            with m.State("PAYLOAD"):
                m.d.comb += [self.o.payload.eq(payload_byte), crc_on.eq(1)]
                with m.If((ev.kind == KIND_RESULT) & ~have):  # fetch the next count
                    m.d.comb += pull.eq(~asked)
                    m.d.sync += asked.eq(1)
                    with m.If(result_valid):
                        m.d.sync += [have.eq(1), asked.eq(0)]
                with m.Else():
                    m.d.comb += self.o.valid.eq(1)
                    with m.If(sent):
                        m.d.sync += [e_left.eq(e_left - 1), index.eq(index + 1), have.eq(0)]
                        with m.If(e_left == 1):
                            m.next = "CRC0"
            for state, value, nxt in (("CRC0", crc.crc[8:], "CRC1"), ("CRC1", crc.crc[:8], "IDLE")):
                with m.State(state):
                    m.d.comb += [self.o.payload.eq(value), self.o.valid.eq(1)]
                    with m.If(sent):
                        m.next = nxt
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

    def _payload(self, m, ev, index):
        """The payload byte to send next, a register: the count pulled last (RESULT), the INFO
        ROM's byte `index` (INFO) or the code (ERROR). Returns (have, result_valid, the byte):
        `have`, set by the FSM, says the pulled count has arrived."""
        have = Signal()  # the RESULT payload byte has arrived from the socket
        info_rom = Array(Const(b, 8) for b in self.info)
        source = ev.slot if self.n_slots > 1 else 0
        result = Array(self.result[k] for k in range(self.n_slots))[source]
        result_valid = Array(self.result_valid[k] for k in range(self.n_slots))[source]
        payload_byte = Signal(8)
        with m.Switch(ev.kind):
            with m.Case(KIND_RESULT):
                with m.If(result_valid):
                    m.d.sync += payload_byte.eq(result)
            with m.Case(KIND_INFO):
                m.d.sync += payload_byte.eq(info_rom[index])
            with m.Default():
                m.d.sync += payload_byte.eq(ev.code)
        return have, result_valid, payload_byte

    def _crc(self, m, crc_on):
        """The frame's CRC over type .. payload: each byte the transmitter took with `crc_on`
        goes into the CRC unit a cycle later, from registers; the FSM starts it afresh."""
        m.submodules.crc = crc = protocol.CRC.create()
        crc_pending, crc_byte = Signal(), Signal(8)
        m.d.sync += [crc_pending.eq(self.o.valid & self.o.ready & crc_on), crc_byte.eq(self.o.payload)]
        m.d.comb += [crc.valid.eq(crc_pending), crc.data.eq(crc_byte)]
        return crc
