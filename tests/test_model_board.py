# amaranth: UnusedElaboratable=no
"""The whole-model board link (gateware.model_link, protocol version 2) in Amaranth's simulator
through real UART bit streams: images in, every logit, class and cycle count equal to the
golden model and the generator; the batch benchmark; every error path followed by a good
frame; the host driver (host_model) against the simulated gateware."""

import json

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
from quweit_hw.contract.model_bundle import model_board_id, write_model_bundle
from quweit_hw.host_model import ModelLink, check_board_bundle
from quweit_hw.model import data
from quweit_hw.model.checkpoint import build_model
from quweit_hw.model.integer_program import integer_program
from quweit_hw.model.lutmlp import LUTMLPConfig
from quweit_hw.model.vit import ViTConfig
from quweit_hw.whole_model_eval import evaluate_on_board

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


def make_core(program, engine_domain="sync", bundle_id=0x0BADF00D):
    return ModelLinkCore(ModelEngine(program, lanes=8), divisor=DIVISOR, batch=BATCH, timeout=TIMEOUT, stretch=8,
                         bundle_id=bundle_id, engine_domain=engine_domain, engine_clock_hz=100_000_000)


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
    info = protocol.encode_frame(protocol.CMD_INFO, 0)
    # an image after each error that touched the payload path, INFO (cheaper) after the others
    frames = exchange(
        serial,
        bytes(corrupt), good,
        short, good,
        long, good,
        protocol.encode_frame(0x33, 0), info,                                        # unknown command
        protocol.load_frame(BATCH, images[3]), info,                                 # slot beyond the batch memory
        protocol.encode_frame(protocol.CMD_BENCH, BATCH + 1, b"\x01\x00"), info,     # more images than it holds
        protocol.encode_frame(protocol.CMD_BENCH, 0, b"\x01\x00"), info,             # none
        protocol.encode_frame(protocol.CMD_INFO, 0, b"\x00"), good,                  # INFO with a payload
        good[:9], 3 * TIMEOUT, good)                                                 # bytes stop mid-frame
    ok, answer = result(program, core.engine, images[2]), (protocol.REPLY_INFO, 0, core.info.encode())
    errors = [(0, protocol.ERR_CRC, ok), (0, protocol.ERR_LENGTH, ok), (0, protocol.ERR_LENGTH, ok),
              (0, protocol.ERR_COMMAND, answer), (BATCH, protocol.ERR_BLOCK, answer),
              (BATCH + 1, protocol.ERR_BLOCK, answer), (0, protocol.ERR_BLOCK, answer),
              (0, protocol.ERR_LENGTH, ok), (0, protocol.ERR_TIMEOUT, ok)]
    expected = [x for block, code, then in errors for x in ((protocol.REPLY_ERROR, block, bytes([code])), then)]
    assert [(f.kind, f.block, f.payload) for f in frames] == expected


def test_board_backend_against_the_simulated_board(program, images, tmp_path):
    """eval's board backend (ModelLink) over the simulated gateware: the model id checked,
    images with two frames in flight, the batch benchmark with its checksum; refused requests
    raise LinkError and the link goes on."""
    path = write_model_bundle(tmp_path / "tiny", program)
    manifest = json.loads((path / "manifest.json").read_text())
    core = make_core(program, bundle_id=model_board_id(manifest))
    # a wall-clock timeout over a simulation: generous, so that a loaded machine does not trip it
    link = ModelLink(serial_port=SimulatedSerial(core, DIVISOR), timeout=300.0)
    logits, labels, cycles, figures, bench = evaluate_on_board(path, program, manifest, images[:4], None, 3, link, None)
    gold = golden_model.logits(program, images[:4])
    assert np.array_equal(logits, gold) and np.array_equal(labels, gold.argmax(1))
    assert cycles.tolist() == [core.engine.cycles_per_image] * 4 == [figures["cycles_per_image"]] * 4
    assert bench["checksum_ok"] and bench["images"] == BATCH * 3
    assert bench["images_per_second"] == pytest.approx(BATCH * 3 * 100e6 / bench["cycles"])
    with pytest.raises(LinkError, match=r"error 3 \(block not on the board\)"):
        link.bench(BATCH + 1, 1)
    with pytest.raises(UserError, match="batch memory holds 1 to 3 images"):
        link.load(images[:4])
    with pytest.raises(UserError, match="16 pixels each"):
        link.classify(np.zeros((1, 1, 5, 5), np.uint8))
    assert np.array_equal(link.classify(images[5:6])[0], golden_model.logits(program, images[5:6]))
    other = dict(manifest, rules={**manifest["rules"], "x": 1})
    with pytest.raises(UserError, match=r"carries another model \(id [0-9a-f]{8}, expected [0-9a-f]{8} for "):
        check_board_bundle(link, other, path)


def test_the_host_refuses_the_other_top(program):
    """A version-1 (MLP-only) board answering INFO: a one-line LinkError naming both tops."""
    from quweit_hw.contract.synthetic import random_block
    from quweit_hw.gateware.engine import MLPEngine
    from quweit_hw.gateware.link import LinkCore

    block = random_block(d=4, thresholds=4, n=4, hidden=(16,), group_size=4, seed=1, name="b")
    core = LinkCore([(0, MLPEngine(block))], divisor=DIVISOR, max_tokens=4, timeout=TIMEOUT, stretch=8)
    link = ModelLink(serial_port=SimulatedSerial(core, DIVISOR), timeout=60.0)
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


# --- the build path: the whole-model top by default for a version 2 bundle ----------------------

def test_smoke_build_of_the_whole_model_top(program, tmp_path):
    """synth elaborates the whole-model top (no tools run). The ULX3S default: one clock, the
    board's model_clock_hz, for the link and the engine, with router2. With a
    model_engine_clock_hz of its own, the PLL's second output clocks the engine, AsyncFIFOs
    cross to it, INFO says so."""
    from quweit_hw.contract.boards import load_board
    from quweit_hw.contract.bundle_files import load_bundle
    from quweit_hw.gateware.synth import build_dir, make_model_top, synth

    path = write_model_bundle(tmp_path / "tiny", program)
    board = load_board("ulx3s", model_lanes=8).for_whole_model()
    assert (board.clock_hz, board.engine_hz, board.divisor) == (45_000_000, 45_000_000, 15)
    assert "--router router2" in " ".join(board.nextpnr_opts)
    assert "--router" not in " ".join(load_board("ulx3s").nextpnr_opts)  # the MLP-only top: router1
    plan = synth(load_bundle(path), board, out=tmp_path / "one", do_build=False, whole_model=True)
    assert "engine_clk" not in plan.files["top.il"] and "--router router2" in plan.files["build_top.sh"]
    board = load_board("ulx3s", model_lanes=8, model_engine_clock_hz=90_000_000).for_whole_model()
    assert (board.clock_hz, board.engine_hz) == (45_000_000, 90_000_000)
    il = synth(load_bundle(path), board, out=tmp_path / "b", do_build=False, whole_model=True).files["top.il"]
    assert "EHXPLLL" in il and "CLKOS_DIV" in il and "engine_clk" in il
    assert "top.core.inbound.produce_cdc" in il and "top.core.outbound.consume_cdc" in il  # AsyncFIFOs' pointers
    _, core = make_model_top(path, board)
    assert (core.info.engine_clock_hz, core.info.lanes, core.info.batch) == (90_000_000, 8, board.batch_images)
    assert build_dir(load_bundle(path), board, True).name == "ulx3s"
    assert build_dir(load_bundle(path), board, False).name == "ulx3s-mlp-only"
    from quweit_hw.resources import REFERENCE
    with pytest.raises(UserError, match="is a version-1 bundle"):
        make_model_top(REFERENCE, board)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A current folder with a version 1 bundle, a version 2 bundle and a float checkpoint."""
    from quweit_hw.contract import bundle_files, synthetic

    monkeypatch.chdir(tmp_path)
    block = synthetic.random_block(d=2, thresholds=4, n=3, hidden=(), group_size=4, seed=3)
    bundle_files.write_bundle(tmp_path / "v1", [block])
    write_model_bundle(tmp_path / "v2", small_program())
    return tmp_path


def written(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, needle", [
    (["synth", "--bundle", "v1", "--whole-model", "--no-build", "-o", "b"], "the whole-model top needs a version 2"),
    (["synth", "--bundle", "v2", "--block", "0", "--no-build", "-o", "b"], "--block picks the MLP-only top"),
    (["build", "CKPT", "--whole-model", "-o", "b", "--bundle-out", "bo"], "exports a version 1 bundle"),
    (["eval", "v2", "--backend", "board"], "--backend board needs --port"),
    (["eval", "v2", "--backend", "golden", "--bench", "3"], "--bench runs on the board"),
    (["synth", "--bundle", "v2", "--board", "ulx3s-12f", "--lanes", "64", "--no-build", "-o", "b"],
     "does not fit ulx3s-12f (LFE5U-12F): flip-flops"),
    (["synth", "--bundle", "v2", "--mlp-only", "--lanes", "8", "--no-build", "-o", "b"], "the MLP-only top has none"),
])
def test_whole_model_errors_are_one_line_and_write_nothing(argv, needle, place, capsys):
    from quweit_hw import cli
    from quweit_hw.resources import REFERENCE_CHECKPOINT

    argv = [str(REFERENCE_CHECKPOINT) if a == "CKPT" else a for a in argv]
    before = written(place)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert written(place) == before, "something was written"


def test_a_model_too_big_is_refused_before_the_cpu_is_measured(place, capsys, monkeypatch):
    """A real build (not --no-build) of a model that does not fit: the fit error comes at once,
    before the report's CPU images/s are measured, and nothing is written."""
    from quweit_hw import cli, model_throughput

    def measured(*_):
        raise AssertionError("the CPU was measured before the fit check")
    monkeypatch.setattr(model_throughput, "bundle_cpu_figures", measured)
    before = written(place)
    assert cli.main(["synth", "--bundle", "v2", "--board", "ulx3s-12f", "--lanes", "64", "-o", "b"]) == 2
    assert "does not fit ulx3s-12f" in capsys.readouterr().err
    assert written(place) == before


def test_synth_picks_the_top_by_the_bundle(place, capsys):
    """No flag: a version 2 bundle gives the whole-model top, a version 1 bundle the MLP-only
    one; --mlp-only builds the MLP-only top of a version 2 bundle's LUT blocks."""
    from quweit_hw import cli

    for argv, top in ((["--bundle", "v2"], "model_link"), (["--bundle", "v1"], "socket0"),
                      (["--bundle", "v2", "--mlp-only"], "socket0")):
        assert cli.main(["synth", *argv, "--no-build", "-o", "b"]) == 0, capsys.readouterr().err
        il = (place / "b" / "top.il").read_text()
        assert ("runner" in il) == (top == "model_link") and ("socket0" in il) == (top == "socket0"), argv


def test_the_makefile_defaults_and_the_whole_model_switch():
    """make synth and make demo: the whole model by default, the integer reference bundle (a
    version 2 bundle of its own checkpoint) and that checkpoint; the float reference the help
    names for the MLP-only top is a version 1 bundle; MLP_ONLY=1 passes --mlp-only."""
    import re
    from pathlib import Path

    from quweit_hw.contract.bundle_files import format_version

    root = Path(__file__).resolve().parent.parent
    make = (root / "Makefile").read_text()
    bundle = re.search(r"^BUNDLE\s*\?=\s*(\S+)", make, re.M).group(1)
    ckpt = re.search(r"^CKPT\s*\?=\s*(\S+)", make, re.M).group(1)
    whole = "export/reference-integer"
    assert (bundle, ckpt) == (whole, f"{whole}/checkpoint.pt")
    assert format_version(root / whole) == 2
    assert "BUNDLE=export/reference " in make and format_version(root / "export/reference") == 1
    assert json.loads((root / whole / "manifest.json").read_text())["source_checkpoint"]["path"] == f"{whole}/checkpoint.pt"
    assert "$(if $(MLP_ONLY),--mlp-only)" in make and make.count("$(TOP_FLAGS)") == 3

def test_whole_model_report_reads_nextpnr_and_adds_throughput(program, tmp_path):
    """make_report of the whole-model top: utilisation and Fmax from nextpnr's report, and the
    throughput fields at the engine clock's achieved Fmax (images/s = Fmax / cycles per image)."""
    from quweit_hw.contract.boards import load_board
    from quweit_hw.contract.bundle_files import load_bundle
    from quweit_hw.gateware.report import make_report, report_markdown
    from quweit_hw.gateware.synth import make_model_top

    path = write_model_bundle(tmp_path / "tiny", program)
    # two clocks, so that the report must pick the engine's (one clock: the only one)
    board = load_board("ulx3s", model_lanes=8, model_engine_clock_hz=90_000_000).for_whole_model()
    _, core = make_model_top(path, board)
    out = tmp_path / "build"
    out.mkdir()
    (out / "nextpnr-report.json").write_text(json.dumps({
        "utilization": {"TRELLIS_COMB": {"used": 5000, "available": 83640}, "MULT18X18D": {"used": 37, "available": 156}},
        "fmax": {"$glbnet$engine_clk": {"achieved": 120.0, "constraint": 100.0},
                 "$glbnet$clk": {"achieved": 110.0, "constraint": 75.0}}}))
    (out / "top.json").write_text(json.dumps({"modules": {"top": {"attributes": {"top": "1"}, "cells": {
        "a": {"type": "MULT18X18D"}, "b": {"type": "LUT4"}}}}}))
    cpu = {"batch": 4, "images": 4, "repeats": 1, "golden": 50.0, "torch_1_thread": None,
           "torch_default_threads": None, "torch_default_threads_n": None}
    r = make_report(out, load_bundle(path), board, core, 1.0, cpu=cpu)
    w = r["whole_model"]
    assert w["cycles_per_image"] == core.engine.cycles_per_image and w["fit_estimate"]["mult18x18d"] > 0
    assert w["throughput"]["chip"]["images_per_s"] == pytest.approx(120e6 / w["cycles_per_image"])
    assert w["throughput"]["uart"]["baud"] == board.baud and w["throughput"]["cpu"]["golden"] == 50.0
    assert r["timing_met"] and r["resources"]["DSP (MULT18X18D)"] == {"used": 1, "available": 156}
    text = report_markdown(r)
    assert "### Throughput (whole model)" in text and "golden model (numpy)" in text
