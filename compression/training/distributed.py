"""Data-parallel training over several processes (torch.distributed), started by ``torchrun``.

``torchrun --nproc-per-node N -m model_store.cli compress distill ...`` starts the same command in N
processes; each reads its place from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without torchrun there is one process and nothing
here does anything. The backend is NCCL when CUDA is there, else gloo (several CPU processes).

Each step, every process computes the loss on its share of the step's batch (the batch's rows
``rank::world_size``), and the gradients are averaged over processes weighted by each share's target
tokens, so that a loss that is a mean over target tokens gets the gradient of the whole batch, as
one process would have computed it. Every process then takes the same optimizer step. Side effects
(checkpoints, logs, caches, publishing) belong to the main process (rank 0), or run there first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import distributed, nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """Read torchrun's variables; one process when they are absent."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        ranks = cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if not 0 <= ranks.rank < world_size:
            raise ValueError(f"RANK {ranks.rank} is outside WORLD_SIZE {world_size}")
        return ranks

    @property
    def main(self) -> bool:
        """Whether this is the process that writes (checkpoints, logs, the published variant)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def start(self) -> None:
        """Join the process group (once; nothing to do for a single process)."""
        if not self.parallel or distributed.is_initialized():
            return
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        distributed.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        logger.info("process %d of %d joined the %s group", self.rank, self.world_size, backend)

    def stop(self) -> None:
        if self.parallel and distributed.is_initialized():
            distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.parallel:
            distributed.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (filling caches); the others then find them filled."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def share(self, items: Sequence[int]) -> list[int]:
        """This process's share of a step's batch rows."""
        if self.parallel and len(items) < self.world_size:
            raise ValueError(
                f"a batch of {len(items)} cannot be shared by {self.world_size} processes; "
                f"use a batch size of at least {self.world_size}"
            )
        return list(items[self.rank :: self.world_size])

    def average_gradients(self, parameters: Iterable[nn.Parameter], weight: float) -> float:
        """Replace each gradient by the ``weight``-weighted mean over processes; returns the summed weight.

        A parameter without a gradient on this process counts as a zero gradient (every process
        takes part in every collective, in the same order)."""
        if not self.parallel:
            return weight
        total = self.all_sum(torch.tensor([weight], dtype=torch.float64)).item()
        if total <= 0:
            raise ValueError("no process had anything to learn from in this step")
        grads = []
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
        flat = torch.cat([grad.reshape(-1) for grad in grads]) * (weight / total)
        self.all_sum(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        return total

    def weighted_mean(self, values: Sequence[float], weight: float, total: float) -> list[float]:
        """The ``weight``-weighted means over processes of this process's ``values``."""
        if not self.parallel:
            return list(values)
        summed = self.all_sum(torch.tensor(values, dtype=torch.float64) * (weight / total))
        return summed.tolist()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, in place (on the device the backend needs)."""
        if not self.parallel:
            return tensor
        device = torch.device("cuda", self.local_rank) if torch.cuda.is_available() else tensor.device
        moved = tensor.to(device)
        distributed.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor


SINGLE_PROCESS = Ranks()
