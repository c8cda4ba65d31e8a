"""The whole model's throughput fields (quweit_hw.model_throughput): the arithmetic and its edges."""

import dataclasses
import json

import pytest
from tiny_models import pixels, trained

from quweit_hw import model_throughput as T
from quweit_hw.contract import throughput as TH
from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from quweit_hw.model.integer_program import integer_program


def test_frame_sizes():
    assert TH.request_frame_bytes(784) == 5 + 784 + 2
    assert TH.reply_frame_bytes(10) == 5 + 40 + 1 + 4 + 2


def test_chip_figures_at_an_fmax():
    chip = TH.chip_figures(58_580, 100e6)
    assert chip["images_per_s"] == pytest.approx(1707.067, abs=1e-3)
    assert chip["latency_us"] == pytest.approx(585.8)
    assert TH.chip_figures(1, 1e6) == {"images_per_s": 1e6, "latency_us": 1.0}


@pytest.mark.parametrize("fmax", [None, 0])
def test_no_fmax_gives_null_fields_not_a_crash(fmax):
    fields = TH.throughput_fields(58_580, pixels=784, classes=10, fmax_hz=fmax, baud=None)
    assert fields["chip"] == {"images_per_s": None, "latency_us": None} and fields["fmax_mhz"] is None
    assert fields["uart"]["images_per_s_streamed"] is None
    assert json.loads(json.dumps(fields)) == fields
    md = TH.throughput_markdown(fields)
    assert "| on chip, Fmax unknown | n/a | 58,580 cycles per image, latency n/a |" in md


def test_uart_figures():
    u = TH.uart_figures(3_000_000, 791, 52)
    assert u["images_per_s_streamed"] == pytest.approx(3_000_000 / 7910)      # the request is the larger frame
    assert u["images_per_s_one_at_a_time"] == pytest.approx(3_000_000 / 8430)
    assert TH.uart_figures(1000, 10, 30)["images_per_s_streamed"] == pytest.approx(1000 / 300)  # the reply sets it
    with pytest.raises(ValueError, match="frame sizes"):
        TH.uart_figures(1000, 0, 30)
    with pytest.raises(ValueError, match="cycles_per_image"):
        TH.chip_figures(0, 1e6)


def test_frame_sizes_are_parameters():
    fields = TH.throughput_fields(1000, pixels=784, classes=10, fmax_hz=1e8, baud=1_000_000, request_bytes=100,
                                 reply_bytes=50)
    assert fields["uart"]["images_per_s_streamed"] == pytest.approx(1000.0)
    assert fields["chip"]["images_per_s"] == pytest.approx(1e5) and fields["fmax_mhz"] == pytest.approx(100)
    assert "| UART, 1,000,000 baud, streamed | 1,000 images/s |" in TH.throughput_markdown(fields)


def test_cpu_rates_of_the_golden_model_and_torch(tmp_path):
    model = trained("dense")
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
                           "metrics": [], "args": {}})
    images = pixels(16).numpy()
    cpu = T.cpu_images_per_second(integer_program(model), images, checkpoint=ckpt, batch=8, repeats=3)
    assert cpu["images"] == 16 and cpu["batch"] == 8 and cpu["torch_default_threads_n"] >= 1
    assert all(cpu[k] > 0 for k in ("golden", "torch_1_thread", "torch_default_threads"))
    fields = TH.throughput_fields(100, pixels=64, classes=10, cpu=cpu)
    assert "| golden model (numpy), this CPU |" in TH.throughput_markdown(fields)
    assert T.cpu_images_per_second(integer_program(model), images, batch=8, repeats=1)["torch_1_thread"] is None


def test_bundle_cpu_figures_measure_the_golden_model_and_skip_torch_without_a_checkpoint(tmp_path):
    from quweit_hw.contract.model_bundle import write_model_bundle
    from quweit_hw.contract.synthetic import random_program

    path = write_model_bundle(tmp_path / "b", random_program({"image_size": 28, "patch": 14}))
    cpu = T.bundle_cpu_figures(path, images=8, repeats=1)
    assert cpu["golden"] > 0 and cpu["images"] == 8 and cpu["torch_1_thread"] is None
    assert "golden model (numpy)" in TH.throughput_markdown(TH.throughput_fields(100, pixels=784, classes=10, cpu=cpu))
