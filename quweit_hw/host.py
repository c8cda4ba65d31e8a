"""Host side of the board's UART link: frame builder and parser, pyserial driver, board MLP backend.

The framing is specified in docs/uart-protocol.md; this module is its reference
implementation, and the board top (`quweit_hw.board`) and its simulations import
the constants from here. No amaranth import: the host side stays light.
"""

import binascii
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import QuweitError

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


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, MSB first, no final XOR) of `data`.

    crc16(b"123456789") == 0x29B1. A frame body followed by its CRC (big-endian) has CRC 0.
    """
    return binascii.crc_hqx(bytes(data), crc)


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
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
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


def bundle_id(bundle):
    """32-bit identity of a bundle (its manifest, which holds every array file's hash)."""
    text = json.dumps(bundle.manifest, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


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
            raise QuweitError(f"malformed INFO reply payload {bytes(payload).hex()!r}")
        n = payload[1]
        return cls(payload[0], payload[2], payload[3], payload[4], int.from_bytes(payload[5:7], "little"),
                   int.from_bytes(payload[7:11], "little"), tuple(payload[11:11 + 2 * n:2]),
                   tuple(payload[12:11 + 2 * n:2]))


class LinkError(QuweitError):
    """The board answered with an error, or did not answer in time."""


class BoardLink:
    """A framed link to a board top over a serial port (docs/uart-protocol.md).

    `serial_port` may be any object with pyserial's write/read/in_waiting/
    reset_input_buffer/close (tests pass a fake); otherwise `port` is opened.
    """

    def __init__(self, port=None, *, baud=3_000_000, timeout=2.0, retries=2, window=2, serial_port=None):
        if serial_port is None:
            import serial
            try:
                serial_port = serial.Serial(port, baud, timeout=0.02)
            except serial.SerialException as e:
                raise LinkError(f"cannot open serial port {port!r}: {e}") from None
        self.serial = serial_port
        self.timeout, self.retries, self.window = timeout, retries, window
        self.parser = FrameParser()
        self._pending = deque()
        self._info = None

    def close(self):
        self.serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_reply(self):
        """The next reply frame; LinkError (after resynchronising) if none arrives in time."""
        deadline = time.monotonic() + self.timeout
        while not self._pending:
            if time.monotonic() > deadline:
                self.resync()
                raise LinkError(f"no reply from the board within {self.timeout} s")
            data = self.serial.read(max(1, getattr(self.serial, "in_waiting", 0)))
            self._pending.extend(self.parser.feed(data))
        return self._pending.popleft()

    def resync(self, quiet=0.05):
        """Drop everything buffered until the line has been quiet for `quiet` seconds."""
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            if self.serial.read(max(1, getattr(self.serial, "in_waiting", 0))):
                deadline = time.monotonic() + quiet
        self.serial.reset_input_buffer()
        self.parser.reset()
        self._pending.clear()

    def info(self):
        """The board's BoardInfo (cached after the first call)."""
        if self._info is None:
            self.serial.write(encode_frame(CMD_INFO, 0))
            reply = self._read_reply()
            if not reply.crc_ok or reply.kind != REPLY_INFO:
                self.resync()
                raise LinkError(f"expected an INFO reply, got kind 0x{reply.kind:02x} (crc ok: {reply.crc_ok})")
            self._info = BoardInfo.decode(reply.payload)
            if self._info.version != PROTOCOL_VERSION:
                raise LinkError(f"board speaks protocol version {self._info.version}, host {PROTOCOL_VERSION}")
        return self._info

    def infer(self, block, q):
        """Counts (N, d) int64 for tokens q (N, d) on bundle block `block`.

        Sends frames of up to max_tokens tokens, `window` of them in flight; a frame
        refused for line trouble (CRC, timeout, overflow) is resent up to `retries` times.
        """
        info = self.info()
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != info.d:
            raise ValueError(f"tokens must have shape (N, {info.d}), got {q.shape}")
        chunks = [q[i:i + info.max_tokens] for i in range(0, len(q), info.max_tokens)]
        results = [None] * len(chunks)
        tries = [0] * len(chunks)
        todo, inflight = deque(range(len(chunks))), deque()
        while todo or inflight:
            while todo and len(inflight) < self.window:
                i = todo.popleft()
                self.serial.write(infer_frame(block, chunks[i], info.bits))
                inflight.append(i)
            i = inflight.popleft()
            reply = self._read_reply()
            if not reply.crc_ok:
                self.resync()
                raise LinkError("a reply from the board failed its CRC")
            if reply.kind == REPLY_ERROR:
                code = reply.error
                tries[i] += 1
                if code not in RETRYABLE or tries[i] > self.retries:
                    raise LinkError(f"board refused a frame for block {block}: error {code} "
                                    f"({ERRORS.get(code, 'unknown')})")
                todo.appendleft(i)
                continue
            n = len(chunks[i])
            if reply.kind != REPLY_RESULT or reply.block != block or len(reply.payload) != n * info.d:
                self.resync()
                raise LinkError(f"unexpected reply: kind 0x{reply.kind:02x}, block {reply.block}, "
                                f"{len(reply.payload)} bytes for {n} tokens")
            results[i] = np.frombuffer(reply.payload, np.uint8).reshape(n, info.d)
        if not results:
            return np.zeros((0, info.d), np.int64)
        return np.concatenate(results).astype(np.int64)


class BoardBackend:
    """MLP backend (quweit_hw.backend) whose counts come from the board over the UART link.

    Checks on connecting that the board carries `bundle` (by bundle_id).
    """

    name = "board"

    def __init__(self, bundle, port, *, baud=None, board="ulx3s", link=None):
        if baud is None:
            from .synth import load_board
            baud = load_board(board).baud
        self.bundle = bundle
        self.link = link or BoardLink(port, baud=baud)
        info = self.link.info()
        if info.bundle_id != bundle_id(bundle):
            raise QuweitError(f"the board on {port!r} carries another bundle (id {info.bundle_id:08x}, "
                              f"expected {bundle_id(bundle):08x} for {str(bundle.path)!r}): rebuild or reprogram")

    def counts(self, index, q):
        """(N, d) counts of bundle block `index` for tokens q (N, d), computed on the board."""
        blocks = self.link.info().blocks
        if index not in blocks:
            raise QuweitError(f"block {index!r} is not on the board (it carries blocks {list(blocks)}); "
                              f"build with --block {index}")
        return self.link.infer(index, q)

    __call__ = counts

    def close(self):
        self.link.close()
