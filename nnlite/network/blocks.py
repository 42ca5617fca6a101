"""Building blocks of the U-Net: the conv → norm → nonlinearity unit, stacks of units, residual
blocks, and the additive attention gate of a skip connection.

Every block works in 2D and 3D; the number of spatial axes picks the layer types from the
tables below (short names, never import paths). Shapes are written for 3D, (B, C, Z, Y, X);
2D drops Z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnlite.network.geometry import gate_channels

NORM_EPS = 1e-5  # InstanceNorm epsilon of nnU-Net (affine, no running statistics)
LEAKY_SLOPE = 1e-2  # LeakyReLU negative slope (the torch default that nnU-Net relies on)
HE_INIT_A = 1e-2  # `a` of kaiming_normal_ for every (transposed) conv weight, matching the slope

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
AVG_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}
LINEAR_MODE = {2: "bilinear", 3: "trilinear"}  # how an attention map is upsampled to its skip


def same_padding(kernel: tuple[int, ...]) -> tuple[int, ...]:
    """Padding that keeps the size for odd kernels (a stride then divides it exactly)."""
    return tuple((k - 1) // 2 for k in kernel)


class ConvUnit(nn.Module):
    """Conv (may be strided) → InstanceNorm → LeakyReLU: the basic unit of the whole network.

    (B, c_in, *S) → (B, c_out, *S / stride)
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...],
        nonlin: bool = True,
    ) -> None:
        super().__init__()
        ndim = len(kernel)
        self.conv = CONV[ndim](c_in, c_out, kernel, stride, padding=same_padding(kernel), bias=True)
        self.norm = INSTANCE_NORM[ndim](c_out, eps=NORM_EPS, affine=True)
        # inplace: the norm output is not needed for backward, the activation output is.
        self.nonlin = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if nonlin else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


class ConvStack(nn.Sequential):
    """`n` ConvUnits; only the first carries the stride (strided-conv downsampling, no pooling).

    (B, c_in, *S) → (B, c_out, *S / stride)
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, ...], stride: tuple[int, ...], n: int
    ) -> None:
        ones = (1,) * len(kernel)
        units = [ConvUnit(c_in, c_out, kernel, stride)]
        units += [ConvUnit(c_out, c_out, kernel, ones) for _ in range(n - 1)]
        super().__init__(*units)


class SkipPool(nn.Module):
    """AvgPool(kernel = stride = `stride`) of a residual skip, in the input's precision.

    Computed as a mean over (size / stride, stride) blocks, which saves nothing for backward; an
    AvgPool would, and under CPU autocast (whose avg_pool3d runs in fp32 only) it would keep an fp32
    copy of the block input. Sizes not divisible by the stride fall back to AvgPool's floor.
    (B, C, *S) → (B, C, *S / stride)
    """

    def __init__(self, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(n % s for n, s in zip(x.shape[2:], self.stride)):
            return AVG_POOL[len(self.stride)](x, self.stride, self.stride)
        blocks = list(x.shape[:2])
        for n, s in zip(x.shape[2:], self.stride):
            blocks += [n // s, s]  # (B, C, Z / sz, sz, Y / sy, sy, X / sx, sx)
        with torch.autocast(x.device.type, enabled=False):
            return x.reshape(blocks).mean(dim=tuple(range(3, len(blocks), 2)))


class ResidualBlock(nn.Module):
    """ResNet-D basic block: two units (the second without nonlinearity) plus a skip, then LeakyReLU.

    The skip is the identity, or AvgPool(stride) when strided, followed by a bias-free 1×1 conv +
    InstanceNorm when the channels change. (B, c_in, *S) → (B, c_out, *S / stride)
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        super().__init__()
        ndim = len(kernel)
        self.conv1 = ConvUnit(c_in, c_out, kernel, stride)
        self.conv2 = ConvUnit(c_out, c_out, kernel, (1,) * ndim, nonlin=False)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(SkipPool(stride))
        if c_in != c_out:
            skip.append(CONV[ndim](c_in, c_out, 1, bias=False))
            skip.append(INSTANCE_NORM[ndim](c_out, eps=NORM_EPS, affine=True))
        self.skip = nn.Sequential(*skip)  # empty Sequential = identity
        self.nonlin = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualStack(nn.Sequential):
    """`n` ResidualBlocks; only the first carries the stride and changes the channels."""

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, ...], stride: tuple[int, ...], n: int
    ) -> None:
        ones = (1,) * len(kernel)
        blocks = [ResidualBlock(c_in, c_out, kernel, stride)]
        blocks += [ResidualBlock(c_out, c_out, kernel, ones) for _ in range(n - 1)]
        super().__init__(*blocks)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, "Attention U-Net") on one skip connection.

    The coarser decoder signal `gate` decides, per voxel, how much of the skip passes:
        θ = Conv(kernel = stride = s, no bias)(skip)     (B, F_int, *S / s)
        φ = Conv1×1(gate)                                (B, F_int, *S / s)
        α = sigmoid(Conv1×1(ReLU(θ + φ)))                (B, 1, *S / s)
        out = skip · upsample_linear(α)                  (B, c_skip, *S)
    skip (B, c_skip, *S), gate (B, c_gate, *S / s) with S divisible by s (the plan's patch is).
    """

    def __init__(self, c_skip: int, c_gate: int, stride: tuple[int, ...]) -> None:
        super().__init__()
        ndim, inner = len(stride), gate_channels(c_skip)
        self.theta = CONV[ndim](c_skip, inner, stride, stride, bias=False)
        self.phi = CONV[ndim](c_gate, inner, 1, bias=True)
        self.psi = CONV[ndim](inner, 1, 1, bias=True)
        self.mode = LINEAR_MODE[ndim]

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        attention = torch.relu_(self.theta(skip) + self.phi(gate))  # (B, F_int, *S / s)
        alpha = torch.sigmoid(self.psi(attention))  # (B, 1, *S / s), in (0, 1)
        alpha = F.interpolate(alpha, size=skip.shape[2:], mode=self.mode, align_corners=False)
        # autocast may upsample in fp32; keep the gated skip in the skip's precision
        return skip * alpha.to(skip.dtype)  # (B, c_skip, *S)


def init_he(module: nn.Module) -> None:
    """He init (a = 0.01) of every (transposed) conv weight, zero biases; norms keep weight 1, bias 0.

    Residual blocks then zero their last norm so that each residual branch starts as the identity.
    """
    convs = (*CONV.values(), *CONV_TRANSPOSE.values())
    for m in module.modules():
        if isinstance(m, convs):
            nn.init.kaiming_normal_(m.weight, a=HE_INIT_A)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ResidualBlock):
            nn.init.zeros_(m.conv2.norm.weight)
            nn.init.zeros_(m.conv2.norm.bias)
