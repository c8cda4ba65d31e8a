"""Host side of the board link: a framed serial link (`FramedLink`), the MLP-only top's driver
(`BoardLink`) and the board MLP backend; `host_model` drives the whole-model top.

Speaks the wire protocol of `quweit_hw.contract.protocol` (docs/uart-protocol.md).
"""

import time
from collections import deque

import numpy as np

from .contract.boards import load_board
from .contract.bundle import board_id
from .contract.protocol import (
    CMD_INFO, ERRORS, MODEL_PROTOCOL_VERSION, PROTOCOL_VERSION, REPLY_ERROR, REPLY_INFO, REPLY_RESULT, RETRYABLE, BoardInfo, FrameParser,
    encode_frame, infer_frame,
)
from .errors import UserError


class LinkError(UserError):
    """The board answered with an error, or did not answer in time."""


class FramedLink:
    """Frames to and replies from a board top over a serial port (docs/uart-protocol.md).

    `serial_port` may be any object with pyserial's write/read/in_waiting/
    reset_input_buffer/close (tests pass a fake, or the simulated gateware of
    `gateware.link_sim`); otherwise `port` is opened.
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

    def info_payload(self, version):
        """The INFO reply's payload; LinkError unless its first byte, the protocol version, is `version`."""
        self.serial.write(encode_frame(CMD_INFO, 0))
        reply = self._read_reply()
        if not reply.crc_ok or reply.kind != REPLY_INFO:
            self.resync()
            raise LinkError(f"expected an INFO reply, got kind 0x{reply.kind:02x} (crc ok: {reply.crc_ok})")
        if not reply.payload or reply.payload[0] != version:
            got = reply.payload[0] if reply.payload else None
            tops = {PROTOCOL_VERSION: "the MLP-only top", MODEL_PROTOCOL_VERSION: "the whole-model top"}
            raise LinkError(f"board speaks protocol version {got} ({tops.get(got, 'unknown')}), this command "
                            f"needs {version} ({tops[version]}): build and program that top")
        return reply.payload


    def transact(self, frames, kind, what=""):
        """The replies to request `frames`, in order, `window` of them in flight; a frame refused
        for line trouble (CRC, timeout, overflow) is resent up to `retries` times. LinkError on
        any other error code, on a reply that fails its CRC and on one not of type `kind`."""
        replies, tries = [None] * len(frames), [0] * len(frames)
        todo, inflight = deque(range(len(frames))), deque()
        while todo or inflight:
            while todo and len(inflight) < self.window:
                i = todo.popleft()
                self.serial.write(frames[i])
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
                    raise LinkError(f"board refused a frame{what}: error {code} ({ERRORS.get(code, 'unknown')})")
                todo.appendleft(i)
                continue
            if reply.kind != kind:
                self.resync()
                raise LinkError(f"unexpected reply: kind 0x{reply.kind:02x}, expected 0x{kind:02x}")
            replies[i] = reply
        return replies


class BoardLink(FramedLink):
    """The MLP-only top's link (protocol version 1): INFO and INFER."""

    def info(self):
        """The board's BoardInfo (cached after the first call)."""
        if self._info is None:
            self._info = BoardInfo.decode(self.info_payload(PROTOCOL_VERSION))
        return self._info

    def infer(self, block, q):
        """Counts (N, d) int64 for tokens q (N, d) on bundle block `block`, in frames of up to
        max_tokens tokens (`FramedLink.transact`)."""
        info = self.info()
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != info.d:
            raise ValueError(f"tokens must have shape (N, {info.d}), got {q.shape}")
        chunks = [q[i:i + info.max_tokens] for i in range(0, len(q), info.max_tokens)]
        replies = self.transact([infer_frame(block, c, info.bits) for c in chunks], REPLY_RESULT,
                                f" for block {block}")
        results = []
        for chunk, reply in zip(chunks, replies):
            n = len(chunk)
            if reply.block != block or len(reply.payload) != n * info.d:
                self.resync()
                raise LinkError(f"unexpected reply: kind 0x{reply.kind:02x}, block {reply.block}, "
                                f"{len(reply.payload)} bytes for {n} tokens")
            results.append(np.frombuffer(reply.payload, np.uint8).reshape(n, info.d))
        if not results:
            return np.zeros((0, info.d), np.int64)
        return np.concatenate(results).astype(np.int64)


class BoardBackend:
    """MLP backend (quweit_hw.backends) whose counts come from the board over the UART link.

    Checks on connecting that the board carries `bundle` (by its `board_id`).
    """

    name = "board"

    def __init__(self, bundle, port, *, baud=None, board="ulx3s", link=None):
        if baud is None:
            baud = load_board(board).baud
        self.bundle = bundle
        self.link = link or BoardLink(port, baud=baud)
        info = self.link.info()
        if info.bundle_id != board_id(bundle):
            raise UserError(f"the board on {port!r} carries another bundle (id {info.bundle_id:08x}, "
                            f"expected {board_id(bundle):08x} for {str(bundle.path)!r}): rebuild or reprogram")

    def counts(self, index, q):
        """(N, d) counts of bundle block `index` for tokens q (N, d), computed on the board."""
        blocks = self.link.info().blocks
        if index not in blocks:
            raise UserError(f"block {index!r} is not on the board (it carries blocks {list(blocks)}); "
                              f"build with --block {index}")
        return self.link.infer(index, q)

    __call__ = counts

    def close(self):
        self.link.close()
