"""Training on several processes with PyTorch's DistributedDataParallel.

Under ``torchrun --nproc_per_node=N -m symode train ...`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) every training command
joins a process group (gloo on CPU, nccl on GPU, one GPU per process), wraps its model in
``DistributedDataParallel`` and trains on its shard of each batch: the ranks draw the same
global batch and each takes its contiguous ``batch_size / N`` rows, so the averaged gradient
is the gradient of the mean loss over the global batch. Every gradient method works: DDP's
hooks fire when a parameter's gradient is accumulated, which each method's backward pass does
(the symplectic adjoint returns the parameters' gradients from its own backward function).

What differs from one process:

* Each rank solves its own shard, with its own adaptive steps (the error norm is over the
  shard): ranks take different numbers of steps and the fast ones wait at the all-reduce.
  With fixed steps the averaged gradient equals the one-process gradient on the global batch
  to round-off; with adaptive steps, to the solver's tolerance.
* The Hutchinson noise comes from a generator seeded per rank (``seed + 1 + rank``).
* ``f`` must not call collectives (the ranks evaluate it different numbers of times).
* Memory is per rank: each holds the model and its shard's solve.
* Evaluation, metrics, checkpoints and plots are rank 0's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Objective", "World", "join", "shard"]


class Objective(torch.nn.Module):
    """``loss(model, *args)`` as a module, so that ``DistributedDataParallel`` sees one forward
    pass per iteration (the solve inside it calls ``model`` many times, and the gradient methods
    call it again in their backward passes: the model itself is not wrapped)."""

    def __init__(self, model: torch.nn.Module, loss: Any):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args: Any) -> Any:
        return self.loss(self.model, *args)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size == 1``: alone)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"
    joined: bool = False  # this module started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` when there are several processes."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        # no buffer broadcast: the buffers are each solve's Hutchinson noise, drawn per rank (and
        # reshaped by rank 0's evaluations), not state to keep equal
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def leave(self) -> None:
        if self.joined:
            dist.destroy_process_group()


def join(device: str) -> World:
    """The process group torchrun describes in the environment (joined here if need be), or a
    world of one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    rank = int(os.environ["RANK"])
    joined = False
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        joined = True
    return World(rank=rank, size=size, device=device, joined=joined)


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of the global batch."""
    if world.size == 1:
        return batch
    if batch.shape[0] % world.size:
        raise ValueError(
            f"batch_size {batch.shape[0]} is not a multiple of the {world.size} processes: give a batch size that "
            f"they divide"
        )
    return batch.chunk(world.size)[world.rank]
