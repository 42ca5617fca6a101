"""Building blocks of the U-Net: the conv → norm → nonlinearity unit, stacks of units, residual blocks.

Every block works in 2D and 3D; the number of spatial axes picks the layer types from the
tables below (short names, never import paths). Shapes are written for 3D, (B, C, Z, Y, X);
2D drops Z.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_EPS = 1e-5  # InstanceNorm epsilon of nnU-Net (affine, no running statistics)
LEAKY_SLOPE = 1e-2  # LeakyReLU negative slope (the torch default that nnU-Net relies on)
HE_INIT_A = 1e-2  # `a` of kaiming_normal_ for every (transposed) conv weight, matching the slope

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}


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
            skip.append(AVG_POOL[ndim](stride, stride))
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
