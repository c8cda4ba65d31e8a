"""Build and load the compiled LUT kernels (lut_kernels.cpp) once per machine, on first use.

Why torch.utils.cpp_extension with TORCH_LIBRARY ops (not numba, not ctypes): the kernels
run in torch's own thread pool (at::parallel_for), so torch.set_num_threads governs them
and no second OpenMP pool spins beside torch's on a small machine; the only build tools are
g++ (the Makefile's apt list) and ninja (a PyPI wheel in pyproject.toml). The source
includes only the ATen core and dispatcher headers, not torch/extension.h, which keeps the
first-use compile to seconds instead of most of a minute.

The library is cached outside the repository, in $QUWEIT_KERNEL_CACHE or
$XDG_CACHE_HOME/quweit-hw/kernels (default ~/.cache/quweit-hw/kernels), in a directory
named by a digest of the source, the flags, the torch version and the CPU's feature flags:
a changed source or another CPU (-march=native) builds anew instead of loading a stale or
illegal binary.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("lut_kernels.cpp")  # the library: it defines the TORCH_LIBRARY
# compiled with SOURCE into the one library: fragments of its namespace, and the shared header
EXTRA_SOURCES = (Path(__file__).with_name("block_kernels.cpp"), Path(__file__).with_name("blocked_kernels.cpp"))
HEADERS = (Path(__file__).with_name("lut_simd.h"), Path(__file__).with_name("kernel_args.h"))
LIBRARY = "quweit_lut"  # the TORCH_LIBRARY namespace of the source: torch.ops.quweit_lut
# -fopenmp: at::parallel_for is an OpenMP loop inlined from ATen's headers (without the flag
# it runs on one thread); the library then links libgomp.so.1, the very runtime torch has
# already loaded, so both share one thread pool.
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-std=c++20")
LDFLAGS = ("-fopenmp",)  # tuples: cpp_extension appends to the lists it is given
# More compiler flags from the environment, after CFLAGS (so they win): QUWEIT_KERNEL_CFLAGS
# ="-mno-avx512f" builds the AVX2 paths on an AVX-512 machine, as tests/test_kernels.py does.
EXTRA_CFLAGS_ENV = "QUWEIT_KERNEL_CFLAGS"


def build_cflags() -> tuple:
    """CFLAGS and the words of QUWEIT_KERNEL_CFLAGS, the flags the kernels are built with."""
    return CFLAGS + tuple(os.environ.get(EXTRA_CFLAGS_ENV, "").split())


class KernelBuildError(RuntimeError):
    """The compiled kernels could not be built or loaded."""


_loaded: set = set()  # build names loaded into this process (a library loads at most once)


def _namespace_taken() -> bool:
    """True if some build of the library already registered its ops in this process."""
    try:
        getattr(torch.ops, LIBRARY).lut_forward
        return True
    except (AttributeError, RuntimeError):
        return False


def cache_root() -> Path:
    """The directory that holds one build directory per source/flags/CPU digest."""
    if os.environ.get("QUWEIT_KERNEL_CACHE"):
        return Path(os.environ["QUWEIT_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quweit-hw" / "kernels"


def _cpu_flags() -> str:
    """The CPU feature flags that -march=native compiles for (empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _put_ninja_on_path() -> None:
    """Make the ninja of the PyPI wheel (pyproject.toml) findable: cpp_extension runs `ninja` from
    PATH, and a venv's bin folder is not on PATH when its python is run by path (the Makefile)."""
    if shutil.which("ninja"):
        return
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        dirs.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    os.environ["PATH"] = os.pathsep.join(dirs + [os.environ.get("PATH", "")])


def build_name(source: Path = SOURCE, cflags=CFLAGS) -> str:
    """The extension's name: the library name and a digest of everything the binary depends on."""
    h = hashlib.sha256()
    files = (source.read_bytes(),) + tuple(p.read_bytes() for p in EXTRA_SOURCES + HEADERS)
    for part in (*files, " ".join(tuple(cflags) + LDFLAGS).encode(), torch.__version__.encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return f"{LIBRARY}_{h.hexdigest()[:16]}"


def build_and_load(source: Path = SOURCE, cflags=None, quiet: bool = False) -> float | None:
    """Compile `source` if its cached build is missing, then load it into torch.ops.

    Returns the compile time in seconds when it compiled (it also prints it once to
    stderr unless `quiet`), None when the cached build was loaded. Raises KernelBuildError
    with the compiler's last output lines when the build or the load fails.
    """
    from torch.utils import cpp_extension

    cflags = build_cflags() if cflags is None else cflags
    name = build_name(source, cflags)
    if name in _loaded:
        return None
    if _namespace_taken():  # TORCH_LIBRARY aborts the process on a second registration
        raise KernelBuildError(f"another build of torch.ops.{LIBRARY} is already loaded in this process")
    directory = cache_root() / name
    built = (directory / f"{name}.so").exists()
    start = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _put_ninja_on_path()
        cpp_extension.load(
            name, [str(source)] + [str(p) for p in EXTRA_SOURCES], extra_cflags=list(cflags), extra_ldflags=list(LDFLAGS), build_directory=str(directory),
            is_python_module=False, verbose=False,
        )
    except Exception as exc:  # compiler missing, ninja missing, compile error, load error
        raise KernelBuildError(_summary(exc)) from exc
    _loaded.add(name)
    if built:
        return None
    seconds = time.perf_counter() - start
    if not quiet:
        print(f"quweit_hw: compiled the LUT kernels in {seconds:.1f} s (first use; cached in {directory})",
              file=sys.stderr)
    return seconds


def _summary(exc: Exception, lines: int = 6) -> str:
    """The exception's message cut to the compiler's verdict: its first few `error:` lines (the
    build's last lines are ninja's, about which source failed to compile), else its last
    non-empty lines."""
    text = [s for s in str(exc).splitlines() if s.strip()]
    errors = [s for s in text if "error:" in s]
    picked = errors[:lines] if errors else text[-lines:]
    return " | ".join(picked) if picked else type(exc).__name__
