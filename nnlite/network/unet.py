"""The dynamic U-Net of nnU-Net, built from a `NetworkPlan`. Read top to bottom: encoder, decoder, UNet.

For a plan with strides s_0 = 1, s_1, ..., s_{n-1} and widths f_0 ... f_{n-1}:

    x (B, C_in, *P)
    encoder stage 0: ConvStack(stride 1)   → skip_0 (B, f_0, *P)
    encoder stage 1: ConvStack(stride s_1) → skip_1 (B, f_1, *P / s_1)
    ...
    encoder stage n-1 (bottleneck)         → (B, f_{n-1}, *P / (s_1 ... s_{n-1}))
    decoder level n-2 ... 0: ConvTranspose(kernel = stride = s_{l+1}) → concat [up, skip_l]
                             → ConvStack(2 f_l → f_l) → 1×1 head (B, num_classes, *size of skip_l)

With `attention_gates` each skip_l is first multiplied by an attention map computed from skip_l and
the (not yet upsampled) input of its level (`blocks.AttentionGate`). With the residual encoder
(`encoder: residual`) a stem unit precedes stage 0 and each stage is `blocks_per_stage[s]`
residual blocks. Module names (what a state dict holds), s = stage, b = block, i = bottom-up index
of the decoder level (0 = just above the bottleneck, level n-2):

    encoder.stages.<s>.<unit>.{conv,norm}              plain: ConvStack units
    encoder.stem.{conv,norm}                           residual: the stem unit
    encoder.stages.<s>.<b>.conv{1,2}.{conv,norm}       residual: the two units of block b
    encoder.stages.<s>.<b>.skip.<k>                    residual: [AvgPool], 1×1 conv, norm (when needed)
    decoder.levels.<i>.up / .convs.<unit>.{conv,norm}  transposed conv, decoder units
    decoder.levels.<i>.gate.{theta,phi,psi}            attention gate (with attention_gates)
    decoder.heads.<i>                                  1×1 segmentation head

With deep supervision the forward returns the heads from the highest resolution (level 0, the
full patch) to the lowest (level n-2): n-1 tensors. Without it only the full-resolution logits are
computed and returned as one tensor. Encoder and decoder read only the plan, never each other.
"""

from __future__ import annotations

import torch
from torch import nn

from nnlite.common.layout import PLANS_FILE
from nnlite.common.errors import UserError
from nnlite.network.blocks import (CONV, CONV_TRANSPOSE, AttentionGate, ConvStack, ConvUnit, ResidualStack,
                                   init_he)
from nnlite.network.classifier import ClassificationHead, SegmentAndClass
from nnlite.plans import NetworkPlan


class PlainEncoder(nn.Module):
    """One ConvStack per stage (PlainConvUNet). (B, C_in, *P) → list of n_stages skips, high → low res."""

    def __init__(self, plan: NetworkPlan, in_channels: int) -> None:
        super().__init__()
        f = plan.features_per_stage
        widths = (in_channels, *f)
        self.stages = nn.ModuleList(
            ConvStack(widths[s], f[s], plan.kernel_sizes[s], plan.strides[s], plan.conv_per_stage)
            for s in range(plan.n_stages)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)  # (B, f_s, *P / cumulative stride)
            skips.append(x)
        return skips


class ResidualEncoder(nn.Module):
    """ResEnc: a stem unit, then `blocks_per_stage[s]` residual blocks per stage (the first strided)."""

    def __init__(self, plan: NetworkPlan, in_channels: int) -> None:
        super().__init__()
        f = plan.features_per_stage
        ones = (1,) * plan.ndim
        self.stem = ConvUnit(in_channels, f[0], plan.kernel_sizes[0], ones)  # (B, f_0, *P)
        widths = (f[0], *f)
        self.stages = nn.ModuleList(
            ResidualStack(widths[s], f[s], plan.kernel_sizes[s], plan.strides[s], plan.blocks_per_stage[s])
            for s in range(plan.n_stages)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


ENCODERS = {"plain": PlainEncoder, "residual": ResidualEncoder}


class DecoderLevel(nn.Module):
    """Upsample the level below, concatenate the skip, two conv units; the 1×1 head is separate.

    below (B, f_{l+1}, *S / s_{l+1}), skip (B, f_l, *S) → (B, f_l, *S)
    """

    def __init__(self, plan: NetworkPlan, level: int) -> None:
        super().__init__()
        f, stride = plan.features_per_stage, plan.strides[level + 1]
        self.up = CONV_TRANSPOSE[plan.ndim](f[level + 1], f[level], stride, stride, bias=True)
        ones, n_units = (1,) * plan.ndim, plan.conv_per_stage_decoder
        self.convs = ConvStack(2 * f[level], f[level], plan.kernel_sizes[level], ones, n_units)
        self.gate = AttentionGate(f[level], f[level + 1], stride) if plan.attention_gates else None

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            skip = self.gate(skip, below)  # (B, f_l, *S), attenuated where the coarser level says so
        x = torch.cat((self.up(below), skip), dim=1)  # (B, 2 f_l, *S): [upsampled, skip]
        return self.convs(x)


class Decoder(nn.Module):
    """Decoder levels and their segmentation heads, stored bottom-up (index 0 = lowest level, n-2)."""

    def __init__(self, plan: NetworkPlan, num_classes: int) -> None:
        super().__init__()
        levels = range(plan.n_stages - 2, -1, -1)  # n-2 (just above the bottleneck) ... 0 (full res)
        self.levels = nn.ModuleList(DecoderLevel(plan, lvl) for lvl in levels)
        # Every head is built, even those not computed, so the weights and parameter count never depend
        # on the deep-supervision switch.
        self.heads = nn.ModuleList(
            CONV[plan.ndim](plan.features_per_stage[lvl], num_classes, 1, bias=True) for lvl in levels
        )

    def forward(self, skips: list[torch.Tensor], heads: int) -> list[torch.Tensor]:
        """skips high → low res → logits of the `heads` highest-resolution levels, high → low res."""
        x = skips[-1]  # bottleneck
        first_head = len(self.levels) - heads  # bottom-up index of the lowest level with a head
        outputs = []
        for i, (level, head) in enumerate(zip(self.levels, self.heads)):
            x = level(x, skips[-(i + 2)])
            if i >= first_head:
                outputs.append(head(x))  # (B, num_classes, *size of this level)
        return outputs[::-1]


class UNet(nn.Module):
    """Encoder + decoder. `deep_supervision` and `skip_lowest_head` may be switched at any time.

    x (B, C_in, *P) → with deep supervision a list of n_stages-1 logits (B, K, *P / scale_i), highest
    resolution first; without, the logits (B, K, *P). A plan with `class_head` wraps that output
    with the case-class logits in a `SegmentAndClass`. With `skip_lowest_head` (deep supervision only)
    the lowest-resolution head, whose loss weight is 0, is not computed and the list is one shorter.
    """

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool,
                 region_outputs: bool = False) -> None:
        super().__init__()
        if plan.n_stages < 2:
            raise UserError(PLANS_FILE, "a U-Net needs at least 2 stages")
        self.plan = plan
        self.deep_supervision = deep_supervision
        self.skip_lowest_head = False
        self.encoder = ENCODERS[plan.encoder](plan, in_channels)
        self.decoder = Decoder(plan, num_classes)
        # plan.class_head > 0: case-class logits from the encoder's deepest stages (network/classifier.py),
        # built on a forked RNG so that every other weight is initialised as without a head
        self.classifier = None
        if plan.class_head:
            with torch.random.fork_rng(devices=[]):
                self.classifier = ClassificationHead(plan.features_per_stage, plan.class_head, region_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor] | SegmentAndClass:
        skips = self.encoder(x)
        seg = self.segment(skips)
        if self.classifier is None:
            return seg
        full_resolution = seg[0] if isinstance(seg, list) else seg  # (B, K_seg, *P)
        return SegmentAndClass(seg, self.classifier(skips, full_resolution))  # + (B, K) case-class logits

    def segment(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """The decoder's logits from the encoder's skips (high → low resolution)."""
        if not self.deep_supervision:
            return self.decoder(skips, heads=1)[0]
        n_outputs = self.plan.n_stages - 1
        if self.skip_lowest_head and n_outputs > 1:
            n_outputs -= 1
        return self.decoder(skips, heads=n_outputs)


def build_unet(plan: NetworkPlan, in_channels: int, num_classes: int, deep_supervision: bool = True,
               region_outputs: bool = False) -> UNet:
    """Build the U-Net of `plan` (2D or 3D, plain or residual encoder) with He-initialised weights;
    `region_outputs`: its outputs are region sigmoids (what a classification head pools by)."""
    net = UNet(plan, in_channels, num_classes, deep_supervision, region_outputs)
    init_he(net)
    return net


def compile_network(net: nn.Module, enabled: bool | None = None) -> nn.Module:
    """`torch.compile` the network; by default only on CUDA (compiling on CPU costs more than it saves)."""
    if enabled is None:
        enabled = torch.cuda.is_available()
    return torch.compile(net) if enabled else net


def to_channels_last(net: nn.Module, ndim: int) -> nn.Module:
    """Store weights channels-last (NDHWC / NHWC); feed inputs with `channels_last_input` too.

    Off by default: it helps cuDNN on tensor cores, not the CPU.
    """
    return net.to(memory_format=_channels_last(ndim))


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) → the same tensor in channels-last memory layout (values unchanged)."""
    return x.contiguous(memory_format=_channels_last(x.ndim - 2))


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 3 else torch.channels_last
