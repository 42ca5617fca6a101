"""The case-level classification head and its loss, trained jointly with the U-Net.

A `NetworkPlan` with `class_head = K > 0` gets a `ClassificationHead` on the encoder's deepest
stages (the bottleneck and the POOLED_STAGES - 1 stages above it):

    stage s features (B, f_s, *S_s), foreground w (B, 1, *P) → w_s = mean of w over each S_s cell
    → pooled_s = Σ w_s · features / (Σ w_s + ε)  (B, f_s)      for each pooled stage
    → concatenated (B, Σ f_s) → Linear → LeakyReLU → Linear (zero-initialised) → logits (B, K)

The weights w are the network's own predicted foreground probability (1 − p(background); region
networks: the largest region sigmoid), detached: the pooling reads the lesion's features and
nothing else, and the class loss never moves the segmentation through them. Plain global pooling
of the bottleneck (mean + max) learned nothing within the demo's 250 iterations (validation AUC
0.44 on fold 0, class loss stuck at ln 2); pooling over the predicted lesion did
(docs/classification.md has the measurements). The last layer starts at zero, so the head starts
at the class prior instead of sending random confident logits into the encoder.

Such a network returns `SegmentAndClass(seg, class_logits)`, where `seg` is exactly what the same
network without a head returns; a network without a head returns what it always did.

The class loss is a class-balanced cross-entropy, (1/B) Σ_i w[y_i] · CE_i over the B samples of
a batch, with w_k = N / (K · n_k) over the N training cases (n_k of class k, K classes present):
drawing a case at random, every class carries 1/K of the weight and the mean weight is 1, at any
batch size and on every DDP rank (`class_loss`). It is added to Dice + CE with the weight
`training.class_loss_weight` of the training config (`joint_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from nnlite.network.blocks import LEAKY_SLOPE

HIDDEN_MIN = 32  # hidden width of the head's MLP: max(HIDDEN_MIN, bottleneck width)
POOLED_STAGES = 3  # the bottleneck and the two stages above it
POOL_EPSILON = 1e-3  # added to a stage's summed weights: a patch without lesion pools to ≈ 0
# No dropout: its masks would draw from the global torch RNG, which the loader's iterators also
# draw from when they are created, so a resumed run would see other masks than a straight one.


class SegmentAndClass(NamedTuple):
    """A head-on network's output: the segmentation output (tensor or deep-supervision list) and
    the case-class logits (B, K)."""

    seg: torch.Tensor | list[torch.Tensor]
    class_logits: torch.Tensor


class ClassificationHead(nn.Module):
    """Encoder skips (high → low resolution) + segmentation logits → (B, K) case-class logits."""

    def __init__(self, features_per_stage: Sequence[int], num_classes: int, region_outputs: bool = False) -> None:
        super().__init__()
        self.pooled_stages = min(POOLED_STAGES, len(features_per_stage))
        features = sum(features_per_stage[-self.pooled_stages:])
        hidden = max(HIDDEN_MIN, features_per_stage[-1])
        self.region_outputs = region_outputs
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(hidden, num_classes),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, skips: Sequence[torch.Tensor], seg_logits: torch.Tensor) -> torch.Tensor:
        weights = self.foreground(seg_logits.detach().float())  # (B, 1, *P)
        pooled = [lesion_pooled(stage, weights) for stage in skips[-self.pooled_stages:]]
        return self.mlp(torch.cat(pooled, dim=1))  # (B, Σ f_s) → (B, K)

    def foreground(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """(B, K_seg, *P) logits → (B, 1, *P) predicted foreground probability."""
        if self.region_outputs:
            return torch.sigmoid(seg_logits).amax(1, keepdim=True)
        return 1 - torch.softmax(seg_logits, dim=1)[:, :1]


def lesion_pooled(features: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(B, f, *S) features averaged with the (B, 1, *P) foreground, shrunk to S, as weights → (B, f)."""
    pool = nn.functional.adaptive_avg_pool3d if features.ndim == 5 else nn.functional.adaptive_avg_pool2d
    weights = pool(foreground, features.shape[2:]).flatten(2)  # (B, 1, S_total)
    flat = features.float().flatten(2)  # (B, f, S_total)
    return (flat * weights).sum(2) / (weights.sum(2) + POOL_EPSILON)


def split_output(outputs: torch.Tensor | list[torch.Tensor] | tuple
                 ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
    """(segmentation output, class logits or None). A head-on network returns a 2-tuple (a
    `SegmentAndClass`; DistributedDataParallel hands it back as a plain tuple), a head-off one a
    tensor or a deep-supervision list, never a tuple."""
    if isinstance(outputs, tuple):
        return outputs[0], outputs[1]
    return outputs, None


def segmentation_output(outputs: torch.Tensor | list[torch.Tensor] | tuple) -> torch.Tensor | list[torch.Tensor]:
    """The segmentation part of a network's output, with or without a head."""
    return split_output(outputs)[0]


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """(K,) float32 weights w_k = N / (K' · n_k) from the training cases' class counts n_k (N cases,
    K' classes that occur), so for a case drawn at random E[w] = Σ_k (n_k / N) · w_k = 1 and each
    class that occurs carries 1/K' of the total weight.

    A class without training cases gets weight 1, the mean weight: it never occurs in training, and
    a validation patch of that class counts as an average one (N / (K' · 0) would be inf, and 0
    would silence it).
    """
    counts_t = torch.tensor(counts, dtype=torch.float64)
    present = counts_t > 0
    total, k = counts_t.sum(), int(present.sum())
    weights = torch.where(present, total / (k * counts_t.clamp_min(1)), torch.ones_like(counts_t))
    return weights.float()


def class_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy of logits (B, K) against class indices (B,), in float32:
    (1/B) Σ_i weights[y_i] · CE(logits_i, y_i).

    Averaged over the B samples, not over their summed weights as `F.cross_entropy(weight=…)` does:
    that mean cancels the weights of a batch of one (or a DDP rank's one sample) and shrinks them in
    a mixed batch (80/20 split, batch 2: the rare class got ~30 % of the weight, not 50 %).
    DDP averages the ranks' gradients, so the classes stay balanced across ranks too.
    """
    per_sample = nn.functional.cross_entropy(logits.float(), target, reduction="none")  # (B,)
    return (weights.to(logits.device)[target] * per_sample).mean()


@dataclass(frozen=True)
class ClassTargets:
    """What the trainer needs for the class loss: each case's class, the weights, the loss weight."""

    of_case: dict[str, int]
    weights: torch.Tensor  # (K,) balanced_class_weights of the training cases (mean 1 over them)
    loss_weight: float  # relative to the segmentation loss

    def targets(self, cases: Sequence[str], device: torch.device) -> torch.Tensor:
        """(B,) int64 class of each patch's case."""
        return torch.tensor([self.of_case[c] for c in cases], dtype=torch.long, device=device)


def joint_loss(seg_loss: nn.Module, outputs: torch.Tensor | list[torch.Tensor] | tuple,
               targets: list[torch.Tensor], cases: Sequence[str], classes: ClassTargets | None,
               parts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Segmentation loss, plus loss_weight · class loss when the network has a head (the class loss
    before loss_weight, detached, goes to `parts["class"]` when `parts` is given).

    Without a head this is exactly `seg_loss(outputs, targets)` (same operations, same bits).
    """
    seg, class_logits = split_output(outputs)
    if class_logits is None or classes is None:
        return seg_loss(seg, targets)
    target = classes.targets(cases, class_logits.device)
    head_loss = class_loss(class_logits, target, classes.weights)
    if parts is not None:
        parts["class"] = head_loss.detach()
    return seg_loss(seg, targets) + classes.loss_weight * head_loss
