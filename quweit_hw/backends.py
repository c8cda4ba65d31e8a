"""MLP backends: where a model's LUT-MLP blocks are computed (golden, rtl, board), and how a
torch model is routed through one (`attach`).

A backend maps (block index, quantized tokens q (N, d) int) to group counts (N, d) int.
The model quantizes and applies the affine step itself, so every backend is compared on
exactly the integers the hardware sees. New backends plug in through `make_backend`.
"""

import numpy as np

from .contract import golden
from .errors import UserError

BACKENDS = ("torch", "golden", "rtl", "board")


class MLPBackend:
    """Base of the non-torch backends; `counts` is the whole interface."""

    name = "?"

    def __init__(self, bundle):
        self.bundle = bundle

    def counts(self, index, q):  # (N, d) int -> (N, d) int64
        raise NotImplementedError

    def close(self):
        pass


class GoldenBackend(MLPBackend):
    """The bundle's blocks computed by the integer golden model (quweit_hw.contract.golden)."""

    name = "golden"

    def counts(self, index, q):
        return golden.counts(self.bundle.blocks[index], q)


def make_backend(name, bundle, *, port=None, sim=None):
    """The backend called `name` over `bundle`."""
    if name == "golden":
        return GoldenBackend(bundle)
    if name == "rtl":
        from .gateware.rtlsim import RTLBackend

        return RTLBackend(bundle, **({"sim": sim} if sim else {}))
    if name == "board":
        from .host import BoardBackend

        if not port:
            raise UserError("--mlp-backend board needs --port (e.g. /dev/ttyUSB0)")
        return BoardBackend(bundle, port)
    raise UserError(f"unknown MLP backend {name!r}; expected one of {BACKENDS}")


class Agreement:
    """Counts, per block, the tokens whose backend counts differ from the torch eval counts."""

    def __init__(self, blocks):
        self.tokens = [0] * blocks
        self.mismatches = [0] * blocks

    def __str__(self):
        return ", ".join(f"block {i}: {m} of {t} tokens differ" for i, (t, m) in enumerate(zip(self.tokens, self.mismatches)))

    @property
    def exact(self):
        return not any(self.mismatches) and all(self.tokens)


def attach(model, backend, *, agreement=None):
    """Route the LUT-MLP blocks of `model` (in eval mode) through `backend`.

    With `agreement`, every call also computes the torch eval counts and records mismatches.
    """
    import torch

    mlps = model.lut_mlps()
    blocks = backend.bundle.blocks
    if len(mlps) != len(blocks):
        raise UserError(f"the model has {len(mlps)} LUT-MLP block(s), the bundle {len(blocks)}")
    for index, ((name, mlp), block) in enumerate(zip(mlps, blocks)):
        if mlp.config.d != block.d:
            raise UserError(f"model block {name!r} has d={mlp.config.d}, bundle block {block.name!r} has d={block.d}")

        def route(q, index=index, mlp=mlp):
            c = backend.counts(index, q.detach().cpu().numpy().astype(np.int64))
            c = torch.from_numpy(np.asarray(c, np.int64)).to(q.device)
            if agreement is not None:
                reference = mlp.counts(q.to(torch.float32)).round().long()
                agreement.tokens[index] += len(q)
                agreement.mismatches[index] += int((reference != c).any(dim=1).sum())
            return c

        mlp.backend = route


def detach(model):
    for _, mlp in model.lut_mlps():
        mlp.backend = None
