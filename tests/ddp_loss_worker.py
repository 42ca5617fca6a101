"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (gloo, CPU).

Rank r takes sample r of a fixed batch of 2 (the same one the test builds in-process), runs one
forward/backward of a tiny U-Net wrapped in DDP with batch Dice summed across ranks, and saves its
loss and the DDP-averaged gradients to OUT/rank_<r>.pt. With a second argument `regions`, the
same for the region loss (sigmoid Dice + BCE over two nested regions).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from nnlite.network import build_unet
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg
from nnlite.network.region_loss import build_region_loss, region_targets
from nnlite.common.labels import Region
from nnlite.plans import NetworkPlan
from nnlite.training.distributed import close_distributed, init_distributed

PLAN = NetworkPlan(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 3,
                   features_per_stage=(4, 8, 16))
PATCH = (8, 16, 16)
NUM_CLASSES = 3
REGIONS = (Region("both", (1, 2), 1), Region("two", (2,), 2))  # nested, as BraTS's


def fixed_batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(2, 1, *PATCH) data and its deep-supervision targets; sample 1 holds almost no class 2, so
    batch Dice and per-sample Dice differ clearly."""
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(2, 1, *PATCH, generator=gen)
    seg = torch.randint(0, NUM_CLASSES, (2, 1, *PATCH), generator=gen)
    seg[1][seg[1] == 2] = 0
    seg[1, 0, 0, 0, 0] = 2
    return data, downsample_seg(seg, deep_supervision_scales(PLAN))


def the_loss(kind: str, across_ranks: bool = False, batch_dice: bool = True) -> nn.Module:
    """Dice + CE on the labels, or Dice + BCE on REGIONS (kind "regions")."""
    if kind == "regions":
        return build_region_loss(PLAN, batch_dice, len(REGIONS), across_ranks)
    return build_loss(PLAN, batch_dice=batch_dice, across_ranks=across_ranks)


def the_targets(kind: str, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    return [region_targets(t, REGIONS) for t in targets] if kind == "regions" else targets


def tiny_network(kind: str = "labels") -> nn.Module:
    torch.manual_seed(0)
    network = build_unet(PLAN, 1, len(REGIONS) if kind == "regions" else NUM_CLASSES)
    network.skip_lowest_head = True  # as the trainer: the weight-0 head is not computed
    return network


def main(out: Path, kind: str) -> None:
    rank = init_distributed("cpu", timeout_minutes=2)
    network = tiny_network(kind)
    model = nn.parallel.DistributedDataParallel(network, find_unused_parameters=True)
    data, targets = fixed_batch()
    targets = the_targets(kind, targets)
    r = slice(rank.rank, rank.rank + 1)  # this rank's sample of the global batch
    loss = the_loss(kind, across_ranks=True)(model(data[r]), [t[r] for t in targets])
    loss.backward()
    grads = {name: p.grad for name, p in network.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads}, out / f"rank_{rank.rank}.pt")
    close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "labels")
