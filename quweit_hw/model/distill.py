"""Knowledge distillation from a trained teacher (the dense twin) into the model in training.

Two terms, each with its own weight (`train --distill-from CKPT`):

- soft targets on the logits (Hinton, Vinyals and Dean, "Distilling the Knowledge in a
  Neural Network", 2015): the loss is (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)
  at temperature T;
- a regression target per block for the student's LUT-MLP: the teacher's MLP of the same
  block applied to the student's own MLP input, the squared error relative to the target's
  energy, averaged over blocks (`--distill-mlp`). This is "distillation from the dense twin
  into the LUT blocks" of QuWeiT's recipe: each LUT-MLP learns the function its dense
  counterpart computes on what the LUT-MLP actually sees.

The teacher runs in eval mode, without gradients; it is never written.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..errors import UserError
from .checkpoint import build_model, read_checkpoint


class Distiller:
    """The teacher and the weights of the two distillation terms."""

    def __init__(self, teacher, *, weight=0.5, temperature=2.0, mlp_weight=0.0):
        self.teacher, self.weight, self.temperature, self.mlp_weight = teacher, weight, temperature, mlp_weight
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_args(cls, args, student, device="cpu"):
        """The Distiller of --distill-from (None without it), its teacher on `device`, checked
        against the task and, for --distill-mlp, against the student's shape."""
        if getattr(args, "distill_from", None) is None:
            return None
        source = read_checkpoint(args.distill_from)
        if source["task"] != args.task:
            raise UserError(f"--distill-from {str(args.distill_from)!r} was trained on task {source['task']!r}, "
                            f"not {args.task!r}")
        teacher = build_model(source["arch"], source["config"])
        teacher.load_state_dict(source["state_dict"])
        if args.distill_mlp:
            _check_mlp_shapes(args, student, teacher)
        return cls(teacher.to(device), weight=args.distill_weight, temperature=args.distill_temperature,
                   mlp_weight=args.distill_mlp)

    @contextlib.contextmanager
    def capture(self, student):
        """While the body runs: the (input, output) of each of `student`'s block MLPs, in block
        order, as the list this yields (filled by each forward; empty without --distill-mlp)."""
        seen = []
        hooks = [] if not self.mlp_weight else [
            block.mlp.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
            for block in student.blocks]
        try:
            yield seen
        finally:
            for h in hooks:
                h.remove()

    def loss(self, ce, logits, xb, seen):
        """The training loss: the cross-entropy `ce` of the student's `logits` on batch `xb`,
        blended with the teacher's soft targets, plus the MLP term of the `seen` (input, output)
        pairs of `capture`."""
        T = self.temperature
        with torch.no_grad():
            target = self.teacher(xb).flatten(0, -2)
        kl = F.kl_div(F.log_softmax(logits.flatten(0, -2) / T, -1), F.log_softmax(target / T, -1),
                      log_target=True, reduction="batchmean") * T * T
        total = (1 - self.weight) * ce + self.weight * kl
        if self.mlp_weight:
            total = total + self.mlp_weight * self.mlp_term(seen)
        return total

    def mlp_term(self, seen):
        """The mean over blocks of |student MLP - teacher MLP|^2 / |teacher MLP|^2 on the
        student's own MLP inputs."""
        terms = []
        for block, (x, y) in zip(self.teacher.blocks, seen):
            with torch.no_grad():
                target = block.mlp(x.detach())
            terms.append((y - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12))
        return torch.stack(terms).mean()


def _check_mlp_shapes(args, student, teacher):
    """--distill-mlp needs LUT-MLPs in the student and a teacher of its width and depth."""
    if not student.lut_mlps():
        raise UserError("--distill-mlp trains LUT-MLPs towards the teacher's MLPs: add --mlp lut")
    s, t = student.config, teacher.config
    if (s.d, s.depth) != (t.d, t.depth):
        raise UserError(f"--distill-mlp needs a teacher of the student's width and depth: --distill-from "
                        f"{str(args.distill_from)!r} has d={t.d}, depth={t.depth}, the student d={s.d}, "
                        f"depth={s.depth}")
