"""A cache of Yosys' netlists, so that a rebuild that changes only what nextpnr does (a seed,
a placer or router option, a timing target given to nextpnr) skips Yosys: 10-20 minutes for
the whole-model top on this machine, about 2-4 for the MLP-only one.

An entry is keyed by what Yosys reads: the build's script (top.ys, with its synth_ecp5
options) and the top's RTLIL, its comment lines left out (the provenance header; Yosys
ignores comments). It holds Yosys' netlist (top.json) and log (top.rpt), gzip-compressed,
and a manifest with the Yosys version that made them and their SHA-256. An entry made by
another Yosys, or one that is unreadable or does not match its manifest, is never used: it is
named in a note on stderr and Yosys runs (and replaces it).

The cache lives in $QUWEIT_NETLIST_CACHE, else $XDG_CACHE_HOME/quweit-hw/netlists (default
~/.cache/quweit-hw/netlists); it keeps the newest `KEEP` entries. Amaranth has no such cache,
and Yosys' own (`-p "tee"` and the like) does not store netlists, hence this module.
"""

import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

FORMAT, VERSION = "quweit-netlist-cache", 1
FILES = ("top.json", "top.rpt")  # what Yosys writes in a build folder (the netlist and its log)
KEEP = 24  # entries kept (whole tops and engines); the whole-model top's netlist is about 6 MB compressed


def cache_root():
    if os.environ.get("QUWEIT_NETLIST_CACHE"):
        return Path(os.environ["QUWEIT_NETLIST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quweit-hw" / "netlists"


def netlist_key(files, variant=""):
    """The cache key of a build's Yosys run, from its BuildPlan `files` ({name: text or bytes})
    and the `variant` of the flow that makes the netlist."""
    h = hashlib.sha256(f"{FORMAT} {VERSION}\n{variant}\n".encode())
    for name in ("top.ys", "top.il"):
        text = files[name]
        text = text.decode() if isinstance(text, bytes) else text
        h.update(f"{name}\n".encode())
        h.update("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")).encode())
    return h.hexdigest()


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _note(text):
    print(f"note: {text}", file=sys.stderr, flush=True)


def fetch(key, yosys, out):
    """Put the cached netlist and log of `key` into build folder `out` and return True, when an
    entry made by Yosys `yosys` (its `-V` line) exists and checks; else False (with a note for
    an entry that exists but cannot be used)."""
    entry = cache_root() / key
    if not entry.is_dir():
        return False
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION or manifest.get("key") != key:
            raise ValueError("its manifest is not this format's")
        if manifest.get("yosys") != yosys:
            _note(f"the cached netlist {entry} was made by {manifest.get('yosys')!r}, not {yosys!r}: running Yosys")
            return False
        data = {}
        for name in FILES:
            data[name] = gzip.decompress((entry / f"{name}.gz").read_bytes())
            if _sha256(data[name]) != manifest["sha256"][name]:
                raise ValueError(f"{name} does not match its SHA-256")
    except (OSError, ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile) as e:
        _note(f"ignoring the netlist cache entry {entry} ({e}); running Yosys")
        return False
    for name, content in data.items():
        (Path(out) / name).write_bytes(content)
    os.utime(entry)  # newest first when the cache is pruned
    return True


def store(key, yosys, out):
    """Keep the netlist and log Yosys wrote in build folder `out` under `key`; then prune the
    cache to the newest KEEP entries. A cache that cannot be written only costs a note."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
        sums = {}
        for name in FILES:
            content = (Path(out) / name).read_bytes()
            sums[name] = _sha256(content)
            (tmp / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=1))
        (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "key": key,
                                                       "yosys": yosys, "sha256": sums,
                                                       "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                      indent=1) + "\n")
        shutil.rmtree(root / key, ignore_errors=True)
        os.replace(tmp, root / key)
    except OSError as e:
        _note(f"the netlist cache {root} cannot be written ({e.strerror or e}); the build goes on without it")
        return
    _prune(root)


def _prune(root):
    for tmp in root.glob(".new-*"):  # an interrupted store's leftovers, a day on
        if time.time() - tmp.stat().st_mtime > 86_400:
            shutil.rmtree(tmp, ignore_errors=True)
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
