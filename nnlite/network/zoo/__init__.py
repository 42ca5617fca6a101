"""The seed report's baselines, written from their papers as builders a configuration names by path.

Each module holds one network and one builder with the built-in U-Net's signature,

    build(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False, **kwargs)

sized by the `NetworkPlan` (stages, strides, kernels, widths) as far as its paper allows:

    nnlite.network.zoo.vnet:build            V-Net, Milletari et al. 2016 (no deep supervision)
    nnlite.network.zoo.cicek_unet:build      3D U-Net, Çiçek et al. 2016 (no deep supervision)
    nnlite.network.zoo.attention_unet:build  Attention U-Net, Oktay et al. 2018 (deep supervision)

Output contract (as `build_unet`): in eval mode one tensor (B, K, *patch); in training with deep
supervision the list of logits at the plan's scales, full resolution first. A network whose paper
has no deep supervision returns the one full-resolution tensor in training too, and the loss then
scores that tensor alone (`DeepSupervisionLoss` takes a tensor as one output). A plan with a
classification head gets one on the encoder's skips (`with_class_head`). The modules import only
nnlite's blocks, so each can be copied out of the package as the start of a network of your own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnlite.network.classifier import ClassificationHead, SegmentAndClass


def class_head(class_classes: int, skip_widths: Sequence[int], region_outputs: bool) -> ClassificationHead | None:
    """The plan's case-classification head on skips of `skip_widths` channels (None without one),
    built on a forked RNG so that the segmentation weights are initialised as without a head."""
    if not class_classes:
        return None
    with torch.random.fork_rng(devices=[]):
        return ClassificationHead(skip_widths, class_classes, region_outputs)


def with_class_head(head: nn.Module | None, skips: list[torch.Tensor],
                    seg: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor] | SegmentAndClass:
    """`seg` as it is without a head, else `SegmentAndClass(seg, (B, K) case-class logits)`."""
    if head is None:
        return seg
    full_resolution = seg[0] if isinstance(seg, list) else seg  # (B, K_seg, *P)
    return SegmentAndClass(seg, head(skips, full_resolution))
