"""cocotb on the generated Verilog of the whole-model engine (gateware.model_engine), on Icarus
and Verilator, checked image by image against the whole-model golden model by sim/model_tb.py.

Design: a tiny trained integer QuWeiT (two blocks, LUT MLPs) exported as a version-2 bundle,
with the all-0 and all-255 images and random ones, random gaps on i.valid and random
backpressure on o.ready. QUWEIT_SIM_MODEL_BUNDLE=PATH runs another version-2 bundle on the
first QUWEIT_SIM_IMAGES (default 1000) Fashion-MNIST test images instead (docs/results.md).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from cocotb_tools.runner import get_runner

from quweit_hw.gateware.model_engine import TOP
from quweit_hw.gateware.model_rtl import write_model_rtl

SIM_DIR = Path(__file__).resolve().parent


def tiny_bundle(path):
    sys.path.insert(0, str(SIM_DIR.parent / "tests"))
    from tiny_models import pixels, trained
    from quweit_hw.contract.model_bundle import write_model_bundle
    from quweit_hw.model.integer_program import integer_program

    write_model_bundle(path, integer_program(trained("lut")), {"note": "tiny test model"})
    return pixels(3, seed=3).numpy()  # all 0, all 255, random



def run_model_cocotb(simulator, design, bundle, images, *, lanes, valid=850, ready=600):
    build_dir = SIM_DIR / f"sim_build_{simulator}_{design}"
    build_dir.mkdir(parents=True, exist_ok=True)
    summary = write_model_rtl(bundle, build_dir / "rtl", lanes=lanes, force=True)
    np.save(build_dir / "pixels.npy", images)
    report = build_dir / "scoreboard.json"
    report.unlink(missing_ok=True)
    runner = get_runner(simulator)
    runner.build(sources=[build_dir / "rtl" / f"{TOP}.v"], hdl_toplevel=TOP, build_dir=build_dir,
                 build_args=["-Wno-fatal", "-O3"] if simulator == "verilator" else [],
                 timescale=("1ns", "1ps"), always=True)
    runner.test(hdl_toplevel=TOP, test_module="model_tb", build_dir=build_dir, test_dir=build_dir,
                extra_env={"QUWEIT_BUNDLE": str(Path(bundle).resolve()), "QUWEIT_PIXELS": str(build_dir / "pixels.npy"),
                           "QUWEIT_REPORT": str(report), "QUWEIT_VALID": str(valid), "QUWEIT_READY": str(ready),
                           "QUWEIT_SEED": "5", "QUWEIT_CYCLES": str(summary["cycles_per_image"])})
    assert report.exists(), f"the cocotb test wrote no scoreboard report ({report})"
    result = json.loads(report.read_text())
    assert result["received"] == result["images"] == len(images) and result["logit_mismatches"] == 0, result
    assert result["cycles"] == [summary["cycles_per_image"]], result
    return summary, result


def test_model_engine_tiny(simulator_env, tmp_path):
    source = os.environ.get("QUWEIT_SIM_MODEL_BUNDLE")
    if source:
        from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels
        images, _ = fashion_mnist_pixels("test", limit=int(os.environ.get("QUWEIT_SIM_IMAGES", "1000")))
        summary, result = run_model_cocotb(simulator_env, "model_bundle", source, images, lanes=32)
    else:
        images = tiny_bundle(tmp_path / "tiny")
        summary, result = run_model_cocotb(simulator_env, "model_tiny", tmp_path / "tiny", images, lanes=8)
    print(json.dumps({"summary": summary["cycles_per_image"], **result}))


def test_eval_whole_model_rtl_backend(tmp_path, capsys):
    """`eval BUNDLE --backend rtl --compare`: a small 28x28 integer ViT (patch 14: 5 tokens) through
    the generated Verilog under Verilator, every logit against the golden model and torch."""
    import dataclasses

    import torch

    from quweit_hw.cli import main
    from quweit_hw.contract.fashion_mnist import fashion_mnist_pixels
    from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_model, save_checkpoint
    from quweit_hw.model.export import export_checkpoint
    from quweit_hw.model.vit import ViTConfig

    torch.manual_seed(0)
    model = build_model("vit", ViTConfig(patch=14, d=16, depth=1, heads=2, integer=True))
    pixels, _ = fashion_mnist_pixels("train", limit=64)
    model.train()
    model(torch.from_numpy(pixels.astype(np.float32) / 255 * 3 - 1))  # one fake-quant pass sets the scales
    ckpt = tmp_path / "int.pt"
    save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config),
                           "state_dict": model.eval().state_dict(), "metrics": [], "args": {}})
    bundle = export_checkpoint(ckpt, tmp_path / "v2")
    assert main(["eval", str(bundle), "--backend", "rtl", "--lanes", "4", "--compare", "--limit", "30"]) == 0
    out = capsys.readouterr().out
    assert "rtl vs golden: 0 of 300 logits differ, 0 class outputs differ" in out, out
    assert "logits differing from torch: 0 of 300" in out, out


def test_rtl_backpressure_tiny(tmp_path):
    """The Verilator harness of `eval --backend rtl` with random backpressure (i.valid gapped and
    o.ready dropped on 40 % of the clocks): stalls lose nothing, every logit and class equals the
    golden model, and the engine's cycle counter still equals the generator's figure."""
    sys.path.insert(0, str(SIM_DIR.parent / "tests"))
    from tiny_models import pixels
    from quweit_hw.contract import golden_model
    from quweit_hw.gateware.model_rtl import load_program
    from quweit_hw.whole_model_eval import rtl_logits

    tiny_bundle(tmp_path / "tiny")
    images = pixels(10, seed=4).numpy()
    gold = golden_model.logits(load_program(tmp_path / "tiny")[0], images)
    logits, classes, cycles, info = rtl_logits(tmp_path / "tiny", images, lanes=8, backpressure=0.4, seed=7)
    assert info["images"] == len(images) and info["valid_permille"] == info["ready_permille"] == 600, info
    assert info["valid_gaps"] > 0 and info["ready_stalls"] > 0, info  # the stalls did happen
    np.testing.assert_array_equal(logits, gold)
    np.testing.assert_array_equal(classes, gold.argmax(-1))
    assert set(cycles.tolist()) == {info["cycles_per_image"]}, (cycles, info)
