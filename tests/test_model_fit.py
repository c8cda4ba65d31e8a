"""The whole-model engine's resource estimate (gateware.model_fit) and the fit check."""

import pytest
from tiny_models import trained

from quweit_hw.contract.boards import load_board
from quweit_hw.errors import UserError
from quweit_hw.gateware import model_fit as F
from quweit_hw.gateware.model_rtl import load_program
from quweit_hw.model.integer_program import integer_program
from quweit_hw.resources import REFERENCE_INTEGER


@pytest.mark.parametrize("depth, width, blocks", [
    (512, 36, 1), (513, 36, 2), (16384, 1, 1), (2048, 9, 1), (2049, 9, 2), (1024, 18, 1), (426, 176, 5),
    (1186, 256, 22),  # synth_ecp5 maps a 1186 x 256 ROM to 22 DP16KD (7 slices of 512x36, one 4096x4)
    (64, 256, 8), (1088, 16, 2)])
def test_dp16kd_configurations(depth, width, blocks):
    assert F.dp16kd_blocks(depth, width) == blocks


@pytest.mark.parametrize("shape, kind, cells", [
    # (width, depth, read ports, write ports, async read): what synth_ecp5 made of a design holding
    # only that memory (Yosys 0.55; docs/results.md, "Fit estimate")
    ((256, 64, 1, 1), "dp16kd", 8),    # a tie of costs (1024 each) goes to block RAM
    ((512, 17, 1, 1), "lutram", 256),
    ((20, 17, 1, 1), "lutram", 10),
    ((16, 1088, 2, 1), "dp16kd", 4),   # one copy per read port
    ((16, 64, 1, 0), "logic", 0),      # a small ROM: soft logic (no LUT RAM for ROMs)
    ((8, 784, 1, 1), "dp16kd", 1),
])
def test_memories_map_as_yosys_maps_them(shape, kind, cells):
    m = F.map_memory("m", *shape)
    assert (m.kind, m.cells) == (kind, cells)


def test_an_asynchronous_read_port_rules_out_block_ram():
    assert F.map_memory("fifo", 320, 8, 1, 1, async_read=True).kind == "lutram"
    assert F.map_memory("big", 32, 4096, 1, 1, async_read=True).kind == "lutram"


@pytest.mark.parametrize("a, b, cells", [
    ((8, True), (8, True), 1), ((18, False), (18, False), 1), ((19, False), (18, False), 2),
    ((18, True), (18, True), 1), ((35, True), (18, True), 2), ((36, True), (18, True), 3),
    ((8, True), (18, False), 2),  # the unsigned operand grows a bit: 19 signed
    ((1, False), (32, False), 0), ((40, True), (31, True), 6)])
def test_multipliers_split_as_mul2dsp(a, b, cells):
    assert F.mult18x18d_count(*a, *b) == cells


@pytest.fixture(scope="module")
def reference():
    program, _ = load_program(REFERENCE_INTEGER)
    return program


def test_reference_fits_the_85f_within_the_stated_error(reference):
    """The estimate of today's (pipelined) engine against the builds measured: LUT4 against the
    calibration build; flip-flops and multipliers against the whole-model top built around this
    engine; block RAM against that top less the top's own two block RAM memories (Yosys put 65
    DP16KD in the engine, 13 in the batch memory and 1 in the payload ring: docs/results.md),
    LUT RAM between the calibration build and the top."""
    estimate = F.check_model_fit(reference, "ulx3s-85f", 32)
    lut4 = F.MEASURED_REFERENCE_32["lut4"]
    assert abs(estimate["breakdown"]["lut4_logic"] - lut4) <= F.STATED_ERROR["lut4"] * lut4
    top = F.MEASURED_TOP_REFERENCE_32
    for k in ("ff", "mult18x18d"):
        assert abs(estimate[k] - top[k]) <= F.STATED_ERROR[k] * top[k], (k, estimate[k], top[k])
    # the top's memories outside the engine: 32 images of 784 pixels, and the link's payload
    # ring of two images (2 x 784 bytes, rounded up to a power of two)
    batch, ring = F.map_memory("batch", 8, 32 * 784, 1, 1), F.map_memory("buffer", 8, 2048, 1, 1)
    assert (batch.kind, batch.cells, ring.kind, ring.cells) == ("dp16kd", 13, "dp16kd", 1)
    engine_bram = top["dp16kd"] - batch.cells - ring.cells
    assert abs(estimate["dp16kd"] - engine_bram) <= F.STATED_ERROR["dp16kd"] * engine_bram
    assert F.MEASURED_REFERENCE_32["lutram"] <= estimate["lutram"] <= top["lutram"]


def test_a_model_that_does_not_fit_names_the_resource_and_the_fix():
    program = integer_program(trained("dense"))
    small = load_board("ulx3s-45f")
    assert F.estimate_model_resources(program, 64)["mult18x18d"] > F.ECP5_DEVICES[small.luts]["mult18x18d"]
    with pytest.raises(UserError, match=r"does not fit ulx3s-45f \(LFE5U-45F\): MULT18X18D \d+ estimated of 72 "
                                        r"\(over by \d+, \d+ %\).*it would fit with --lanes (32|16|8|4|2)\b") as e:
        F.check_model_fit(program, small, 64)
    assert "\n" not in str(e.value)
    fitting = int(str(e.value).split("--lanes ")[1].split()[0])
    assert F.check_model_fit(program, small, fitting)["mult18x18d"] <= 72


def test_a_bigger_device_is_offered_when_no_lane_count_fits(reference):
    with pytest.raises(UserError, match=r"does not fit ulx3s-12f.*LUT4 .* usable .*a bigger device: --board ulx3s-85f"):
        F.check_model_fit(reference, load_board("ulx3s-12f"), 2, boards=["ulx3s-12f", "ulx3s-85f"])


def test_an_unknown_device_is_a_user_error():
    with pytest.raises(UserError, match="no ECP5 device with 1000 LUT4"):
        F.device_resources(load_board("ulx3s-12f", luts=1000))
