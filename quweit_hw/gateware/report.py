"""The build report (report.json, report.md), read from what nextpnr-ecp5 wrote.

Every utilisation and timing figure is read from nextpnr's `--report` and the netlist it
placed; nothing is kept by hand.
"""

import json
from pathlib import Path

from ..contract.throughput import throughput_fields, throughput_markdown
from .toolchain import NEXTPNR_REPORT, TOP

# primitives counted in the placed netlist: report name -> Yosys/nextpnr cell type
CELLS = {"LUT4": "LUT4", "PFUMX": "PFUMX", "L6MUX21": "L6MUX21", "CCU2C": "CCU2C", "FF": "TRELLIS_FF",
         "BRAM (DP16KD)": "DP16KD", "DSP (MULT18X18D)": "MULT18X18D"}
# nextpnr bel types whose capacity stands behind each primitive
BELS = {"LUT4": "TRELLIS_COMB", "PFUMX": "TRELLIS_COMB", "L6MUX21": "TRELLIS_COMB", "CCU2C": "TRELLIS_COMB",
        "FF": "TRELLIS_FF", "BRAM (DP16KD)": "DP16KD", "DSP (MULT18X18D)": "MULT18X18D"}


def placed_cells(out):
    """{cell type: count} of the top module of the netlist nextpnr placed (out/top.json)."""
    netlist = json.loads((Path(out) / f"{TOP}.json").read_text())
    cells = {}
    for module in netlist["modules"].values():
        if module.get("attributes", {}).get("top"):
            for cell in module["cells"].values():
                cells[cell["type"]] = cells.get(cell["type"], 0) + 1
    return cells


def make_report(out, bundle, board, core, seconds, cpu=None):
    """The build report, from nextpnr's --report JSON and the netlist it placed (out/top.json);
    `cpu`: the whole model's images/s on this machine's CPU (`model_throughput`), for the
    throughput table beside the chip's."""
    pnr = json.loads((Path(out) / NEXTPNR_REPORT).read_text())
    cells = placed_cells(out)
    util = pnr["utilization"]
    resources = {name: {"used": cells.get(cell, 0), "available": util.get(BELS[name], {}).get("available")}
                 for name, cell in CELLS.items()}
    fmax = {clk: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for clk, v in pnr["fmax"].items()}
    # the engines' clock: the one nextpnr names after the engine domain (engine_clk), else the only one
    engine_clock = min(v["achieved_mhz"] for k, v in fmax.items()
                       if core.engine_domain == "sync" or core.engine_domain in k)
    return {
        "board": board.name, "device": board.platform_class().device, "bundle": str(bundle.path),
        "bitstream": str(Path(out) / f"{TOP}.bit"),
        "clock_mhz": board.clock_hz / 1e6, "engine_clock_mhz": board.engine_hz / 1e6,
        "baud": board.baud, "uart_divisor": board.divisor,
        "timing_met": all(v["achieved_mhz"] >= v["constraint_mhz"] for v in fmax.values()),
        "fmax": fmax,
        "resources": resources,
        "nextpnr_utilization": util,
        **(_model_fields(core, board, engine_clock, cpu) if hasattr(core, "runner_fields")
           else _mlp_fields(core, board, engine_clock)),
        "build_seconds": round(seconds, 1),
        "sources": {"utilization and fmax": f"{NEXTPNR_REPORT} (nextpnr --report)",
                    "cell counts": f"{TOP}.json (the netlist nextpnr placed)"},
    }


def _mlp_fields(core, board, engine_clock):
    """The MLP-only top's engines and what its UART carries."""
    engines = [{"block": index, "name": e.block.name, "lut_nodes": e.block.lut_nodes,
                "lut4_estimate": e.summary()["ecp5_lut4_estimate"]["total"], "latency_cycles": e.latency,
                "tokens_per_cycle": e.tokens_per_cycle,
                "tokens_per_s_at_fmax": round(engine_clock * 1e6 * e.tokens_per_cycle)}
               for index, e in core.engines]
    frame = core.d * core.max_tokens + 7  # bytes of a full INFER frame, and of its reply
    return {"engines": engines, "uart_tokens_per_s": round(board.baud / 10 / frame * core.max_tokens)}


def _model_fields(core, board, engine_clock, cpu):
    """The whole-model top's engine: what the generator says of it (`ModelLinkCore.runner_fields`),
    and its images/s and latency at the engine clock's post-route Fmax, over the UART, and on
    this machine's CPU (`contract.throughput`)."""
    fields = core.runner_fields()
    throughput = throughput_fields(fields["cycles_per_image"], pixels=fields["pixels"], classes=fields["classes"],
                                   fmax_hz=engine_clock * 1e6, baud=board.baud, cpu=cpu)
    return {"whole_model": {**fields, "throughput": throughput}}


def report_markdown(r):
    """report.json as a Markdown page."""
    lines = [f"# Build report: {r['bundle']} on {r['board']} ({r['device']})", "",
             f"Bitstream: `{r['bitstream']}`; built in {r['build_seconds']} s"
             + (" (Yosys skipped: its netlist came from the netlist cache)." if r.get("netlist") == "cache" else "."),
             *(["Engines synthesised apart: " + ", ".join(
                 f"`{p['module']}` {'from the netlist cache' if p['netlist'] == 'cache' else 'synthesised'} "
                 f"({p['seconds']} s)" for p in r["engine_netlists"]) + "."] if r.get("engine_netlists") else []),
             *([f"Tools: {', '.join(f'{k} {v} s' for k, v in r['tool_seconds'].items())}; synth_ecp5 options "
                f"`{' '.join(r['tool_options']['synth_ecp5']) or '(none)'}`, nextpnr options "
                f"`{' '.join(r['tool_options']['nextpnr'])}`."] if "tool_seconds" in r else []),
             "",
             "| resource | used | available |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['used']} | {v['available']} |" for k, v in r["resources"].items()]
    lines += ["", "LUT4, PFUMX, L6MUX21 and CCU2C share the TRELLIS_COMB slots: "
              f"{r['nextpnr_utilization'].get('TRELLIS_COMB', {}).get('used')} used.", "",
              "| clock | Fmax (MHz) | constraint (MHz) |", "| --- | ---: | ---: |"]
    lines += [f"| `{k}` | {v['achieved_mhz']} | {v['constraint_mhz']} |" for k, v in r["fmax"].items()]
    lines += ["", f"Timing met: {'yes' if r['timing_met'] else 'NO - lower clock_hz or engine_clock_hz in boards/'}.", ""]
    if "engines" in r:
        lines += ["| block | LUT nodes | LUT4 estimate | latency (cycles) | tokens/s at Fmax |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {e['block']} | {e['lut_nodes']} | {e['lut4_estimate']} | {e['latency_cycles']} | "
                  f"{e['tokens_per_s_at_fmax']:,} |" for e in r["engines"]]
        lines += ["", f"UART: {r['baud']:,} baud (divisor {r['uart_divisor']} at {r['clock_mhz']:g} MHz), "
                  f"{r['uart_tokens_per_s']:,} tokens/s with full frames.", ""]
    if "whole_model" in r:
        w = r["whole_model"]
        lines += [f"Whole model (protocol {w['protocol']}): {w['lanes']} MAC lanes, {w['cycles_per_image']:,} "
                  f"cycles per image (generator), batch memory of {w['batch_images']} images; UART: "
                  f"{r['baud']:,} baud.", "", throughput_markdown(w["throughput"])]
    lines += [f"Sources: {r['sources']['utilization and fmax']}; cell counts from {r['sources']['cell counts']}.", ""]
    if "steps_seconds" in r:
        lines += [f"Checkpoint to bitstream: {r['checkpoint_to_bitstream_seconds']} s "
                  f"({', '.join(f'{k}: {v} s' for k, v in r['steps_seconds'].items())}).", ""]
    return "\n".join(lines)
