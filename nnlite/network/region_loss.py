"""Region-based training's loss: sigmoid soft Dice + binary cross-entropy (nnU-Net's DC_and_BCE_loss).

The network has one output per region (docs/regions.md), read through a sigmoid: regions may
overlap or nest (whole tumour ⊃ tumour core ⊃ enhancing), so they are not one softmax. The loader
turns each augmented integer patch into region targets with `region_targets` (B, R, *S) uint8, plus
a last channel marking ignore-label voxels when the dataset has one; those voxels count in neither
term. loss = BCE − mean soft Dice over regions (every channel counts: there is no background
output), so it lies in [−1, ∞) like the label loss. Deep supervision is `loss.DeepSupervisionLoss`
with the same weights; targets are downsampled as integer maps before conversion (nearest-exact
picks voxels, so converting before or after gives the same channels).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnlite.data.regions import in_region
from nnlite.network.loss import (DICE_SMOOTH, DICE_WEIGHT, DeepSupervisionLoss, deep_supervision_weights,
                                 soft_dice)
from nnlite.common.labels import Region
from nnlite.plans import NetworkPlan

BCE_WEIGHT = 1.0  # weight of the binary cross-entropy term (the reference's weight_ce)


def region_targets(seg: torch.Tensor, regions: Sequence[Region],
                   ignore_label: int | None = None) -> torch.Tensor:
    """Integer labels (B, 1, *S) → (B, R, *S) uint8 region masks, plus channel R = "ignored voxel"
    when `ignore_label` is given (nnU-Net's layout: the ignore mask is the last channel)."""
    labels = seg[:, 0]
    channels = [in_region(labels, region.labels) for region in regions]
    if ignore_label is not None:
        channels.append(labels == ignore_label)
    return torch.stack(channels, dim=1).to(torch.uint8)


def soft_dice_per_region(probs: torch.Tensor, target: torch.Tensor, batch_dice: bool,
                         valid: torch.Tensor | None = None, smooth: float = DICE_SMOOTH,
                         across_ranks: bool = False) -> torch.Tensor:
    """Soft Dice of every region: probs (B, R, *S) sigmoid outputs, target (B, R, *S) 0/1, valid
    (B, 1, *S) bool or None. Returns (R,) with batch Dice (sums over the batch too), else (B, R).
    With `across_ranks` and batch Dice the sums also run over the batches of every DDP rank."""
    return soft_dice(probs, target.to(probs.dtype), batch_dice, valid, smooth, across_ranks)


class RegionDiceBCELoss(nn.Module):
    """BCE + sigmoid soft Dice on one output: logits (B, R, *S), targets (B, R[+1], *S) → scalar.

    With an ignore channel (target has R + 1 channels) BCE is the mean over the counted voxels of
    every region channel (the reference divides that sum by the voxel count only, R times larger).
    """

    def __init__(self, num_regions: int, batch_dice: bool, smooth: float = DICE_SMOOTH,
                 across_ranks: bool = False) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.across_ranks = across_ranks  # batch Dice over every DDP rank's batch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # sigmoid and BCE in fp32
        regions = target[:, : self.num_regions].float()
        valid = target[:, self.num_regions :] == 0 if target.shape[1] > self.num_regions else None
        dice = soft_dice_per_region(torch.sigmoid(logits), regions, self.batch_dice, valid, self.smooth,
                                    self.across_ranks)
        bce = F.binary_cross_entropy_with_logits(logits, regions, reduction="none")
        if valid is None:
            bce = bce.mean()
        else:  # 0 (not NaN) when nothing is annotated
            bce = (bce * valid).sum() / (valid.sum() * self.num_regions).clamp(min=1)
        return BCE_WEIGHT * bce - DICE_WEIGHT * dice.mean()


def build_region_loss(plan: NetworkPlan, batch_dice: bool, num_regions: int,
                      across_ranks: bool = False) -> DeepSupervisionLoss:
    """The training loss of a region dataset: Dice + BCE summed over the deep-supervision outputs."""
    weights = deep_supervision_weights(plan.n_stages - 1)
    return DeepSupervisionLoss(RegionDiceBCELoss(num_regions, batch_dice, across_ranks=across_ranks), weights)


def region_confusion_counts(logits: torch.Tensor, target: torch.Tensor, num_regions: int) -> torch.Tensor:
    """(3, R) float64 TP, FP, FN per region of logits (B, R, *S) thresholded at sigmoid 0.5
    (logit 0) against region targets (B, R[+1], *S); ignored voxels count nowhere."""
    pred = logits[:, :num_regions] > 0
    truth = target[:, :num_regions].bool()
    if target.shape[1] > num_regions:
        valid = target[:, num_regions:] == 0
        pred, truth = pred & valid, truth & valid
    axes = (0, *range(2, pred.ndim))
    tp = (pred & truth).sum(axes)
    return torch.stack([tp, pred.sum(axes) - tp, truth.sum(axes) - tp]).double().cpu()
