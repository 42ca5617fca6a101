"""DistributedDataParallel under `torchrun`: process group, batch split, cross-rank reductions.

`torchrun --nproc_per_node=N -m nnlite.train WORK …` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; without torchrun everything here degrades to a single process (rank 0 of 1).
The global batch (the plan's batch size) is split across ranks, and the reference's global
foreground-oversampling rule is kept: global sample g is forced to hold foreground iff
g ≥ round(B · (1 − oversample)), whatever rank draws it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nnlite.loading import sampling


@dataclass(frozen=True)
class Rank:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Rank:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Rank()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Rank(rank, world_size, local_rank)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def split_batch(global_batch: int, rank: Rank) -> tuple[int, int]:
    """(local batch size, index of this rank's first sample in the global batch).

    Rank i gets B // N samples, plus one for the first B % N ranks (the reference's split).
    """
    if global_batch < rank.world_size:
        raise ValueError(f"batch size {global_batch} is smaller than the {rank.world_size} ranks")
    base, extra = divmod(global_batch, rank.world_size)
    size = base + (1 if rank.rank < extra else 0)
    first = rank.rank * base + min(rank.rank, extra)
    return size, first


def forced_foreground(global_batch: int, oversample: float, rank: Rank) -> list[bool]:
    """Per local sample: is it forced to contain foreground? (global rule, see module docstring)."""
    size, first = split_batch(global_batch, rank)
    return sampling.forced_foreground(global_batch, oversample, range(first, first + size))


def sum_across_ranks(tensor: torch.Tensor, rank: Rank) -> torch.Tensor:
    """Element-wise sum over ranks (returns the input unchanged on one process)."""
    if not rank.distributed:
        return tensor
    device = tensor.device
    work = tensor.cuda() if dist.get_backend() == "nccl" else tensor.clone()  # NCCL: GPU tensors only
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)


def mean_across_ranks(value: float, rank: Rank) -> float:
    if not rank.distributed:
        return value
    return float(sum_across_ranks(torch.tensor([value], dtype=torch.float64), rank)) / rank.world_size


def broadcast_int(value: int, rank: Rank) -> int:
    """Rank 0's value on every rank (the drawn seed, for instance)."""
    if not rank.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0)
    return int(tensor.cpu())


def barrier(rank: Rank) -> None:
    if rank.distributed:
        dist.barrier()
