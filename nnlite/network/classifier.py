"""The case-level classification head and its loss, trained jointly with the U-Net.

A `NetworkPlan` with `class_head = K > 0` gets a `ClassificationHead` on the bottleneck:

    bottleneck (B, f, *S) → global average and global max pooling → (B, 2f)
                          → Linear(2f, h) → LeakyReLU → Linear(h, K) → logits (B, K)

Average pooling says what the patch holds overall, max pooling whether some small region (a
lesion) has a feature at all; with patches that are mostly background the max carries the lesion.
Such a network returns `SegmentAndClass(seg, class_logits)`, where `seg` is exactly what the same
network without a head returns; a network without a head returns what it always did.

The class loss is cross-entropy with class-balanced weights (w_k = N / (K · n_k) over the
training cases, so a rare class counts as much as a common one), added to Dice + CE with the
weight `training.class_loss_weight` of the training config (`joint_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from nnlite.network.blocks import LEAKY_SLOPE

HIDDEN_MIN = 32  # hidden width of the head's MLP: max(HIDDEN_MIN, bottleneck width)
# No dropout: its masks would draw from the global torch RNG, which the loader's iterators also
# draw from when they are created, so a resumed run would see other masks than a straight one.


class SegmentAndClass(NamedTuple):
    """A head-on network's output: the segmentation output (tensor or deep-supervision list) and
    the case-class logits (B, K)."""

    seg: torch.Tensor | list[torch.Tensor]
    class_logits: torch.Tensor


class ClassificationHead(nn.Module):
    """(B, f, *S) bottleneck features (2D or 3D) → (B, K) case-class logits."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        hidden = max(HIDDEN_MIN, features)
        self.mlp = nn.Sequential(
            nn.Linear(2 * features, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(hidden, num_classes),
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        flat = bottleneck.flatten(2)  # (B, f, S_total)
        pooled = torch.cat((flat.mean(2), flat.amax(2)), dim=1)  # (B, 2f)
        return self.mlp(pooled)


def segmentation_output(outputs: torch.Tensor | list[torch.Tensor] | SegmentAndClass
                        ) -> torch.Tensor | list[torch.Tensor]:
    """The segmentation part of a network's output, with or without a head."""
    return outputs.seg if isinstance(outputs, SegmentAndClass) else outputs


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """(K,) float32 weights N / (K · n_k); a class without training cases gets weight 0."""
    counts_t = torch.tensor(counts, dtype=torch.float64)
    total, k = counts_t.sum(), len(counts)
    weights = torch.where(counts_t > 0, total / (k * counts_t.clamp_min(1)), torch.zeros_like(counts_t))
    return weights.float()


def class_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy of logits (B, K) against class indices (B,), in float32."""
    return nn.functional.cross_entropy(logits.float(), target, weight=weights.to(logits.device))


@dataclass(frozen=True)
class ClassTargets:
    """What the trainer needs for the class loss: each case's class, the weights, the loss weight."""

    of_case: dict[str, int]
    weights: torch.Tensor  # (K,) balanced_class_weights of the training cases
    loss_weight: float  # relative to the segmentation loss

    def targets(self, cases: Sequence[str], device: torch.device) -> torch.Tensor:
        """(B,) int64 class of each patch's case."""
        return torch.tensor([self.of_case[c] for c in cases], dtype=torch.long, device=device)


def joint_loss(seg_loss: nn.Module, outputs: torch.Tensor | list[torch.Tensor] | SegmentAndClass,
               targets: list[torch.Tensor], cases: Sequence[str], classes: ClassTargets | None
               ) -> torch.Tensor:
    """Segmentation loss, plus loss_weight · class loss when the network has a head.

    Without a head this is exactly `seg_loss(outputs, targets)` (same operations, same bits).
    """
    if not isinstance(outputs, SegmentAndClass) or classes is None:
        return seg_loss(outputs, targets)
    target = classes.targets(cases, outputs.class_logits.device)
    return seg_loss(outputs.seg, targets) + classes.loss_weight * class_loss(
        outputs.class_logits, target, classes.weights)
