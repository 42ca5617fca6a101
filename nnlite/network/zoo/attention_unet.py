"""Attention U-Net: Oktay, Schlemper, Le Folgoc, Lee, Heinrich, Misawa, Mori, McDonagh, Hammerla,
Kainz, Glocker, Rueckert, "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
(arXiv:1804.03999), §2, Fig. 1 and 2. Written from the paper, on nnlite's attention gate.

    plans.json: "network": {"architecture": "nnlite.network.zoo.attention_unet:build"}

What the paper specifies, kept here (2D or 3D by the plan; s = level, f_s the plan's width):

    encoder level 0: two conv units (c_in → f_0 → f_0)                                     → x_0
            level s: max-pool (kernel = stride) → two conv units (f_{s-1} → f_s → f_s)     → x_s
    decoder level l: g = the level below (B, f_{l+1}, *S / s), the coarser gating signal
                     x̂_l = x_l · α(x_l, g)                the attention gate on the skip (Fig. 2)
                     [up-sample(g), x̂_l] → two conv units (f_{l+1} + f_l → f_l → f_l)
                     head_l: 1×1 conv (f_l → K)           deep supervision at every decoder scale

A conv unit is conv (the plan's kernel, same padding) → batch norm → ReLU, as in Fig. 1. The gate
is `nnlite.network.blocks.AttentionGate` (additive attention, grid-attention: α computed at g's
resolution and interpolated to x_l's), the same module as the built-in U-Net's
`network.attention_gates`. The up-sampling is linear interpolation by the plan's stride (no
weights). What differs from the built-in gated U-Net: batch norm and ReLU instead of instance norm
and LeakyReLU, max pooling instead of strided convolutions, interpolation instead of transposed
convolutions.

Where this differs from the paper, and why: the gated skip goes straight into the decoder's first
convolution (the paper's gate ends with a 1×1 conv + norm; nnlite's gate leaves it out, see
docs/architectures.md); deep supervision is nnU-Net's (each scale's head scored against labels
down-sampled to it, weights 1/2^i with the lowest set to 0), not a fused output; the loss is the
pipeline's Dice + cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.layout import PLANS_FILE
from nnlite.network.blocks import CONV, LINEAR_MODE, AttentionGate, init_he, same_padding
from nnlite.network.zoo import class_head, with_class_head
from nnlite.plans import NetworkPlan

BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
CONVS_PER_BLOCK = 2  # two 3×3×3 conv + BN + ReLU per scale (Fig. 1)


def conv_block(c_in: int, c_out: int, kernel: tuple[int, ...]) -> nn.Sequential:
    """Two units of conv (same padding) → BatchNorm → ReLU. (B, c_in, *S) → (B, c_out, *S)"""
    ndim, layers = len(kernel), []
    for i in range(CONVS_PER_BLOCK):
        layers += [CONV[ndim](c_in if i == 0 else c_out, c_out, kernel, padding=same_padding(kernel), bias=True),
                   BATCH_NORM[ndim](c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class EncoderLevel(nn.Sequential):
    """[max-pool (kernel = stride)] → conv block. (B, c_in, *S) → (B, f, *S / stride)"""

    def __init__(self, c_in: int, f: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> None:
        pool = [MAX_POOL[len(kernel)](stride, stride)] if any(s > 1 for s in stride) else []
        super().__init__(*pool, conv_block(c_in, f, kernel))


class DecoderLevel(nn.Module):
    """g (B, f_{l+1}, *S / s), skip (B, f_l, *S) → (B, f_l, *S): gate the skip, up-sample g, conv block."""

    def __init__(self, f_below: int, f: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> None:
        super().__init__()
        self.gate = AttentionGate(f, f_below, stride)
        self.convs = conv_block(f_below + f, f, kernel)
        self.mode = LINEAR_MODE[len(kernel)]

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gated = self.gate(skip, below)  # (B, f_l, *S): the skip where the coarser level attends
        up = F.interpolate(below, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.convs(torch.cat((up, gated), dim=1))  # (B, f_{l+1} + f_l, *S) → (B, f_l, *S)


class AttentionUNet(nn.Module):
    """x (B, C_in, *P) → with deep supervision the logits of the n-1 decoder scales, full resolution
    first; without, (B, K, *P). `deep_supervision` and `skip_lowest_head` may be switched at any time
    (the trainer skips the lowest head, whose loss weight is 0)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool,
                 region_outputs: bool = False) -> None:
        super().__init__()
        f = plan.features_per_stage
        inputs = [in_channels, *f[:-1]]
        self.encoder = nn.ModuleList(EncoderLevel(inputs[s], f[s], plan.kernel_sizes[s], plan.strides[s])
                                     for s in range(plan.n_stages))
        levels = range(plan.n_stages - 2, -1, -1)  # bottom-up: n-2 (above the bottleneck) … 0
        self.decoder = nn.ModuleList(DecoderLevel(f[lvl + 1], f[lvl], plan.kernel_sizes[lvl], plan.strides[lvl + 1])
                                     for lvl in levels)
        self.heads = nn.ModuleList(CONV[plan.ndim](f[lvl], num_classes, 1, bias=True) for lvl in levels)
        self.classifier = class_head(plan.class_head, f, region_outputs)
        self.deep_supervision = deep_supervision
        self.skip_lowest_head = False

    def forward(self, x: torch.Tensor) -> Any:
        skips = []
        for level in self.encoder:
            x = level(x)  # (B, f_s, *P / cumulative stride)
            skips.append(x)
        n_heads = self.heads_computed()
        outputs = []
        for i, (level, head) in enumerate(zip(self.decoder, self.heads)):
            x = level(x, skips[-(i + 2)])  # (B, f_l, *size of skip_l)
            if i >= len(self.decoder) - n_heads:
                outputs.append(head(x))  # (B, K, *size of skip_l)
        seg = outputs[::-1] if self.deep_supervision else outputs[-1]  # full resolution first
        return with_class_head(self.classifier, skips, seg)

    def heads_computed(self) -> int:
        """All n-1 heads with deep supervision (one fewer with skip_lowest_head), else the last only."""
        if not self.deep_supervision:
            return 1
        n = len(self.heads)
        return n - 1 if self.skip_lowest_head and n > 1 else n


def build(plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool = True,
          region_outputs: bool = False) -> AttentionUNet:
    """Oktay et al.'s Attention U-Net sized by `plan` (2D or 3D), He-initialised."""
    if plan.n_stages < 2:
        raise UserError(PLANS_FILE, "an Attention U-Net needs at least 2 levels")
    net = AttentionUNet(plan, in_channels, num_classes, deep_supervision, region_outputs)
    init_he(net)
    return net
