"""The board link's wire protocol (docs/uart-protocol.md): frames, the CRC, error codes, INFO;
version 1 (the MLP-only top) and version 2 (the whole-model top).

The reference of the framing for both sides: the host drivers (`quweit_hw.host`,
`quweit_hw.host_model`) and the gateware links (`quweit_hw.gateware.link`,
`quweit_hw.gateware.model_link`) import its constants and request tables, and its CRC is the one
`amaranth.lib.crc` algorithm both compute (amaranth's CRC library is pure Python; this
module loads no torch and no elaborated hardware).
"""

from dataclasses import dataclass

import numpy as np
from amaranth.lib import crc

from ..errors import UserError
from .bundle import signed_range

PROTOCOL_VERSION = 1        # the MLP-only top (LinkCore)
MODEL_PROTOCOL_VERSION = 2  # the whole-model top (ModelLinkCore)
SOF_REQUEST = 0xA5          # host -> board
SOF_REPLY = 0x5A            # board -> host
CMD_INFER = 0x01            # payload: N tokens of d bytes (signed features, two's complement)
CMD_INFO = 0x02             # payload: none
CMD_IMAGE = 0x11            # v2; payload: one image's pixels (uint8, channel, row, column order)
CMD_LOAD = 0x12             # v2; block: a batch slot; payload: one image's pixels, kept on the board
CMD_BENCH = 0x13            # v2; block: images n (slots 0 .. n-1); payload: repeats R (LE16, 0 means 65536)
REPLY_RESULT = 0x81         # payload: N tokens of d bytes (unsigned counts)
REPLY_INFO = 0x82           # payload: see BoardInfo.decode
REPLY_IMAGE = 0x91          # v2; payload: `ModelResult.encode`
REPLY_LOADED = 0x92         # v2; payload: the slot (1 byte), sent once the image is in the batch memory
REPLY_BENCH = 0x93          # v2; payload: total engine cycles (LE48), the logits' checksum (LE32)
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




# --- what the board's frame decoder accepts: one table per protocol version -------------------

@dataclass(frozen=True)
class Request:
    """One command as the board's frame decoder checks it (docs/uart-protocol.md, "Requests").

    A frame with this `code` is refused with ERR_LENGTH when its length lies outside
    [min_length, max_length] (or, for INFER, is not a whole number of tokens) and with
    ERR_BLOCK when `blocks` is given and its block byte is not in it (the frame's slot is
    the block's index there). Otherwise, once its CRC checks: `info` commands get the INFO
    reply; the others' payload goes to the board's work queue and their reply, of type
    `reply`, is `reply_length` bytes long (None: as long as the request's payload).
    """
    code: int
    min_length: int
    max_length: int
    reply: int
    reply_length: int = None
    blocks: tuple = None
    info: bool = False

    def __post_init__(self):
        if not 0 <= self.min_length <= self.max_length <= 0xFFFF:
            raise ValueError(f"request 0x{self.code:02x}: lengths {self.min_length}..{self.max_length} out of order")
        if not self.info and self.min_length == 0:
            raise ValueError(f"request 0x{self.code:02x}: a command with work needs a payload")
        if self.blocks is not None and not (self.blocks and all(0 <= b < 256 for b in self.blocks)):
            raise ValueError(f"request 0x{self.code:02x}: blocks {self.blocks!r} must be bytes, at least one")


def mlp_requests(blocks, frame_bytes):
    """Version 1's commands: INFER on the engines' bundle blocks, up to `frame_bytes`; INFO."""
    return (Request(CMD_INFER, 1, frame_bytes, REPLY_RESULT, None, tuple(blocks)),
            Request(CMD_INFO, 0, 0, REPLY_INFO, info=True))


BENCH_REQUEST_BYTES = 2   # repeats R, LE16
BENCH_CYCLE_BYTES = 6     # the BENCH reply's cycle total, LE48
BENCH_REPLY_BYTES = BENCH_CYCLE_BYTES + 4


def model_requests(pixels, classes, batch):
    """Version 2's commands for images of `pixels` bytes, `classes` logits and `batch` slots."""
    if not 1 <= batch <= 255:
        raise ValueError(f"the batch memory holds 1 to 255 images (the block byte), got {batch!r}")
    return (Request(CMD_IMAGE, pixels, pixels, REPLY_IMAGE, ModelResult.size(classes)),
            Request(CMD_LOAD, pixels, pixels, REPLY_LOADED, 1, tuple(range(batch))),
            Request(CMD_BENCH, BENCH_REQUEST_BYTES, BENCH_REQUEST_BYTES, REPLY_BENCH, BENCH_REPLY_BYTES,
                    tuple(range(1, batch + 1))),
            Request(CMD_INFO, 0, 0, REPLY_INFO, info=True))


# --- version 2: the whole model ------------------------------------------------------------

def image_frame(pixels):
    """The IMAGE request for one image (uint8 pixels, any shape, in channel, row, column order)."""
    return encode_frame(CMD_IMAGE, 0, _pixel_bytes(pixels))


def load_frame(slot, pixels):
    """The LOAD request that puts one image into batch slot `slot`."""
    return encode_frame(CMD_LOAD, slot, _pixel_bytes(pixels))


def bench_frame(images, repeats):
    """The BENCH request: slots 0 .. images-1, `repeats` times over (1 .. 65536)."""
    if not 1 <= repeats <= 1 << 16:
        raise ValueError(f"repeats must lie in 1 .. 65536, got {repeats!r}")
    return encode_frame(CMD_BENCH, images, (repeats & 0xFFFF).to_bytes(BENCH_REQUEST_BYTES, "little"))


def _pixel_bytes(pixels):
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    return pixels.tobytes()


@dataclass(frozen=True)
class ModelResult:
    """An IMAGE reply's payload: the class (1 byte), the engine's cycles for the image (LE32),
    then the logits (int32 each, little-endian, class 0 first)."""
    label: int
    cycles: int
    logits: tuple

    @staticmethod
    def size(classes):
        return 5 + 4 * classes

    def encode(self):
        return (bytes([self.label]) + self.cycles.to_bytes(4, "little")
                + np.asarray(self.logits, "<i4").tobytes())

    @classmethod
    def decode(cls, payload, classes):
        if len(payload) != cls.size(classes):
            raise UserError(f"malformed RESULT reply: {len(payload)} bytes for {classes} classes")
        logits = np.frombuffer(bytes(payload[5:]), "<i4").astype(np.int64)
        return cls(payload[0], int.from_bytes(payload[1:5], "little"), tuple(int(v) for v in logits))


def bench_checksum(logits, repeats):
    """The BENCH reply's checksum: the sum of every logit of every image run, mod 2**32
    (`logits` (n, classes) of the n images, run `repeats` times)."""
    return int(np.asarray(logits, np.int64).sum() * repeats) % (1 << 32)


def decode_bench(payload):
    """(total engine cycles, checksum) of a BENCH reply's payload."""
    if len(payload) != BENCH_REPLY_BYTES:
        raise UserError(f"malformed BENCH reply: {len(payload)} bytes, expected {BENCH_REPLY_BYTES}")
    return (int.from_bytes(payload[:BENCH_CYCLE_BYTES], "little"),
            int.from_bytes(payload[BENCH_CYCLE_BYTES:], "little"))


@dataclass(frozen=True)
class ModelInfo:
    """What a whole-model top carries: its INFO reply's payload (version 2; byte 0 is the
    version in both, so a host tells them apart)."""
    version: int
    channels: int
    image_size: int
    classes: int
    lanes: int
    batch: int               # images the batch memory holds (BENCH's largest n)
    cycles_per_image: int    # the generator's figure
    engine_clock_hz: int
    bundle_id: int

    SIZE = 19

    @property
    def pixels(self):
        return self.channels * self.image_size ** 2

    def encode(self):
        return (bytes([self.version, self.channels, self.image_size, self.classes, self.lanes])
                + self.batch.to_bytes(2, "little") + self.cycles_per_image.to_bytes(4, "little")
                + self.engine_clock_hz.to_bytes(4, "little") + self.bundle_id.to_bytes(4, "little"))

    @classmethod
    def decode(cls, payload):
        payload = bytes(payload)
        if len(payload) != cls.SIZE:
            raise UserError(f"malformed version-2 INFO reply payload {payload.hex()!r}")
        word = [int.from_bytes(payload[a:b], "little") for a, b in ((5, 7), (7, 11), (11, 15), (15, 19))]
        return cls(*payload[:5], *word)
