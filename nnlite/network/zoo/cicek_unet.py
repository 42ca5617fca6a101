"""3D U-Net: Çiçek, Abdulkadir, Lienkamp, Brox, Ronneberger, "3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation", MICCAI 2016 (arXiv:1606.06650), §2 and Fig. 2. Written from
the paper.

    plans.json: "network": {"architecture": "nnlite.network.zoo.cicek_unet:build"}

What the paper specifies, kept here (level s, f_s the plan's width; the paper's 32, 64, 128, 256
are nnU-Net's first four widths, so a 4-stage plan gives exactly the paper's channels):

    analysis  level 0: conv unit (c_in → f_0), conv unit (f_0 → 2 f_0)                    → skip_0
              level s: max-pool (kernel = stride) → conv unit (2 f_{s-1} → f_s) → (f_s → 2 f_s) → skip_s
    synthesis level l: up-conv (kernel = stride, 2 f_{l+1} → 2 f_{l+1} channels), concatenated
                       with skip_l → conv unit (→ 2 f_l) → conv unit (2 f_l → 2 f_l)
              head:    1×1×1 conv (2 f_0 → K)

A conv unit is a 3×3×3 convolution → batch normalisation → ReLU ("batch normalization before each
ReLU"); each level doubles the channels already before the max pooling, to avoid bottlenecks. The
plan gives the number of levels (the paper: 4), every pooling stride (the paper: 2×2×2; an
anisotropic plan pools (1, 2, 2)) and every kernel (the paper: 3×3×3; a plan's 1 keeps an axis
in-plane). In 2D the same rules give a 2D U-Net with batch norm.

Where this differs from the paper, and why:
- same padding: the paper's convolutions are unpadded, so its output (44×44×28) is smaller than
  its input (132×132×116); the pipeline's sliding window and loss want logits for the whole patch.
- loss: the pipeline's Dice + cross-entropy on dense labels instead of the weighted softmax on
  sparse annotations.
- no deep supervision (the paper has none): training returns the one full-resolution tensor too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.layout import PLANS_FILE
from nnlite.network.blocks import CONV, CONV_TRANSPOSE, init_he, same_padding
from nnlite.network.zoo import class_head, with_class_head
from nnlite.plans import NetworkPlan

BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class ConvBNReLU(nn.Sequential):
    """Conv (same padding) → BatchNorm → ReLU. (B, c_in, *S) → (B, c_out, *S)"""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, ...]) -> None:
        ndim = len(kernel)
        super().__init__(CONV[ndim](c_in, c_out, kernel, padding=same_padding(kernel), bias=True),
                         BATCH_NORM[ndim](c_out), nn.ReLU(inplace=True))


class AnalysisLevel(nn.Sequential):
    """[max-pool (kernel = stride)] → two conv units, the first to `f`, the second doubling to 2 f.

    (B, c_in, *S) → (B, 2 f, *S / stride)
    """

    def __init__(self, c_in: int, f: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> None:
        pool = [MAX_POOL[len(kernel)](stride, stride)] if any(s > 1 for s in stride) else []
        super().__init__(*pool, ConvBNReLU(c_in, f, kernel), ConvBNReLU(f, 2 * f, kernel))


class SynthesisLevel(nn.Module):
    """below (B, c_below, *S / s), skip (B, c_skip, *S) → (B, c_out, *S)."""

    def __init__(self, c_below: int, c_skip: int, c_out: int, kernel: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        super().__init__()
        self.up = CONV_TRANSPOSE[len(kernel)](c_below, c_below, stride, stride, bias=True)  # keeps the channels
        self.convs = nn.Sequential(ConvBNReLU(c_below + c_skip, c_out, kernel), ConvBNReLU(c_out, c_out, kernel))

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.up(below), skip), dim=1))  # [up-converted, skip]


class CicekUNet(nn.Module):
    """x (B, C_in, *P) → logits (B, K, *P), with or without deep supervision (the paper has none)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int, region_outputs: bool = False) -> None:
        super().__init__()
        widths = [2 * f for f in plan.features_per_stage]  # what level s hands on: 2 f_s channels
        inputs = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            AnalysisLevel(inputs[s], plan.features_per_stage[s], plan.kernel_sizes[s], plan.strides[s])
            for s in range(plan.n_stages))
        levels = range(plan.n_stages - 2, -1, -1)  # bottom-up: n-2 (above the bottleneck) … 0
        self.decoder = nn.ModuleList(
            SynthesisLevel(widths[lvl + 1], widths[lvl], widths[lvl], plan.kernel_sizes[lvl], plan.strides[lvl + 1])
            for lvl in levels)
        self.head = CONV[plan.ndim](widths[0], num_classes, 1, bias=True)  # 1×1×1 conv to K channels
        self.classifier = class_head(plan.class_head, widths, region_outputs)
        self.deep_supervision = False  # the trainer may set it; the network has one output either way

    def forward(self, x: torch.Tensor) -> Any:
        skips = []
        for level in self.encoder:
            x = level(x)  # (B, 2 f_s, *P / cumulative stride)
            skips.append(x)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[-(i + 2)])  # (B, 2 f_l, *size of skip_l)
        return with_class_head(self.classifier, skips, self.head(x))  # (B, K, *P)


def build(plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool = True,
          region_outputs: bool = False) -> CicekUNet:
    """Çiçek et al.'s 3D U-Net sized by `plan`, He-initialised. `deep_supervision` is accepted and
    has no effect: the network has one output."""
    if plan.n_stages < 2:
        raise UserError(PLANS_FILE, "a 3D U-Net needs at least 2 levels")
    net = CicekUNet(plan, in_channels, num_classes, region_outputs)
    init_he(net)
    return net
