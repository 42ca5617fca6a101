"""V-Net: Milletari, Navab, Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric
Medical Image Segmentation", 3DV 2016 (arXiv:1606.04797), §2 and Fig. 2. Written from the paper.

    plans.json: "network": {"architecture": "nnlite.network.zoo.vnet:build", "kwargs": {"norm": "instance"}}

What the paper specifies, kept here (s = stage, f_s its width, paper 16 · 2^s):

    left  stage 0: x → 1 conv unit (c_in → f_0)            + x replicated to f_0 channels → skip_0
          stage s: down-conv (kernel = stride, f_{s-1} → f_s) + PReLU → d
                   d → convs_in_stage(s) conv units (f_s)  + d                          → skip_s
    right level l: up-conv (kernel = stride, → f_l) + PReLU, concatenated with skip_l → u (2 f_l)
                   u → convs_in_stage(l) conv units (2 f_l) + u
          head:    1×1 conv (2 f_0 → K)

A conv unit is conv (5 on every axis where the plan's kernel is > 1; same padding) → [norm] → PReLU
(one slope per channel, as He et al. 2015). Each stage learns a residual function: its input is
added to the output of its last convolution. Stages have 1, 2, 3, 3, … convolutions (the paper's
figure), and down-sampling is a strided convolution, never pooling. The plan gives the number of
stages, every stride (so an anisotropic plan down-samples (1, 2, 2)) and the widths.

Where this differs from the paper, and why:
- `norm` (kwarg): "instance" (default), "batch" or "none". The paper has no normalisation and
  trains at a learning rate of 1e-4; nnlite's SGD starts at 1e-2, where the unnormalised network
  is far less stable. `"kwargs": {"norm": "none"}` gives the paper's layers (then lower the
  learning rate: `--set training.initial_lr=1e-4`).
- loss: the pipeline's Dice + cross-entropy instead of the paper's Dice loss alone.
- no deep supervision (the paper has none): training returns the one full-resolution tensor too.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.layout import PLANS_FILE
from nnlite.network.blocks import CONV, CONV_TRANSPOSE, INSTANCE_NORM, NORM_EPS, init_he, same_padding
from nnlite.network.zoo import class_head, with_class_head
from nnlite.plans import NetworkPlan

PAPER_KERNEL = 5  # 5×5×5 convolutions (Milletari et al. §2)
MAX_CONVS = 3  # convolutions per stage: 1, 2, 3, 3, … (Fig. 2)
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
NORMS: dict[str, Callable[[int, int], nn.Module]] = {
    "instance": lambda ndim, c: INSTANCE_NORM[ndim](c, eps=NORM_EPS, affine=True),
    "batch": lambda ndim, c: BATCH_NORM[ndim](c),
    "none": lambda ndim, c: nn.Identity(),
}


def vnet_kernel(plan_kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The paper's 5 on every axis the plan convolves over (> 1); 1 stays 1 (an in-plane axis)."""
    return tuple(PAPER_KERNEL if k > 1 else 1 for k in plan_kernel)


def convs_in_stage(stage: int) -> int:
    """1, 2, 3, 3, … convolutions at stage / decoder level 0, 1, 2, 3, …"""
    return min(stage + 1, MAX_CONVS)


class Unit(nn.Module):
    """Conv (or transposed conv) → norm → PReLU. (B, c_in, *S) → (B, c_out, *S / stride) (or · stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, ...], stride: tuple[int, ...], norm: str,
                 transposed: bool = False) -> None:
        super().__init__()
        ndim = len(kernel)
        if transposed:  # kernel = stride: every output voxel comes from exactly one input voxel
            self.conv = CONV_TRANSPOSE[ndim](c_in, c_out, kernel, stride, bias=True)
        else:
            self.conv = CONV[ndim](c_in, c_out, kernel, stride, padding=same_padding(kernel), bias=True)
        self.norm = NORMS[norm](ndim, c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualStage(nn.Module):
    """`n` units (only the first may change the width) plus the stage's input: (B, c_in, *S) → (B, c_out, *S).

    When the width grows (stage 0: the image's c_in channels → f_0) the input is replicated along
    the channels: the paper adds stage 0's one-channel input to 16 channels without saying how, and
    replication needs no weights.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, ...], n: int, norm: str) -> None:
        super().__init__()
        ones = (1,) * len(kernel)
        self.c_in, self.c_out = c_in, c_out
        self.units = nn.Sequential(*(Unit(c_in if i == 0 else c_out, c_out, kernel, ones, norm) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x) + self.widen(x)

    def widen(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, *S) → (B, c_out, *S): x itself, or its channels repeated and cut to c_out."""
        if self.c_in == self.c_out:
            return x
        copies = -(-self.c_out // self.c_in)  # ceil
        return x.repeat(1, copies, *(1,) * (x.ndim - 2))[:, : self.c_out]


class DecoderLevel(nn.Module):
    """below (B, c_below, *S / s), skip (B, f_l, *S) → (B, 2 f_l, *S): up-conv, concat, residual stage."""

    def __init__(self, c_below: int, f: int, stride: tuple[int, ...], kernel: tuple[int, ...], n: int,
                 norm: str) -> None:
        super().__init__()
        self.up = Unit(c_below, f, stride, stride, norm, transposed=True)
        self.stage = ResidualStage(2 * f, 2 * f, kernel, n, norm)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stage(torch.cat((self.up(below), skip), dim=1))  # [up-converted, fine-grained skip]


class VNet(nn.Module):
    """x (B, C_in, *P) → logits (B, K, *P), with or without deep supervision (the paper has none)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int, norm: str,
                 region_outputs: bool = False) -> None:
        super().__init__()
        f, n = plan.features_per_stage, plan.n_stages
        kernels = [vnet_kernel(k) for k in plan.kernel_sizes]
        self.encoder = nn.ModuleList([ResidualStage(in_channels, f[0], kernels[0], convs_in_stage(0), norm)])
        for s in range(1, n):  # strided down-conv, then the stage's residual convolutions
            down = Unit(f[s - 1], f[s], plan.strides[s], plan.strides[s], norm)
            self.encoder.append(nn.Sequential(down, ResidualStage(f[s], f[s], kernels[s], convs_in_stage(s), norm)))
        self.decoder = nn.ModuleList(  # bottom-up: level n-2 (above the bottleneck) … level 0
            DecoderLevel(f[n - 1] if lvl == n - 2 else 2 * f[lvl + 1], f[lvl], plan.strides[lvl + 1],
                         kernels[lvl], convs_in_stage(lvl), norm)
            for lvl in range(n - 2, -1, -1))
        self.head = CONV[plan.ndim](2 * f[0], num_classes, 1, bias=True)  # 1×1×1 conv to K channels
        self.classifier = class_head(plan.class_head, f, region_outputs)
        self.deep_supervision = False  # the trainer may set it; V-Net has one output either way

    def forward(self, x: torch.Tensor) -> Any:
        skips = []
        for stage in self.encoder:
            x = stage(x)  # (B, f_s, *P / cumulative stride)
            skips.append(x)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[-(i + 2)])  # (B, 2 f_l, *size of skip_l)
        return with_class_head(self.classifier, skips, self.head(x))  # (B, K, *P)


def build(plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool = True,
          region_outputs: bool = False, norm: str = "instance") -> VNet:
    """V-Net sized by `plan`, He-initialised. `deep_supervision` is accepted and has no effect: the
    network has one output. `norm`: "instance", "batch" or "none" (the paper's)."""
    if norm not in NORMS:
        raise UserError(f"{PLANS_FILE} network.kwargs", f"V-Net norm '{norm}' is not one of {sorted(NORMS)}")
    if plan.n_stages < 2:
        raise UserError(PLANS_FILE, "a V-Net needs at least 2 stages")
    net = VNet(plan, in_channels, num_classes, norm, region_outputs)
    init_he(net)
    return net
