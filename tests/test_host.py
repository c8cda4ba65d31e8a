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


# --- a board built with the defaults, and eval with the defaults (issue 13, item 3) ---------------

import dataclasses
import os
import pty
import select
import threading
import tty

from quweit_hw.contract import golden
from quweit_hw.contract.bundle import board_id, bundle_id
from quweit_hw.contract.bundle_files import load_bundle
from quweit_hw.host import BoardBackend
from quweit_hw.resources import REFERENCE, REFERENCE_CHECKPOINT


@pytest.fixture(scope="module")
def default_exports(tmp_path_factory):
    """Two default exports of the reference checkpoint: to different folders, the checkpoint's path typed two ways."""
    from quweit_hw.model.export import export_checkpoint
    root = tmp_path_factory.mktemp("exports")
    a = load_bundle(export_checkpoint(REFERENCE_CHECKPOINT, root / "a"))
    b = load_bundle(export_checkpoint(os.path.relpath(REFERENCE_CHECKPOINT), root / "elsewhere" / "b"))
    return a, b


def test_the_bundle_id_depends_on_content_not_on_paths(default_exports):
    a, b = default_exports
    assert a.manifest["source_checkpoint"]["path"] != b.manifest["source_checkpoint"]["path"]
    assert a.path != b.path
    assert bundle_id(a) == bundle_id(b) == bundle_id(load_bundle(REFERENCE))
    assert board_id(a) == int.from_bytes(bytes.fromhex(bundle_id(b))[:4], "little")


def test_board_backend_accepts_a_bundle_exported_elsewhere(default_exports):
    a, b = default_exports
    info = BoardInfo(1, 64, 8, 5, 16, board_id(a), (0, 1), (8, 8))

    def link(info):
        return BoardLink(serial_port=ScriptedPort(lambda f: reply(protocol.REPLY_INFO, 0, info.encode())), timeout=0.5)
    backend = BoardBackend(b, "/dev/fake", link=link(info))  # the board carries a, eval loaded b
    assert backend.link.info().bundle_id == board_id(b)
    with pytest.raises(UserError, match=r"carries another bundle \(id [0-9a-f]{8}, expected [0-9a-f]{8} for "):
        BoardBackend(b, "/dev/fake", link=link(dataclasses.replace(info, bundle_id=board_id(a) ^ 1)))


class PtyBoard:
    """A board on a pseudo-terminal: answers INFO with `info` and INFER with the golden counts of `bundle`."""

    def __init__(self, bundle, info):
        self.bundle, self.info = bundle, info
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.frames, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        parser = FrameParser(sof=protocol.SOF_REQUEST)
        while not self.stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            for frame in parser.feed(os.read(self.master, 4096)):
                self.frames += 1
                if frame.kind == protocol.CMD_INFO:
                    out = reply(protocol.REPLY_INFO, 0, self.info.encode())
                else:
                    q = np.frombuffer(frame.payload, np.int8).reshape(-1, self.info.d)
                    c = golden.counts(self.bundle.blocks[frame.block], q)
                    out = reply(protocol.REPLY_RESULT, frame.block, c.astype(np.uint8).tobytes())
                os.write(self.master, out)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


def test_eval_with_defaults_accepts_a_board_top_built_with_defaults():
    pytest.importorskip("serial")
    from quweit_hw.contract.boards import load_board
    from quweit_hw.evaluation import evaluate_with_backend
    from quweit_hw.gateware.synth import make_top

    reference = load_bundle(REFERENCE)  # what `synth` and `build` put on the board by default
    _, core = make_top(reference, load_board("ulx3s"))
    assert core.info.bundle_id == board_id(reference) and core.info.blocks == (0, 1)
    with PtyBoard(reference, core.info) as board:
        # eval's defaults: no --bundle, so a fresh export of the checkpoint into a temporary folder
        r = evaluate_with_backend(REFERENCE_CHECKPOINT, "board", port=board.port, limit=4, compare=True,
                                  progress=False)
    tokens = 4 * 17
    assert r["agreement"].tokens == [tokens, tokens] and r["agreement"].exact, str(r["agreement"])
    assert r["same_predictions"] and board.frames > 2
