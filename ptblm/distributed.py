"""Multi-process training under torchrun: which rank this is, and the few collectives the
trainer needs. Without torchrun this is rank 0 of 1, and a collective gives back its own values."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ptblm.errors import RankFailed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is True on any rank."""
        return self.sum([float(flag)], device)[0] > 0

    def raise_if_failed(self, failure: Exception | None, device: torch.device, what: str) -> None:
        """After rank 0 alone tried something: if it failed, every rank stops, rank 0 with its
        `failure`, the others with a quiet RankFailed ("rank 0 could not WHAT.")."""
        if self.any(failure is not None, device):
            raise failure or RankFailed(f"rank 0 could not {what}.")

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over the ranks (float64)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (same shape on all), in rank order."""
        if not self.enabled:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return parts

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


SINGLE_PROCESS = Distributed()


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, ...), if
    any: NCCL between GPUs, gloo between CPU processes. Each rank gets its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(int(os.environ["RANK"]), world_size), device


def shutdown(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
