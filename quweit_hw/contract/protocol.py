"""The board link's wire protocol (docs/uart-protocol.md): frames, the CRC, error codes, INFO.

The reference of the framing for both sides: the host driver (`quweit_hw.host`) and the
gateware link (`quweit_hw.gateware.link`) import its constants, and its CRC is the one
`amaranth.lib.crc` algorithm both compute (amaranth's CRC library is pure Python; this
module loads no torch and no elaborated hardware).
"""

from dataclasses import dataclass

import numpy as np
from amaranth.lib import crc

from ..errors import UserError
from .bundle import signed_range

PROTOCOL_VERSION = 1
SOF_REQUEST = 0xA5          # host -> board
SOF_REPLY = 0x5A            # board -> host
CMD_INFER = 0x01            # payload: N tokens of d bytes (signed features, two's complement)
CMD_INFO = 0x02             # payload: none
REPLY_RESULT = 0x81         # payload: N tokens of d bytes (unsigned counts)
REPLY_INFO = 0x82           # payload: see BoardInfo.decode
REPLY_ERROR = 0xEE          # payload: one byte, an error code
HEADER_BYTES = 5            # SOF, command/type, block, length (2 bytes, little-endian)
OVERHEAD_BYTES = HEADER_BYTES + 2   # + CRC (2 bytes, big-endian)

ERRORS = {  # code -> meaning; every error reply means the frame was not accepted
    1: "bad CRC",
    2: "bad length",
    3: "block not on the board",
    4: "unknown command",
    5: "frame timed out (bytes stopped mid-frame)",
    6: "input buffer overflow (too many frames in flight)",
}
ERR_CRC, ERR_LENGTH, ERR_BLOCK, ERR_COMMAND, ERR_TIMEOUT, ERR_OVERFLOW = range(1, 7)
RETRYABLE = {ERR_CRC, ERR_TIMEOUT, ERR_OVERFLOW}    # line trouble, not a host/board mismatch


# The frame check: CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, MSB first, no final XOR) on
# bytes. One `amaranth.lib.crc` definition serves the host (`crc16`, its software model) and
# the gateware (`CRC.create()`, the link's CRC units), so the two cannot drift.
CRC = crc.catalog.CRC16_CCITT_FALSE(data_width=8)


def crc16(data):
    """The frame CRC of `data`: crc16(b"123456789") == 0x29B1 (the catalogue's check value).
    A frame body followed by its CRC (big-endian) has CRC 0 (the residue)."""
    return CRC.compute(bytes(data))


def encode_frame(kind, block, payload=b"", *, sof=SOF_REQUEST):
    """One frame: sof, kind, block, len(payload) (LE16), payload, CRC-16 of kind..payload (BE16)."""
    payload = bytes(payload)
    if not 0 <= block < 256 or not 0 <= kind < 256:
        raise ValueError(f"kind {kind!r} and block {block!r} must be bytes")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the 16-bit length field")
    body = bytes([kind, block]) + len(payload).to_bytes(2, "little") + payload
    return bytes([sof]) + body + crc16(body).to_bytes(2, "big")


def token_bytes(q, bits=8):
    """Tokens q (N, d) in the signed `bits`-bit range as the payload bytes of an INFER frame."""
    q = np.asarray(q)
    if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"tokens must be an (N, d) integer array, got {q.dtype} of shape {q.shape}")
    if not 1 <= bits <= 8:
        raise ValueError(f"the link carries features of at most 8 bits, got bits={bits!r}")
    lo, hi = signed_range(bits)
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"token values must lie in [{lo}, {hi}] for bits={bits}, got [{q.min()}, {q.max()}]")
    return q.astype(np.int8).tobytes()


def infer_frame(block, q, bits=8):
    """The INFER request frame for tokens q (N, d) of bundle block `block`."""
    return encode_frame(CMD_INFER, block, token_bytes(q, bits))


@dataclass(frozen=True)
class Reply:
    kind: int
    block: int
    payload: bytes
    crc_ok: bool

    @property
    def error(self):
        """The error code of an ERROR reply, else None."""
        return self.payload[0] if self.kind == REPLY_ERROR and self.payload else None


class FrameParser:
    """Incremental frame parser: `feed(bytes)` returns the complete frames seen so far.

    Bytes before a start marker are skipped (counted in `skipped`); a frame whose
    CRC fails comes back with crc_ok=False.
    """

    def __init__(self, sof=SOF_REPLY):
        self.sof = sof
        self.buffer = bytearray()
        self.skipped = 0

    def reset(self):
        self.buffer.clear()

    def feed(self, data):
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(self.sof)
            if start < 0:
                self.skipped += len(self.buffer)
                self.buffer.clear()
                return frames
            self.skipped += start
            del self.buffer[:start]
            if len(self.buffer) < HEADER_BYTES:
                return frames
            length = int.from_bytes(self.buffer[3:5], "little")
            if len(self.buffer) < length + OVERHEAD_BYTES:
                return frames
            frame = bytes(self.buffer[:length + OVERHEAD_BYTES])
            del self.buffer[:length + OVERHEAD_BYTES]
            frames.append(Reply(frame[1], frame[2], frame[HEADER_BYTES:-2], crc16(frame[1:]) == 0))


@dataclass(frozen=True)
class BoardInfo:
    """What a board top carries: the INFO reply's payload."""
    version: int
    d: int
    bits: int
    count_width: int
    max_tokens: int
    bundle_id: int
    blocks: tuple      # bundle block index of each engine
    latencies: tuple   # engine latency in cycles, per engine

    def encode(self):
        head = [self.version, len(self.blocks), self.d, self.bits, self.count_width]
        out = bytes(head) + self.max_tokens.to_bytes(2, "little") + self.bundle_id.to_bytes(4, "little")
        return out + bytes(x for pair in zip(self.blocks, self.latencies) for x in pair)

    @classmethod
    def decode(cls, payload):
        if len(payload) < 11 or len(payload) != 11 + 2 * payload[1]:
            raise UserError(f"malformed INFO reply payload {bytes(payload).hex()!r}")
        n = payload[1]
        return cls(payload[0], payload[2], payload[3], payload[4], int.from_bytes(payload[5:7], "little"),
                   int.from_bytes(payload[7:11], "little"), tuple(payload[11:11 + 2 * n:2]),
                   tuple(payload[12:11 + 2 * n:2]))


