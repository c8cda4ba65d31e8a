"""Training on more than one process under `torchrun`: the process group, each rank's share of a
batch, the model wrapped in DistributedDataParallel, sums over the ranks, and which rank writes.

Without torchrun (WORLD_SIZE unset or 1) every function is the single-process identity, so
`quweit-hw train` is unchanged. Each rank draws the same global batch (the batches are a
function of the seed and epoch) and trains on its contiguous share; DDP averages the
gradients, which equals the gradient of the mean loss over the whole batch because the
shares are of equal size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import UserError


@dataclass(frozen=True)
class World:
    """This process's rank among `size` training processes."""

    rank: int = 0
    size: int = 1

    @property
    def writes(self) -> bool:
        """True on the one rank that prints and writes checkpoints."""
        return self.rank == 0


def start(device: torch.device, batch_size: int) -> World:
    """Join torchrun's process group (gloo on CPUs, NCCL on GPUs) when WORLD_SIZE > 1; raises
    UserError when the batch does not split evenly over the processes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if batch_size % size:
        raise UserError(f"--batch-size {batch_size} must be a multiple of the {size} torchrun processes")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size())


def shard(t: Tensor, world: World) -> Tensor:
    """This rank's contiguous share of a global batch `t` (along dim 0)."""
    return t if world.size == 1 else t.tensor_split(world.size)[world.rank]


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module to train: `model` itself, or DistributedDataParallel around it."""
    if world.size == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def total(values: list[float], world: World) -> list[float]:
    """The sums of `values` over all ranks (the values themselves on one process)."""
    if world.size == 1:
        return values
    on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces only GPU tensors
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return t.tolist()


def finish(world: World) -> None:
    """Leave the process group (after the last checkpoint)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
