"""The engines of a board top synthesised out of context, each netlist kept in the netlist cache,
and stitched into the top's netlist: a rebuild that changes only the board top (a clock, the
baud rate, the link) runs Yosys on the link alone and takes the engines' netlists from the cache.

Amaranth writes a hierarchical RTLIL: one module per elaboratable, named by its path
(`top.core.socket0.engine.layer0`). A *part* is a module called `engine` (an MLP engine in its
socket, the whole-model engine in its link core) with every module below it. Each part is
synthesised on its own (`synth_ecp5` with the build's options) under the neutral name CANONICAL, so
equal engines in other tops or other sockets share one cache entry; its key is that RTLIL with
the source-location attributes left out, the options and FORMAT. The rest of the top is
synthesised with each part as a black box of the same ports; then the parts' netlists replace
the boxes and the design is flattened into top.json, the netlist nextpnr places as before.
Nothing crosses a part's boundary in synthesis (no constant or unused port is propagated
through it), which is what lets the netlists be reused.

Yosys has no such flow of its own beyond these commands, and Amaranth none, hence this module.
"""

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from . import netlist_cache as cache

PART = "engine"  # the submodule name that makes a part
FORMAT = "quweit-engine-netlist 1"
# ABC9's delay target for a part, in ps. Without one ABC9 maps for the least depth of what it
# sees and recovers area only where that costs no depth: in the whole top the link's deep paths
# set the bar and the engines get area recovery; an engine alone has no such slack and came out
# 1.85x larger (914 LUT4 against 494 with a target, a d = 8, 96-node engine). 2 ns is 4-5 LUT
# levels, more than any register-to-register segment of an engine needs. A fixed figure, not
# the clock's, so that a clock change keeps the engines' netlists.
ABC9_DELAY_PS = 2000
CANONICAL = "quweit_part"  # a part's module name in its own netlist
_MODULE = re.compile(r"^module \\(\S+)$")
# a wire named like a bit of another (Amaranth's `i__payload[0]`): beside a black box, ABC9's
# reintegration asserts on such names (Yosys issue 4349), so the rest's are renamed `i__payload<0>`
_BIT_NAME = re.compile(r"(\\[^\s\[]+)\[(\d+)\]")
_PORT = re.compile(r"^  wire (?:width \d+ )?(?:upto )?(?:signed )?(?:input|output|inout) \d+ ")


def split_modules(il_text):
    """(header, [(name, text)]) of an RTLIL text: each module with the attribute lines before it."""
    header, modules, pending, current = [], [], [], None
    for line in il_text.splitlines(keepends=True):
        if current is not None:
            current[1].append(line)
            if line.rstrip("\n") == "end":
                modules.append((current[0], "".join(current[1])))
                current = None
        elif line.startswith("attribute "):
            pending.append(line)
        elif match := _MODULE.match(line.rstrip("\n")):
            current, pending = (match.group(1), [*pending, line]), []
        else:
            header.append(line)
    return "".join(header), modules


def part_roots(names):
    """The outermost modules called PART (the last path component) among module `names`."""
    roots = []
    for name in names:
        if name.rsplit(".", 1)[-1] == PART and not any(name.startswith(root + ".") for root in roots):
            roots.append(name)
    return roots


def _in_part(name, root):
    return name == root or name.startswith(root + ".")


def _canonical(text, root):
    """A part's RTLIL under the neutral name CANONICAL, source locations left out."""
    lines = (line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("attribute \\src "))
    return re.sub(r"\\" + re.escape(root) + r"(?=[.\s])", lambda _: "\\" + CANONICAL, "".join(lines))


def _black_box(name, text):
    """A module of the same name and ports as `text`, marked as a black box."""
    ports = [line for line in text.splitlines(keepends=True) if _PORT.match(line)]
    return f"attribute \\blackbox 1\nmodule \\{name}\n{''.join(ports)}end\n"


def part_key(canonical_text, synth_opts):
    """The netlist cache key of a part: its neutral RTLIL, the options, FORMAT and ABC9_DELAY_PS."""
    h = hashlib.sha256(f"{FORMAT}\n{ABC9_DELAY_PS}\n{' '.join(synth_opts)}\n".encode())
    h.update(canonical_text.encode())
    return h.hexdigest()


def _yosys(yosys, script, folder):
    """Run Yosys' `script` in `folder` (paths relative to it: the YoWASP Yosys sees only its working
    folder), its log in folder/top.rpt."""
    run = subprocess.run([yosys, "-q", "-l", "top.rpt", "-p", script], cwd=folder, capture_output=True, text=True)
    if run.returncode != 0:
        raise subprocess.CalledProcessError(run.returncode, "yosys", run.stdout, run.stderr)


def synthesise(il_text, out, *, yosys, version, synth_opts=(), use_cache=True):
    """Write top.json and top.rpt (every Yosys log, one after the other) for the top whose RTLIL
    is `il_text` into build folder `out`, the parts synthesised out of context (or taken from the
    cache) and stitched in. Returns [{"module", "netlist": "cache"|"yosys", "seconds"}] per part,
    or None when the top has no part (then nothing is written). CalledProcessError when Yosys
    fails; its log is in `out`."""
    header, modules = split_modules(il_text)
    roots = part_roots([name for name, _ in modules])
    if not roots:
        return None
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out, prefix="parts-") as tmp:
        tmp = Path(tmp)
        parts = [_part_netlist(header, modules, root, tmp / f"part{index}", out, yosys, version, synth_opts,
                               use_cache) for index, root in enumerate(roots)]
        rest = "".join(_black_box(name, text) if name in roots else text
                       for name, text in modules if not any(_in_part(name, r) and name != r for r in roots))
        (tmp / "rest.il").write_text(header + _BIT_NAME.sub(r"\1<\2>", rest))
        _yosys(yosys, "; ".join(_stitch_script(tmp.relative_to(out), parts, synth_opts)), out)
        (out / "top.rpt").write_text("".join(p.log for p in parts) + "# the top, its parts stitched in\n"
                                     + (out / "top.rpt").read_text(errors="replace"))
    return [{"module": p.module, "netlist": p.netlist, "seconds": p.seconds} for p in parts]


class _Part(NamedTuple):
    module: str   # the part's root module in the top
    netlist: str  # "cache" or "yosys"
    seconds: float
    box: str      # its netlist's module name in the stitched design
    folder: str   # its folder beside rest.il
    log: str      # its Yosys log, headed by where the netlist came from


def _part_netlist(header, modules, root, folder, out, yosys, version, synth_opts, use_cache):
    """Part `root`'s netlist in `folder`/top.json, from the cache or synthesised (and stored)."""
    start = time.perf_counter()
    canonical = "".join(_canonical(text, root) for name, text in modules if _in_part(name, root))
    key = part_key(canonical, synth_opts)
    folder.mkdir()
    hit = use_cache and cache.fetch(key, version, folder)
    if not hit:
        (folder / "part.il").write_text(header + canonical)
        try:
            _yosys(yosys, f"read_rtlil part.il; scratchpad -set abc9.D {ABC9_DELAY_PS}; "
                          f"synth_ecp5 {' '.join(synth_opts)} -top \\{CANONICAL}; "
                          f"select \\{CANONICAL}; write_json -selected top.json", folder)
        except subprocess.CalledProcessError:
            shutil.copyfile(folder / "top.rpt", out / "top.rpt")  # the failed run's log, for the error
            raise
        if use_cache:
            cache.store(key, version, folder)
    log = (f"# part {root}: {'from the netlist cache, key ' + key if hit else 'synthesised'}\n"
           + (folder / "top.rpt").read_text(errors="replace"))
    return _Part(root, "cache" if hit else "yosys", round(time.perf_counter() - start, 1), f"ooc_{key[:16]}",
                 folder.name, log)


def _stitch_script(here, parts, synth_opts):
    """Yosys commands (paths relative to the build folder, the parts' folders under `here`):
    the rest with its black boxes, then each part's netlist in place of its box, flattened."""
    script = [f"read_rtlil {here / 'rest.il'}", f"scratchpad -set abc9.D {ABC9_DELAY_PS}",
              f"synth_ecp5 {' '.join(synth_opts)} -top top"]
    read = set()
    for p in parts:
        if p.box not in read:  # equal parts share one netlist
            read.add(p.box)
            script += [f"read_json {here / p.folder / 'top.json'}", f"rename \\{CANONICAL} \\{p.box}"]
        script.append(f"chtype -map \\{p.module} \\{p.box} top")
    return script + ["hierarchy -top top", "flatten", "hierarchy -top top", "opt_clean", "write_json top.json"]
