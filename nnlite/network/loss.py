"""Cross-entropy + soft Dice (nnU-Net's DC_and_CE_loss) and deep supervision.

The loss follows the reference exactly: loss = CE − mean foreground soft Dice, so it lies in
[−1, ∞) and logged values are often negative (a perfect prediction scores ≈ −1).
Targets are integer label maps (B, 1, *S) in [0, K). The loader maps −1 (outside the image,
`nnlite.data.cropping.OUTSIDE_LABEL`) to 0 as the reference does; a −1 reaching the loss counts as
background too, or, with `mask_outside=True`, in neither term. Voxels with
the optional ignore label count in neither term.

Deep supervision: the network returns logits at the scales `deep_supervision_scales(plan)`
(full resolution first); the targets are downsampled to the same scales by `downsample_seg`
(nearest-exact), and the per-scale losses are summed with `deep_supervision_weights`.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nnlite.data.cropping import OUTSIDE_LABEL
from nnlite.plans import NetworkPlan

DICE_SMOOTH = 1e-5  # added to numerator and denominator of the soft Dice
DICE_MIN_DENOMINATOR = 1e-8  # lower clip of the Dice denominator (the reference's value)
CE_WEIGHT = 1.0  # weight of the cross-entropy term
DICE_WEIGHT = 1.0  # weight of the Dice term
CE_SKIP_INDEX = -100  # target value F.cross_entropy skips (its default ignore_index)

SegArray = TypeVar("SegArray", torch.Tensor, np.ndarray)


class AllGatherGrad(torch.autograd.Function):
    """all_gather that passes gradients back (the reference's AllGatherGrad).

    Forward: (…) on every rank → (world, …), rank r's tensor at index r. Backward: the incoming
    gradients are summed over ranks and each rank keeps its own slice. That sum is what makes DDP's
    gradient *average* come out right: every rank's loss depends on every rank's statistics.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def sum_dice_statistics_across_ranks(stats: torch.Tensor) -> torch.Tensor:
    """Sum per-class Dice statistics (e.g. stacked intersect / sum_pred / sum_gt) over the DDP ranks,
    with gradient; unchanged without an initialised process group of more than one rank.

    Batch Dice under DDP needs this: each rank holds B/N samples, and the Dice of the global batch
    is the ratio of the global sums, not a mean of per-rank ratios.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    return AllGatherGrad.apply(stats).sum(0)


def soft_dice_per_class(
    probs: torch.Tensor,
    target: torch.Tensor,
    batch_dice: bool,
    valid: torch.Tensor | None = None,
    smooth: float = DICE_SMOOTH,
    across_ranks: bool = False,
) -> torch.Tensor:
    """Soft Dice of every foreground class.

    probs (B, K, *S) softmax output; target (B, 1, *S) int64 labels in [0, K); valid (B, 1, *S) bool or
    None (all voxels count). Returns (K-1,) with batch Dice (sums over the batch too), else (B, K-1).
    With `across_ranks` and batch Dice the sums also run over the batches of every DDP rank.
    """
    onehot = torch.zeros_like(probs).scatter_(1, target, 1)[:, 1:]
    return soft_dice(probs[:, 1:], onehot, batch_dice, valid, smooth, across_ranks)  # background excluded


def soft_dice(probs: torch.Tensor, target: torch.Tensor, batch_dice: bool, valid: torch.Tensor | None = None,
              smooth: float = DICE_SMOOTH, across_ranks: bool = False) -> torch.Tensor:
    """Soft Dice per channel of probabilities (B, C, *S) against 0/1 targets (B, C, *S) of the same
    dtype; valid (B, 1, *S) bool or None. Returns (C,) with batch Dice, else (B, C); `across_ranks`
    (with batch Dice) sums the statistics over every DDP rank's batch."""
    pred = probs
    if valid is not None:
        target = target * valid  # excluded voxels belong to no class ...
        pred = probs * valid  # ... and their predictions do not count
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0, *axes)
    # fp32 sums: a bf16/fp16 sum over a whole patch would keep only ~3 significant digits.
    intersect = (probs * target).sum(axes, dtype=torch.float32)
    sum_pred = pred.sum(axes, dtype=torch.float32)
    sum_gt = target.sum(axes, dtype=torch.float32)
    if batch_dice and across_ranks:
        intersect, sum_pred, sum_gt = sum_dice_statistics_across_ranks(torch.stack([intersect, sum_pred, sum_gt]))
    return (2 * intersect + smooth) / torch.clamp(sum_gt + sum_pred + smooth, min=DICE_MIN_DENOMINATOR)


class DiceCELoss(nn.Module):
    """CE + soft Dice on one output: (B, K, *S) logits, (B, 1, *S) int labels → scalar.

    Voxels labelled `ignore_label` count in neither term. Voxels labelled OUTSIDE_LABEL (-1) count as
    background, as after the reference's loader, or, with `mask_outside`, in neither term.
    `across_ranks`: under DDP, batch Dice sums its statistics over every rank's batch.
    """

    def __init__(
        self,
        batch_dice: bool,
        ignore_label: int | None = None,
        mask_outside: bool = False,
        smooth: float = DICE_SMOOTH,
        across_ranks: bool = False,
    ) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.across_ranks = across_ranks
        self.ignore_label = ignore_label
        self.mask_outside = mask_outside
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # softmax and CE in fp32 (CPU autocast would keep softmax in bf16)
        target = target.long()
        if self.ignore_label is None and not self.mask_outside:
            target = target.clamp(min=0)  # the fast, unmasked path of the reference
            ce = F.cross_entropy(logits, target[:, 0])
            dice = soft_dice_per_class(torch.softmax(logits, 1), target, self.batch_dice, None, self.smooth,
                                       self.across_ranks)
            return CE_WEIGHT * ce - DICE_WEIGHT * dice.mean()
        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_label is not None:
            valid &= target != self.ignore_label
        if self.mask_outside:
            valid &= target != OUTSIDE_LABEL
        target = torch.where(valid, target, 0).clamp(min=0)
        # CE averaged over counted voxels; 0 (not NaN) when there are none, without a host sync.
        ce_target = target[:, 0].masked_fill(~valid[:, 0], CE_SKIP_INDEX)
        ce = F.cross_entropy(logits, ce_target, ignore_index=CE_SKIP_INDEX, reduction="sum")
        ce = ce / valid.sum().clamp(min=1)
        dice = soft_dice_per_class(torch.softmax(logits, 1), target, self.batch_dice, valid, self.smooth,
                                   self.across_ranks)
        return CE_WEIGHT * ce - DICE_WEIGHT * dice.mean()


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """1/2^i per output (full res first), the lowest resolution set to 0, normalised to sum 1.

    With a single output (2-stage network) the reference would divide by 0; that output gets 1.
    """
    if n_outputs == 1:
        return [1.0]
    weights = [1 / 2**i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def deep_supervision_scales(plan: NetworkPlan) -> list[tuple[float, ...]]:
    """Scale of every deep-supervision output relative to the patch: 1 / cumulative stride per axis.

    Full resolution first, n_stages - 1 entries (the bottleneck has no output).
    """
    cumulative = [1] * plan.ndim
    scales = []
    for stride in plan.strides[:-1]:
        cumulative = [c * s for c, s in zip(cumulative, stride)]
        scales.append(tuple(1.0 / c for c in cumulative))
    return scales


def downsample_seg(seg: SegArray, scales: Sequence[Sequence[float]]) -> list[SegArray]:
    """Nearest-exact downsampling of a label map to each scale (tensor or array, (..., *S)).

    The spatial axes are the last len(scale). When the factor 1/scale divides the size (always, for
    a patch divisible by the total stride) this is a strided slice picking voxel f·i + f//2, which
    is what F.interpolate(mode="nearest-exact") picks, without converting labels to float.
    """
    out = []
    for scale in scales:
        spatial = seg.shape[-len(scale):]
        factors = [round(1 / s) for s in scale]
        if all(abs(f * s - 1) < 1e-6 and n % f == 0 for f, s, n in zip(factors, scale, spatial)):
            index = (Ellipsis, *(slice(f // 2, None, f) for f in factors))
            low = seg[index]
            out.append(low.contiguous() if isinstance(low, torch.Tensor) else np.ascontiguousarray(low))
        else:
            out.append(_interpolate_nearest_exact(seg, [round(n * s) for n, s in zip(spatial, scale)]))
    return out


def _interpolate_nearest_exact(seg: SegArray, size: list[int]) -> SegArray:
    """Fallback for sizes the factor does not divide: F.interpolate on a (1, N, *S) float view."""
    tensor = torch.as_tensor(seg)
    lead = tensor.shape[: tensor.ndim - len(size)]
    flat = tensor.reshape(1, -1, *tensor.shape[-len(size):]).float()
    low = F.interpolate(flat, size=size, mode="nearest-exact").to(tensor.dtype).reshape(*lead, *size)
    return low if isinstance(seg, torch.Tensor) else low.numpy()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of `loss` over the deep-supervision outputs; outputs with weight 0 are skipped.

    outputs: list of logits (full res first) or one tensor; targets: list of label maps at the same
    scales (or one tensor). The outputs list may be shorter than the weights when the trailing
    weights are 0 (the network can skip computing its lowest head).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets if isinstance(targets, torch.Tensor) else targets[0])
        total = None
        for i, weight in enumerate(self.weights):
            if weight == 0:
                continue
            if i >= len(outputs) or i >= len(targets):
                raise ValueError(f"deep-supervision output {i} has weight {weight} but is missing")
            term = weight * self.loss(outputs[i], targets[i])
            total = term if total is None else total + term
        if total is None:
            raise ValueError("all deep-supervision weights are 0")
        return total


def build_loss(
    plan: NetworkPlan, batch_dice: bool, ignore_label: int | None = None, mask_outside: bool = False,
    across_ranks: bool = False,
) -> DeepSupervisionLoss:
    """The training loss of a plan: Dice + CE summed over the deep-supervision outputs.

    `across_ranks` (training under DDP): batch Dice over the global batch of every rank.
    """
    weights = deep_supervision_weights(plan.n_stages - 1)
    return DeepSupervisionLoss(DiceCELoss(batch_dice, ignore_label, mask_outside, across_ranks=across_ranks),
                               weights)
