"""The command line's promise: a bad value is one line on stderr and exit code 2, naming the
option and the value, and nothing is written; builds never half-finish; every option's
default is in its help."""

import dataclasses
import os
import stat
import time
from pathlib import Path

import pytest

from quweit_hw import cli
from quweit_hw.cli import options as cli_options
from quweit_hw.contract import bundle_files, synthetic
from quweit_hw.contract.folders import atomic_folder
from quweit_hw.errors import UserError
from quweit_hw.resources import REFERENCE_CHECKPOINT

CKPT = str(REFERENCE_CHECKPOINT)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A fresh current folder with a file, a folder and a small bundle in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    block = synthetic.random_block(d=2, thresholds=4, n=3, hidden=(), group_size=4, seed=3)
    bundle_files.write_bundle(tmp_path / "bundle", [block])
    return tmp_path


def tree(root, folders=True):
    """Every path under `root` with its size and mtime, to see that nothing was written (with
    folders=False, folders' own mtimes, which temporary siblings change, are left out)."""
    return sorted((str(p.relative_to(root)), p.lstat().st_size,
                   p.lstat().st_mtime_ns if folders or not p.is_dir() else 0) for p in root.rglob("*"))


def one_line_error(argv, needles, capsys, root):
    before = tree(root)
    rc = cli.main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"quweit-hw {argv[0]}: error: ") or err.startswith("quweit-hw: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert tree(root) == before, "something was written"
    return err


# (argv, what the message must name): a bad value for every option that takes a number or a
# path, in every command. Paths are relative to the `place` folder.
BOARD_CASES = [
    (["--clock-mhz", "0"], ["--clock-mhz", "'0'", "positive"]),
    (["--clock-mhz", "-75"], ["--clock-mhz", "'-75'"]),
    (["--clock-mhz", "nan"], ["--clock-mhz", "'nan'", "finite"]),
    (["--clock-mhz", "fast"], ["--clock-mhz", "'fast'", "number"]),
    (["--engine-clock-mhz", "0"], ["--engine-clock-mhz", "'0'"]),
    (["--engine-clock-mhz", "inf"], ["--engine-clock-mhz", "'inf'"]),
    (["--baud", "0"], ["--baud", "'0'"]),
    (["--baud", "3e6"], ["--baud", "'3e6'", "integer"]),
    (["--block", "-1"], ["--block", "'-1'"]),
    (["--lanes", "3"], ["--lanes", "'3'", "power of two"]),
    (["--seed", "-2"], ["--seed", "'-2'"]),
    (["--yosys-opts", "nowidelut"], ["--yosys-opts", "'nowidelut'", "starting with '-'"]),
    (["--yosys-opts", "-top x"], ["--yosys-opts", "-top is set by the flow"]),
    (["--nextpnr-opts", "--json a.json"], ["--nextpnr-opts", "--json is set by the flow"]),
    (["--nextpnr-opts", "--router 'router2"], ["--nextpnr-opts", "shell words"]),
    (["--nextpnr-opts", ""], ["--nextpnr-opts", "''"]),
    (["-o", "."], ["-o/--out", "'.'", "current folder"]),
    (["-o", ".."], ["-o/--out", "'..'", "current folder"]),
    (["-o", "afile"], ["-o/--out", "'afile'", "is a file"]),
    (["-o", "afile/sub"], ["-o/--out", "'afile/sub'", "is a file"]),
    (["-o", ""], ["-o/--out", "''"]),
]
CASES = [
    *[(["eval", *a], n) for a, n in [
        (["--batch-size", "0"], ["--batch-size", "'0'", "positive integer"]),
        (["--batch-size", "-5"], ["--batch-size", "'-5'"]),
        (["--batch-size", "2.5"], ["--batch-size", "'2.5'"]),
        (["--limit", "0"], ["--limit", "'0'"]),
        (["--backend", "rtl", "--lanes", "3"], ["--lanes", "'3'", "power of two"]),
        (["--backend", "board", "--bench", "0"], ["--bench", "'0'", "positive integer"]),
        (["--backend", "rtl", "--backpressure", "1"], ["--backpressure", "'1'", "[0, 1)"]),
        (["--backpressure", "nan"], ["--backpressure", "'nan'", "finite"]),
        (["--backpressure", "0.5"], ["--backpressure applies to --backend rtl"]),
        (["--backend", "rtl", "--seed", "-1"], ["--seed", "'-1'"]),
        (["--limit", "-1"], ["--limit", "'-1'"]),
        (["nothing.pt"], ["checkpoint", "no such file", "'nothing.pt'"]),
        (["adir"], ["checkpoint", "folder", "'adir'"]),
        (["--bundle", "nothing"], ["--bundle", "no such folder", "'nothing'"]),
        (["--bundle", "afile"], ["--bundle", "'afile'", "the file"]),
        (["--split", "dev"], ["--split", "'dev'"]),
        (["--mlp-backend", "gpu"], ["--mlp-backend", "'gpu'"]),
        (["--sim", "xsim"], ["--sim", "'xsim'"]),
    ]],
    *[(["train", *a], n) for a, n in [
        (["--epochs", "0"], ["--epochs", "'0'"]),
        (["--batch-size", "-1"], ["--batch-size", "'-1'"]),
        (["--lr", "nan"], ["--lr", "'nan'", "finite"]),
        (["--lr", "0"], ["--lr", "'0'", "positive"]),
        (["--lr=-1e-3"], ["--lr", "'-1e-3'"]),
        (["--lr", "-1e-3"], ["--lr", "expected one argument", "OPTION=VALUE"]),
        (["--lut-lr", "-1"], ["--lut-lr", "'-1'"]),
        (["--lut-lr", "inf"], ["--lut-lr", "'inf'"]),
        (["--weight-decay", "-0.1"], ["--weight-decay", "'-0.1'", ">= 0"]),
        (["--warmup", "-1"], ["--warmup", "'-1'"]),
        (["--seed", "-1"], ["--seed", "'-1'"]),
        (["--threads", "0"], ["--threads", "'0'"]),
        (["--train-limit", "0"], ["--train-limit", "'0'"]),
        (["--train-limit", "-3"], ["--train-limit", "'-3'"]),
        (["--eval-limit", "0"], ["--eval-limit", "'0'"]),
        (["--steps-per-epoch", "0"], ["--steps-per-epoch", "'0'"]),
        (["--calib-batches", "0"], ["--calib-batches", "'0'"]),
        (["--val-fraction", "0"], ["--val-fraction", "'0'"]),
        (["--val-fraction", "1"], ["--val-fraction", "'1'"]),
        (["--val-fraction", "nan"], ["--val-fraction", "'nan'"]),
        (["--d", "0"], ["--d", "'0'"]),
        (["--depth", "-1"], ["--depth", "'-1'"]),
        (["--heads", "0"], ["--heads", "'0'"]),
        (["--dropout", "1"], ["--dropout", "'1'"]),
        (["--dropout", "-0.1"], ["--dropout", "'-0.1'"]),
        (["--patch", "0"], ["--patch", "'0'"]),
        (["--block-size", "0"], ["--block-size", "'0'"]),
        (["--bits", "0"], ["--bits", "'0'"]),
        (["--thresholds", "-4"], ["--thresholds", "'-4'"]),
        (["--n", "0"], ["--n", "'0'"]),
        (["--hidden", "0"], ["--hidden", "'0'"]),
        (["--hidden", "64,x"], ["--hidden", "'64,x'"]),
        (["--group-size", "0"], ["--group-size", "'0'"]),
        (["--window", "0"], ["--window", "'0'"]),
        (["--init-from", "nothing.pt"], ["--init-from", "'nothing.pt'"]),
        (["--init-from", "adir"], ["--init-from", "'adir'"]),
        (["--distill-from", "nothing.pt"], ["--distill-from", "'nothing.pt'"]),
        (["--distill-weight", "-0.5"], ["--distill-weight", "'-0.5'"]),
        (["--distill-temperature", "0"], ["--distill-temperature", "'0'"]),
        (["--distill-mlp", "nan"], ["--distill-mlp", "'nan'"]),
        (["--text", "nothing.txt"], ["--text", "'nothing.txt'"]),
        (["--out", "afile"], ["--out", "'afile'"]),
    ]],
    *[(["export", *a], n) for a, n in [
        (["nothing.pt"], ["checkpoint", "'nothing.pt'"]),
        (["adir"], ["checkpoint", "'adir'"]),
        ([CKPT, "-o", "."], ["-o/--out", "'.'", "current folder"]),
        ([CKPT, "-o", ".", "--force"], ["-o/--out", "'.'", "current folder"]),
        ([CKPT, "-o", "afile"], ["-o/--out", "'afile'", "is a file"]),
        ([CKPT, "-o", "afile/b"], ["-o/--out", "'afile/b'"]),
        ([CKPT, "--format-version", "3"], ["--format-version", "invalid choice: 3"]),
        ([CKPT, "--format-version", "x"], ["--format-version", "'x'"]),
    ]],
    (["report", "nothing.pt"], ["checkpoint", "'nothing.pt'"]),
    (["report", "adir"], ["'adir'", "not a bundle"]),
    (["report", "afile"], ["'afile'", "not a torch checkpoint"]),
    (["report", "bundle"], ["version 1", "needs version 2"]),
    *[(["rtl", *a], n) for a, n in [
        (["nothing"], ["bundle", "no such folder", "'nothing'"]),
        (["afile"], ["bundle", "'afile'"]),
        (["bundle", "--block", "-1"], ["--block", "'-1'"]),
        (["bundle", "--rom", "x"], ["--rom", "'x'", "LAYER:NODES_PER_CLOCK"]),
        (["bundle", "--rom", "0:0"], ["--rom", "'0:0'"]),
        (["bundle", "--rom=-1:2"], ["--rom", "'-1:2'"]),
        (["bundle", "-o", "."], ["-o/--out", "'.'"]),
        (["bundle", "-o", ".", "--force"], ["-o/--out", "'.'"]),
        (["bundle", "-o", "afile"], ["-o/--out", "'afile'"]),
        (["bundle", "--registers", "some"], ["--registers", "'some'"]),
        (["bundle", "--model", "--lanes", "12"], ["--lanes", "'12'", "power of two"]),
        (["bundle", "--model"], ["version-1 bundle", "version-2 bundle", "--integer"]),
    ]],
    *[(["prove", *a], n) for a, n in [
        (["nothing"], ["bundle", "no such folder", "'nothing'"]),
        (["afile"], ["bundle", "'afile'"]),
        (["bundle", "--block", "-1"], ["--block", "'-1'"]),
        (["bundle", "--keep", "afile"], ["--keep", "'afile'"]),
        (["bundle", "--keep", "."], ["--keep", "'.'"]),
        (["--rtl", "nothing"], ["--rtl", "no such folder", "'nothing'"]),
    ]],
    *[(["synth", "--bundle", "bundle", *a], n) for a, n in BOARD_CASES],
    (["synth", "--bundle", "nothing"], ["--bundle", "'nothing'"]),
    (["synth", "--bundle", "afile"], ["--bundle", "'afile'"]),
    *[(["build", CKPT, *a], n) for a, n in [
        *BOARD_CASES,
        (["--check-tokens", "0"], ["--check-tokens", "'0'"]),
        (["--check-tokens", "-8"], ["--check-tokens", "'-8'"]),
        (["--check-images", "-1"], ["--check-images", "'-1'"]),
        (["--bundle-out", "."], ["--bundle-out", "'.'"]),
        (["--bundle-out", "afile"], ["--bundle-out", "'afile'"]),
    ]],
    (["build", "nothing.pt"], ["checkpoint", "'nothing.pt'"]),
    (["build"], ["checkpoint"]),
    *[(["dont-care", *a], n) for a, n in [
        (["nothing", "-o", "x"], ["bundle", "no such", "'nothing'"]),
        (["bundle", "-o", "afile"], ["-o/--out", "'afile'"]),
        (["bundle", "-o", "x", "--images", "0"], ["--images", "'0'"]),
        (["bundle", "-o", "x", "--min-count", "0"], ["--min-count", "'0'"]),
        (["bundle", "-o", "x"], ["version 1"]),
    ]],
    (["program", "--board", "de10"], ["unknown board 'de10'"]),
    (["program", "--bundle", "nothing"], ["--bundle", "'nothing'"]),
    (["program", "-o", "afile"], ["-o/--out", "'afile'"]),
    (["program", "-o", "adir"], ["no bitstream at", "adir"]),
    (["rtl", "--bogus"], ["--bogus", "quweit-hw rtl --help"]),
    (["frobnicate"], ["'frobnicate'"]),
]


@pytest.mark.parametrize("argv,needles", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_values_are_one_line_and_exit_2(argv, needles, place, capsys):
    one_line_error(argv, needles, capsys, place)


# options that take free text (checked by their command: a board name, a task, a choice)
FREE_TEXT = {"--board", "--port", "--task", "--mlp", "--augment", "--device", "--pool", "--thermometer", "--mapping",
             "--deep-mapping", "--bit-order", "--efd"}


def command_parser(command):
    parser = cli._Parser(prog=f"quweit-hw {command}")
    cli._module(command).configure(parser)
    return parser


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_number_and_path_option_is_validated_and_walked(command):
    """Each option that takes a value has a validator (or choices, or is free text), and each
    validated option has a bad value in CASES above."""
    walked = {word for argv, _ in CASES if argv[0] == command for word in argv if word.startswith("-")}
    for action in command_parser(command)._actions:
        if action.nargs == 0 or not action.option_strings:
            continue
        name = max(action.option_strings, key=len)
        assert action.type is not None or action.choices or name in FREE_TEXT, f"{command} {name}: no validator"
        if action.type is not None:
            assert set(action.option_strings) & walked, f"{command} {name}: no bad value in CASES"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_shows_its_default(command):
    formatter = cli._HelpFormatter(f"quweit-hw {command}")
    for action in command_parser(command)._actions:
        if action.nargs == 0 and action.default in (False, argparse_suppress()):
            continue  # flags: off unless given
        if not action.option_strings and action.nargs != "?":
            continue  # a required positional has no default
        assert "default" in formatter._get_help_string(action), f"{command} {action.option_strings or action.dest}"


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def test_help_shows_defaults_and_lut_defaults_match_the_config(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 256)" in out and "(default: torch)" in out and "--no-progress" in out
    from quweit_hw.cli.train import LUT_DEFAULTS
    from quweit_hw.model.lutmlp import LUTMLPConfig
    fields = {f.name: f.default for f in dataclasses.fields(LUTMLPConfig) if f.name != "d"}
    assert LUT_DEFAULTS == fields


def test_validators_name_what_they_expect():
    assert cli_options.positive_int("3") == 3
    assert cli_options.nonnegative_int("0") == 0
    assert cli_options.positive_float("1e-3") == 1e-3
    assert cli_options.int_list("") == () and cli_options.int_list("2048,1024") == (2048, 1024)
    with pytest.raises(Exception, match="expected a positive integer, got '0'"):
        cli_options.positive_int("0")


# ---- what needs a bundle or the tools: still one line, still nothing written ----

def test_rtl_rom_beyond_the_layer_and_twice(place, capsys):
    one_line_error(["rtl", "bundle", "--rom", "0:999999", "-o", "r"],
                   ["--rom 0:999999", "layer 0 has 8 nodes", "1..8"], capsys, place)
    one_line_error(["rtl", "bundle", "--rom", "0:1", "--rom", "0:2", "-o", "r"], ["--rom 0:2", "twice"],
                   capsys, place)
    one_line_error(["rtl", "bundle", "--rom", "4:2", "-o", "r"], ["--rom 4:2", "rom layer index 4"], capsys, place)
    one_line_error(["rtl", "bundle", "--block", "5", "-o", "r"], ["block index 5 out of range"], capsys, place)


@pytest.mark.parametrize("option,value,needle", [
    ("--baud", "50000000", "not reachable from a 75 MHz clock"),
    ("--clock-mhz", "33.3", "no ECP5 PLL setting makes 33.3 MHz"),
    ("--engine-clock-mhz", "151", "no ECP5 PLL setting makes 75 MHz and 151 MHz"),
    ("--engine-clock-mhz", "50", "must be at least clock_hz"),
])
def test_synth_clocks_the_pll_or_divisor_cannot_make(option, value, needle, place, capsys):
    one_line_error(["synth", "--bundle", "bundle", option, value, "-o", "b"], [f"{option} {value}", needle],
                   capsys, place)


def test_clocks_are_checked_for_the_top_that_is_built(place, capsys):
    """A version 1 bundle builds the MLP-only top: an engine clock the whole model's 45 MHz link
    clock cannot pair with is fine there; a checkpoint (top unknown yet) names the top."""
    assert cli.main(["synth", "--bundle", "bundle", "--engine-clock-mhz", "125", "--no-build", "-o", "b"]) == 0
    one_line_error(["build", CKPT, "--engine-clock-mhz", "125", "-o", "b2"],
                   ["the whole-model top", "45 MHz and 125 MHz", "--mlp-only"], capsys, place)
    assert not (place / "b2").exists()


def fake_tool(folder, name, answers_version=True, log=None):
    """A tool that answers its version check (or not) and fails every real run, writing `log` first."""
    path = folder / name
    lines = ["#!/bin/sh", 'case "$1" in -V|--version) echo "fake 1.0"; exit %d;; esac' % (0 if answers_version else 1)]
    if log:
        lines.append(f"echo 'fake run' > {log}")
    path.write_text("\n".join(lines + ["exit 1", ""]))
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("variable,argv", [
    ("YOSYS", ["synth", "--bundle", "bundle", "-o", "b"]),
    ("YOSYS", ["synth", "--bundle", "bundle", "--no-build", "-o", "b"]),
    ("YOSYS", ["rtl", "bundle", "-o", "r"]),
    ("NEXTPNR_ECP5", ["synth", "--bundle", "bundle", "-o", "b"]),
    ("ECPPACK", ["build", CKPT, "-o", "b", "--bundle-out", "bo"]),
])
@pytest.mark.parametrize("broken", ["missing", "fails"])
def test_a_missing_or_broken_tool_is_named_before_any_work(variable, argv, broken, place, capsys, monkeypatch,
                                                           tmp_path_factory):
    tool = "/nonexistent/tool" if broken == "missing" else fake_tool(tmp_path_factory.mktemp("t"), "tool", False)
    monkeypatch.setenv(variable, tool)
    start = time.perf_counter()
    one_line_error(argv, [f"{variable}='{tool}'"], capsys, place)
    assert time.perf_counter() - start < 15  # elaborating the reference top alone takes a minute


@pytest.mark.parametrize("real", [True, False])
def test_output_folder_without_permission(real, place, capsys, monkeypatch):
    (place / "locked").mkdir(mode=0o555)
    if real and os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    if not real:  # as root: the folder reads as not writable
        import quweit_hw.contract.folders as folders
        access = os.access
        monkeypatch.setattr(folders.os, "access", lambda p, mode: access(p, mode) and "locked" not in str(p))
    one_line_error(["rtl", "bundle", "-o", "locked/r"], ["'locked/r'", "permission"], capsys, place)
    one_line_error(["export", CKPT, "-o", "locked/e"], ["'locked/e'", "permission"], capsys, place)


# ---- folders: the user's umask, foreign files kept, nothing half-built ----

def test_atomic_folder_keeps_the_umask_the_mode_and_foreign_files(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "new") as tmp:
            (tmp / "a").write_text("a")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
        (tmp_path / "new").chmod(0o755)
        (tmp_path / "new" / "mine.txt").write_text("mine")
        with atomic_folder(tmp_path / "new", force=True, keep=lambda name: name != "a") as tmp:
            (tmp / "a").write_text("b")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
        assert (tmp_path / "new" / "mine.txt").read_text() == "mine" and (tmp_path / "new" / "a").read_text() == "b"
        with pytest.raises(KeyboardInterrupt):
            with atomic_folder(tmp_path / "new", force=True) as tmp:
                (tmp / "a").write_text("half")
                raise KeyboardInterrupt
        assert (tmp_path / "new" / "a").read_text() == "b"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]  # no hidden leftovers
        with pytest.raises(UserError, match="exists"):
            with atomic_folder(tmp_path / "new"):
                pass
    finally:
        os.umask(old)


def test_rtl_force_keeps_foreign_files_and_uses_the_default_folder(place, capsys):
    assert cli.main(["rtl", "bundle"]) == 0  # default: hw/rtl/<bundle>-block<I>, not build's hw/<run>
    out = place / "hw" / "rtl" / "bundle-block0"
    assert (out / "mlp_engine.v").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("{}")
    assert cli.main(["rtl", "bundle", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").read_text() != "{}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def previous_build(place):
    """A build folder as a previous build left it, with a file of the user's in it."""
    out = place / "b"
    out.mkdir()
    (out / "top.bit").write_text("previous bitstream")
    (out / "notes.txt").write_text("mine")
    return out


def test_a_failed_build_leaves_the_previous_one_and_names_its_logs(previous_build, place, capsys, monkeypatch,
                                                                    tmp_path_factory):
    fakes = tmp_path_factory.mktemp("fake")
    monkeypatch.setenv("YOSYS", fake_tool(fakes, "yosys", log="top.rpt"))
    assert cli.main(["synth", "--bundle", "bundle", "--board", "ulx3s-12f", "-o", "b"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    failed = place / "b.failed"
    assert "build failed" in last and repr(str(failed / "top.rpt")) in last and "top.tim" not in last, last
    assert (failed / "top.rpt").is_file()
    assert (previous_build / "top.bit").read_text() == "previous bitstream"
    assert sorted(p.name for p in previous_build.iterdir()) == ["notes.txt", "top.bit"]
    assert not [p for p in place.iterdir() if p.name.startswith(".")]
    # a tool that fails before writing its log: the message says so instead of naming one
    monkeypatch.setenv("YOSYS", fake_tool(fakes, "yosys2"))
    assert cli.main(["synth", "--bundle", "bundle", "--board", "ulx3s-12f", "-o", "b"]) == 2
    assert "no tool log was written" in capsys.readouterr().err.splitlines()[-1]


def test_an_interrupted_build_leaves_the_previous_one(previous_build, place, capsys, monkeypatch):
    import quweit_hw.gateware.synth as synth

    def interrupted(top, board, out, **kw):
        (out / "top.bit").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "build_top", interrupted)
    assert cli.main(["synth", "--bundle", "bundle", "--board", "ulx3s-12f", "-o", "b"]) == 130
    assert (previous_build / "top.bit").read_text() == "previous bitstream"
    assert sorted(p.name for p in place.iterdir() if p.name.startswith(("b", "."))) == ["b", "bundle"]


def test_eval_draws_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    assert cli.main(["eval", "--mlp-backend", "golden", "--limit", "16", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("golden: accuracy") and captured.err == ""


@pytest.fixture
def tiny_run(place):
    """A tiny LUT ViT checkpoint in runs/tiny/, and a previous `build` of it in hw/tiny/."""
    import torch

    from quweit_hw.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from quweit_hw.model.data import calibrate_lut_mlps
    from quweit_hw.model.lutmlp import LUTMLPConfig
    from quweit_hw.model.vit import ViT, ViTConfig

    torch.manual_seed(0)
    lut = LUTMLPConfig(d=8, thresholds=4, n=3, hidden=(), group_size=4, window=16)
    model = ViT(ViTConfig(image_size=8, patch=4, classes=3, d=8, depth=1, heads=2, mlp="lut", lut=lut))
    calibrate_lut_mlps(model, [torch.randn(16, 1, 8, 8)])
    ckpt = place / "runs" / "tiny" / "checkpoint.pt"
    save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": "fashion-mnist",
                           "arch": "vit", "config": dataclasses.asdict(model.config),
                           "state_dict": model.state_dict(), "metrics": []})
    for folder, name, text in (("bundle", "manifest.json", "previous manifest"), ("bundle", "README", "mine"),
                               ("ulx3s-12f", "top.bit", "previous bitstream")):
        (place / "hw" / "tiny" / folder).mkdir(parents=True, exist_ok=True)
        (place / "hw" / "tiny" / folder / name).write_text(text)
    return ckpt


@pytest.mark.parametrize("failure", [UserError("the tools failed"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_build_leaves_the_previous_bundle_and_bitstream(failure, tiny_run, place, capsys,
                                                                                 monkeypatch):
    import quweit_hw.gateware.synth as synth

    def fails(top, board, out, **kw):
        (out / "top.bit").write_text("half")
        raise failure

    monkeypatch.setattr(synth, "build_top", fails)
    before = tree(place / "hw", folders=False)
    rc = cli.main(["build", str(tiny_run), "--board", "ulx3s-12f", "--check-tokens", "8"])
    assert rc == (2 if isinstance(failure, UserError) else 130), capsys.readouterr().err
    assert tree(place / "hw", folders=False) == before  # bundle, bitstream and no hidden leftovers


def test_a_build_that_succeeds_replaces_both_and_keeps_foreign_files(tiny_run, place, capsys, monkeypatch):
    import json

    import quweit_hw.gateware.synth as synth
    from quweit_hw.gateware.toolchain import ToolRun

    def tools(top, board, out, **kw):  # what Yosys, nextpnr and ecppack leave, in miniature
        (out / "top.bit").write_text("new bitstream")
        (out / "top.json").write_text(json.dumps({"modules": {"top": {"attributes": {"top": 1}, "cells": {}}}}))
        (out / "nextpnr-report.json").write_text(json.dumps({"utilization": {}, "fmax": {
            "clk": {"achieved": 80.0, "constraint": 75.0}, "engine_clk": {"achieved": 160.0, "constraint": 150.0}}}))
        return ToolRun(None, "yosys")

    monkeypatch.setattr(synth, "build_top", tools)
    assert cli.main(["build", str(tiny_run), "--board", "ulx3s-12f", "--check-tokens", "8"]) == 0
    work = place / "hw" / "tiny"
    assert (work / "bundle" / "README").read_text() == "mine"
    assert json.loads((work / "bundle" / "manifest.json").read_text())["format"] == "quweit-bundle"
    build = work / "ulx3s-12f"
    assert (build / "top.bit").read_text() == "new bitstream" and (build / "rtl" / "block0" / "mlp_engine.v").is_file()
    report = json.loads((build / "report.json").read_text())
    assert report["bitstream"] == str(Path("hw") / "tiny" / "ulx3s-12f" / "top.bit")
    assert report["bundle"] == str(Path("hw") / "tiny" / "bundle") and "steps_seconds" in report
    assert sorted(p.name for p in work.iterdir()) == ["bundle", "ulx3s-12f"]
