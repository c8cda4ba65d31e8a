"""quweit-hw: Quasi-Weightless Transformers from PyTorch training to an ECP5 bitstream.

Two worlds on one contract (docs/design.md, "Layout"):

- `contract`: numpy only: the bundle, the golden model, the wire protocol, board settings;
- `model`: the torch side (layers, models, data, training, export, checkpoints, accounting);
- `gateware`: the Amaranth side (engine, Verilog, simulation, UART, link, board top, synthesis);
- on top, the flow: `backends`, `evaluation`, `build`, `host`, and the thin `cli`.

`model` and `gateware` never import each other; importing `gateware` or `contract` loads no
torch, importing `model` loads no amaranth.
"""

__version__ = "0.1.0"
