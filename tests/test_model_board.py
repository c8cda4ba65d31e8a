# amaranth: UnusedElaboratable=no
"""The whole-model board link (gateware.model_link, protocol version 2) in Amaranth's simulator
through real UART bit streams: images in, every logit, class and cycle count equal to the
golden model and the generator; the batch benchmark; every error path followed by a good
frame; the host driver (host_model) against the simulated gateware."""

import numpy as np
import pytest
import torch

from quweit_hw.contract import golden_model, protocol
from quweit_hw.contract.protocol import ModelInfo, ModelResult
from quweit_hw.errors import UserError
from quweit_hw.gateware.link_sim import SimulatedSerial
from quweit_hw.gateware.model_engine import ModelEngine, instruction_cycles
from quweit_hw.gateware.model_link import ModelLinkCore
from quweit_hw.host import LinkError
from quweit_hw.host_model import ModelLink, board_bench
from quweit_hw.model import data
from quweit_hw.model.checkpoint import build_model
from quweit_hw.model.integer_program import integer_program
from quweit_hw.model.lutmlp import LUTMLPConfig
from quweit_hw.model.vit import ViTConfig

DIVISOR = 4       # the real UART logic at a rate the Python simulator can afford
TIMEOUT = 300     # link clocks of silence that abort a frame
BATCH = 3


def small_program():
    """A 4x4 image in 4 patches of 2x2 (T = 5), d = 8, one block with a LUT MLP: small enough
    that an image takes under 2,000 clocks, with every unit of the engine in it."""
    torch.manual_seed(0)
    lut = LUTMLPConfig(d=8, thresholds=4, hidden=(32,), group_size=4, window=8)
    cfg = ViTConfig(image_size=4, patch=2, d=8, depth=1, heads=1, pool="cls", mlp="lut", lut=lut, integer=True)
    model = build_model("vit", cfg)
    x = torch.randn(16, 1, 4, 4)
    data.calibrate_lut_mlps(model, [x])
    model.train()
    model(x)  # one fake-quant pass sets every observed scale
    return integer_program(model.eval())


def edge_images():
    """Edges first (all 0, all 255), then random; no 0xA5 (a start marker) in them, so a
    refused frame's skipped bytes cannot start a frame of their own."""
    rng = np.random.default_rng(5)
    pix = rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    pix[pix == protocol.SOF_REQUEST] = 0
    pix[0], pix[1] = 0, 255
    return pix


@pytest.fixture(scope="module")
def program():
    return small_program()


@pytest.fixture(scope="module")
def images():
    return edge_images()


def make_core(program, engine_domain="sync"):
    return ModelLinkCore(ModelEngine(program, lanes=8), divisor=DIVISOR, batch=BATCH, timeout=TIMEOUT, stretch=8,
                         bundle_id=0x0BADF00D, engine_domain=engine_domain, engine_clock_hz=100_000_000)


def exchange(serial, *steps):
    """Send each step (a frame, or an int: that many link clocks of silence), at most two frames
    in flight as the protocol asks, and return the replies, one per frame."""
    parser, frames, sent = protocol.FrameParser(), [], 0

    def wait_for(n):
        while len(frames) < n:
            assert serial.cycles < 400_000, f"only {len(frames)} of {n} replies came"
            frames.extend(parser.feed(serial.read(4096)))
    for step in steps:
        if isinstance(step, int):
            serial.run(step)
        else:
            wait_for(sent - 1)
            serial.write(step)
            sent += 1
    wait_for(sent)
    serial.run(2000)
    frames += parser.feed(serial.read(4096))
    assert len(frames) == sent, "more replies than requests"
    assert all(f.crc_ok for f in frames) and serial.stop_bit_errors == 0
    return frames


def result(program, engine, pixels):
    logits = golden_model.logits(program, pixels[None])[0]
    return (protocol.REPLY_IMAGE, 0, ModelResult(int(logits.argmax()), engine.cycles_per_image, tuple(logits)).encode())


def test_images_and_the_batch_benchmark_on_two_clocks(program, images):
    """INFO, images, LOAD and BENCH, the engine on its own faster clock behind the AsyncFIFOs."""
    core = make_core(program, "engine")
    engine = core.engine
    serial = SimulatedSerial(core, DIVISOR)
    repeats = 2
    frames = exchange(serial, protocol.encode_frame(protocol.CMD_INFO, 0), protocol.image_frame(images[0]),
                      protocol.image_frame(images[1]),
                      *(protocol.load_frame(k, images[2 + k]) for k in range(BATCH)),
                      protocol.bench_frame(BATCH, repeats), protocol.image_frame(images[5]))
    info = ModelInfo.decode(frames[0].payload)
    assert info == ModelInfo(2, 1, 4, 10, 8, BATCH, engine.cycles_per_image, 100_000_000, 0x0BADF00D)
    assert engine.cycles_per_image == sum(instruction_cycles(engine))
    got = [(f.kind, f.block, f.payload) for f in frames[1:]]
    assert got[0] == result(program, engine, images[0]) and got[1] == result(program, engine, images[1])
    assert got[2:2 + BATCH] == [(protocol.REPLY_LOADED, k, bytes([k])) for k in range(BATCH)]
    kind, block, payload = got[2 + BATCH]
    assert (kind, block) == (protocol.REPLY_BENCH, BATCH)
    cycles, checksum = protocol.decode_bench(payload)
    assert checksum == protocol.bench_checksum(golden_model.logits(program, images[2:2 + BATCH]), repeats)
    # back to back: each image costs its pixels (one a clock) and its compute, a few clocks of
    # handshakes at most, and the last result's logits are summed after it
    n = BATCH * repeats
    assert n * (engine.cycles_per_image + info.pixels) <= cycles <= n * (engine.cycles_per_image + info.pixels + 4) + 16
    assert got[3 + BATCH] == result(program, engine, images[5])


def test_every_error_gets_a_reply_and_the_link_recovers(program, images):
    core = make_core(program)
    serial = SimulatedSerial(core, DIVISOR)
    good = protocol.image_frame(images[2])
    corrupt = bytearray(protocol.image_frame(images[3]))
    corrupt[8] ^= 0x04
    short = protocol.encode_frame(protocol.CMD_IMAGE, 0, images[3].tobytes()[:-1])
    long = protocol.encode_frame(protocol.CMD_IMAGE, 0, images[3].tobytes() + b"\x00")
    for frame in (short, long):
        assert protocol.SOF_REQUEST not in frame[5:], "a skipped byte would start a frame"
    frames = exchange(
        serial,
        bytes(corrupt), good,
        short, good,
        long, good,
        protocol.encode_frame(0x33, 0), good,                                        # unknown command
        protocol.load_frame(BATCH, images[3]), good,                                 # slot beyond the batch memory
        protocol.encode_frame(protocol.CMD_BENCH, BATCH + 1, b"\x01\x00"), good,     # more images than it holds
        protocol.encode_frame(protocol.CMD_BENCH, 0, b"\x01\x00"), good,             # none
        protocol.encode_frame(protocol.CMD_INFO, 0, b"\x00"), good,                  # INFO with a payload
        good[:9], 3 * TIMEOUT, good)                                                 # bytes stop mid-frame
    ok = result(program, core.engine, images[2])
    errors = [(0, protocol.ERR_CRC), (0, protocol.ERR_LENGTH), (0, protocol.ERR_LENGTH), (0, protocol.ERR_COMMAND),
              (BATCH, protocol.ERR_BLOCK), (BATCH + 1, protocol.ERR_BLOCK), (0, protocol.ERR_BLOCK),
              (0, protocol.ERR_LENGTH), (0, protocol.ERR_TIMEOUT)]
    expected = [x for block, code in errors for x in ((protocol.REPLY_ERROR, block, bytes([code])), ok)]
    assert [(f.kind, f.block, f.payload) for f in frames] == expected


def test_host_driver_against_the_simulated_board(program, images):
    """ModelLink over the simulated gateware: classify with two frames in flight, the batch
    benchmark with its checksum; refused requests raise LinkError and the link goes on."""
    core = make_core(program)
    link = ModelLink(serial_port=SimulatedSerial(core, DIVISOR), timeout=20.0)
    info = link.info()
    assert (info.version, info.pixels, info.batch) == (2, 16, BATCH)
    logits, labels, cycles = link.classify(images[:4])
    gold = golden_model.logits(program, images[:4])
    assert np.array_equal(logits, gold) and np.array_equal(labels, gold.argmax(1))
    assert cycles.tolist() == [core.engine.cycles_per_image] * 4
    figures = board_bench(link, program, images[:2], repeats=3)
    assert figures["checksum_ok"] and figures["images"] == 6
    assert figures["images_per_second"] == pytest.approx(6 * 100e6 / figures["cycles"])
    with pytest.raises(LinkError, match=r"error 3 \(block not on the board\)"):
        link.bench(BATCH + 1, 1)
    with pytest.raises(UserError, match="batch memory holds 1 to 3 images"):
        link.load(images[:4])
    with pytest.raises(UserError, match="16 pixels each"):
        link.classify(np.zeros((1, 1, 5, 5), np.uint8))
    assert np.array_equal(link.classify(images[5:6])[0], golden_model.logits(program, images[5:6]))


def test_the_host_refuses_the_other_top(program):
    """A version-1 (MLP-only) board answering INFO: a one-line LinkError naming both tops."""
    from quweit_hw.contract.synthetic import random_block
    from quweit_hw.gateware.engine import MLPEngine
    from quweit_hw.gateware.link import LinkCore

    block = random_block(d=4, thresholds=4, n=4, hidden=(16,), group_size=4, seed=1, name="b")
    core = LinkCore([(0, MLPEngine(block))], divisor=DIVISOR, max_tokens=4, timeout=TIMEOUT, stretch=8)
    link = ModelLink(serial_port=SimulatedSerial(core, DIVISOR), timeout=5.0)
    with pytest.raises(LinkError, match=r"protocol version 1 \(the MLP-only top\), this command needs 2"):
        link.info()


def test_request_table_and_frames():
    requests = protocol.model_requests(784, 10, 64)
    assert [q.code for q in requests] == [protocol.CMD_IMAGE, protocol.CMD_LOAD, protocol.CMD_BENCH, protocol.CMD_INFO]
    assert requests[0].reply_length == 45 and requests[2].blocks == tuple(range(1, 65))
    with pytest.raises(ValueError, match="1 to 255 images"):
        protocol.model_requests(784, 10, 256)
    assert protocol.bench_frame(2, 1 << 16)[5:7] == b"\x00\x00"  # 65536 repeats: 0 on the wire
    with pytest.raises(ValueError, match="1 .. 65536"):
        protocol.bench_frame(2, 0)
    r = ModelResult(3, 70000, (-(1 << 31), -1, 0, (1 << 31) - 1))
    assert ModelResult.decode(r.encode(), 4) == r
    assert protocol.bench_checksum([[1 << 31, 1 << 31], [-1, 0]], 3) == (3 * ((1 << 32) - 1)) % (1 << 32)
