"""DistributedDataParallel under `torchrun`: process group, batch split, cross-rank reductions.

`torchrun --nproc_per_node=N -m nnlite.train WORK …` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; without torchrun everything here degrades to a single process (rank 0 of 1).
The global batch (the plan's batch size) is split across ranks, and the reference's global
foreground-oversampling rule is kept: global sample g is forced to hold foreground iff
g ≥ round(B · (1 − oversample)), whatever rank draws it.

Work that is not a training step (the final validation, the cascade's previous-stage inputs) is
shared: each rank takes every N-th item (`share`) and the ranks meet at a barrier after every
round of N items (`for_each_shared`), so no rank ever waits in a collective for longer than one
item takes; raising the process-group timeout (`distributed.timeout_minutes`) is not needed for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from nnlite.loading import sampling
from nnlite.network.hardware import launched_rank

T = TypeVar("T")
R = TypeVar("R")


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


def init_distributed(device_type: str, timeout_minutes: float = 30.0) -> Rank:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a no-op without torchrun.

    `timeout_minutes`: how long a collective may wait for the slowest rank before the job fails.
    """
    rank, world_size, local_rank = launched_rank()
    if world_size == 1:
        return Rank()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
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


def share(items: Sequence[T], rank: Rank) -> list[T]:
    """This rank's share of `items`: items r, r + N, r + 2N, … (all of them on one process)."""
    return [items[i] for i in share_indices(len(items), rank)]


def share_indices(n_items: int, rank: Rank) -> range:
    return range(rank.rank, n_items, rank.world_size)


def for_each_shared(items: Sequence[T], rank: Rank, work: Callable[[T], R]) -> dict[int, R]:
    """Run `work` on this rank's share of `items`, meeting the other ranks after every round.

    Round k holds items kN … kN + N − 1, one per rank; the barrier after it waits at most for the
    slowest of those N items, and every rank meets ceil(len(items) / N) barriers, its share or not.
    Returns {index in items: result} of this rank's items.
    """
    mine = share_indices(len(items), rank)
    results = {}
    for round_index in range(math.ceil(len(items) / rank.world_size)):
        if round_index < len(mine):
            results[mine[round_index]] = work(items[mine[round_index]])
        barrier(rank)
    return results


def gather_objects(value: Any, rank: Rank) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] on one process."""
    if not rank.distributed:
        return [value]
    gathered: list[Any] = [None] * rank.world_size
    dist.all_gather_object(gathered, value)
    return gathered
