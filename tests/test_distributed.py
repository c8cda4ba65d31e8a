"""`quweit-hw train` under torchrun: two CPU processes (gloo) train the model that one process
trains on the combined batch."""

import subprocess
import sys

import pytest
import torch

from quweit_hw import cli
from quweit_hw.errors import UserError
from quweit_hw.model import distributed

RUN_CLI = "import sys\nfrom quweit_hw import cli\nraise SystemExit(cli.main(sys.argv[1:]))\n"
TINY = ["--task", "text", "--epochs", "2", "--mlp", "lut", "--d", "16", "--depth", "1", "--heads", "2",
        "--block-size", "8", "--batch-size", "8", "--steps-per-epoch", "5", "--warmup", "2", "--lr", "3e-3",
        "--thresholds", "4", "--hidden", "64", "--group-size", "4", "--window", "8", "--calib-batches", "2",
        "--threads", "1", "--no-progress"]


def torchrun(tmp_path, argv):
    """`quweit-hw *argv` on two CPU processes under torchrun (after `--`: without it torchrun's
    own parser takes --d for an abbreviation of one of its options)."""
    script = tmp_path / "run_cli.py"
    script.write_text(RUN_CLI)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--", str(script), *argv], capture_output=True, text=True, timeout=600)


def test_two_processes_train_what_one_trains_on_the_combined_batch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 12)
    args = ["train", *TINY, "--text", str(corpus)]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    proc = torchrun(tmp_path, [*args, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # one rank writes
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert one["state_dict"].keys() == two["state_dict"].keys()
    # the same steps up to rounding: DDP averages the two halves' gradients where one process
    # sums the whole batch's; after 10 AdamW steps that differs by float32 ulps, far below 1e-4
    worst = 0.0
    for key, value in one["state_dict"].items():
        if value.is_floating_point():
            worst = max(worst, (two["state_dict"][key] - value).abs().max().item())
            torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-4, atol=1e-4, msg=key)
        else:
            assert torch.equal(two["state_dict"][key], value), key
    print(f"largest parameter difference {worst:.3g}")
    for a, b in zip(one["metrics"], two["metrics"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # and the run resumes on two processes
    proc = torchrun(tmp_path, ["train", "--resume", "--out", str(tmp_path / "two"), "--epochs", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)["metrics"]) == 3


def test_one_process_world_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.start(torch.device("cpu"), 7)
    x = torch.arange(6)
    assert world == distributed.World() and world.writes
    assert distributed.shard(x, world) is x and distributed.total([1.5, 2.0], world) == [1.5, 2.0]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, world, torch.device("cpu")) is model


def test_ranks_take_contiguous_equal_shares_of_the_batch():
    x = torch.arange(8).view(4, 2)
    shares = [distributed.shard(x, distributed.World(r, 2)) for r in range(2)]
    assert torch.equal(shares[0], x[:2]) and torch.equal(shares[1], x[2:])
    assert not distributed.World(1, 2).writes


def test_batch_must_split_evenly_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--batch-size 7 must be a multiple of the 2 torchrun processes"):
        distributed.start(torch.device("cpu"), 7)
