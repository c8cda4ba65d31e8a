"""Host side of the UART link: CRC, frame builder and parser, BoardLink against a scripted port."""

import numpy as np
import pytest

from quweit_hw.contract import protocol
from quweit_hw.contract.protocol import BoardInfo, FrameParser
from quweit_hw.errors import UserError
from quweit_hw.host import BoardLink, LinkError


def test_crc16_check_value_and_zero_residue():
    assert protocol.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE catalogue check value
    frame = protocol.encode_frame(protocol.CMD_INFER, 3, b"\x01\x02")
    assert frame == bytes([0xA5, 0x01, 0x03, 0x02, 0x00, 0x01, 0x02]) + protocol.crc16(frame[1:-2]).to_bytes(2, "big")
    assert protocol.crc16(frame[1:]) == 0


def test_token_bytes_twos_complement_and_range():
    q = np.array([[-128, -1, 0, 127]])
    assert protocol.token_bytes(q) == bytes([0x80, 0xFF, 0x00, 0x7F])
    assert protocol.token_bytes(np.array([[-8, 7]]), bits=4) == bytes([0xF8, 0x07])
    with pytest.raises(ValueError, match=r"\[-8, 7\] for bits=4"):
        protocol.token_bytes(np.array([[8]]), bits=4)
    with pytest.raises(ValueError, match="at most 8 bits"):
        protocol.token_bytes(q, bits=9)


def test_parser_skips_noise_splits_and_flags_bad_crc():
    good = protocol.encode_frame(protocol.REPLY_RESULT, 1, b"\x05\x06", sof=protocol.SOF_REPLY)
    bad = bytearray(good)
    bad[5] ^= 0x40
    parser = FrameParser()
    stream = b"\x00\x13" + good + bytes(bad) + good
    frames = []
    for i in range(0, len(stream), 3):  # arrives in pieces
        frames += parser.feed(stream[i:i + 3])
    assert [(f.kind, f.block, f.payload, f.crc_ok) for f in frames] == [
        (0x81, 1, b"\x05\x06", True), (0x81, 1, b"\x45\x06", False), (0x81, 1, b"\x05\x06", True)]
    assert parser.skipped == 2


def test_board_info_round_trip():
    info = BoardInfo(1, 16, 8, 4, 32, 0xDEADBEEF, (0, 2), (9, 11))
    assert BoardInfo.decode(info.encode()) == info
    with pytest.raises(UserError, match="malformed INFO"):
        BoardInfo.decode(info.encode()[:-1])


class ScriptedPort:
    """A serial port whose board answers each request frame with replies from `answer(frame)`."""

    def __init__(self, answer):
        self.answer, self.rx, self.requests = answer, bytearray(), []
        self.parser = FrameParser(sof=protocol.SOF_REQUEST)

    def write(self, data):
        for frame in self.parser.feed(data):
            self.requests.append(frame)
            self.rx += self.answer(frame)

    @property
    def in_waiting(self):
        return len(self.rx)

    def read(self, n):
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def reset_input_buffer(self):
        self.rx.clear()

    def close(self):
        pass


INFO = BoardInfo(1, 2, 8, 4, 2, 7, (0,), (5,))


def reply(kind, block, payload):
    return protocol.encode_frame(kind, block, payload, sof=protocol.SOF_REPLY)


def fake_board(errors=()):
    """Counts = feature + 1 (mod 256); the k-th INFER frame gets error errors[k] when given."""
    seen = []

    def answer(frame):
        if frame.kind == protocol.CMD_INFO:
            return reply(protocol.REPLY_INFO, 0, INFO.encode())
        seen.append(frame)
        if len(seen) <= len(errors) and errors[len(seen) - 1]:
            return reply(protocol.REPLY_ERROR, frame.block, bytes([errors[len(seen) - 1]]))
        return reply(protocol.REPLY_RESULT, frame.block, bytes((b + 1) % 256 for b in frame.payload))
    return answer


def test_infer_splits_into_frames_and_retries_a_crc_error():
    port = ScriptedPort(fake_board(errors=(0, protocol.ERR_CRC)))
    link = BoardLink(serial_port=port, timeout=0.5)
    q = np.array([[0, 1], [2, 3], [4, 5], [-1, 9], [7, 7]])
    np.testing.assert_array_equal(link.infer(0, q), (q.astype(np.int8).astype(np.uint8).astype(int) + 1) % 256)
    infer = [f for f in port.requests if f.kind == protocol.CMD_INFER]
    # max_tokens=2, two frames in flight: frame 1 is refused and resent after frame 2
    assert [len(f.payload) // 2 for f in infer] == [2, 2, 1, 2]
    assert infer[1].payload == infer[3].payload


def test_infer_raises_on_a_refused_block_and_on_silence():
    link = BoardLink(serial_port=ScriptedPort(fake_board(errors=(protocol.ERR_BLOCK,))), timeout=0.5)
    with pytest.raises(LinkError, match=r"error 3 \(block not on the board\)"):
        link.infer(5, np.zeros((1, 2), int))
    silent = BoardLink(serial_port=ScriptedPort(lambda frame: b""), timeout=0.2)
    with pytest.raises(LinkError, match="no reply from the board within 0.2 s"):
        silent.info()


def test_infer_gives_up_after_retries():
    errors = (protocol.ERR_TIMEOUT,) * 3
    link = BoardLink(serial_port=ScriptedPort(fake_board(errors=errors)), timeout=0.5, retries=2)
    with pytest.raises(LinkError, match=r"error 5 \(frame timed out"):
        link.infer(0, np.zeros((1, 2), int))
