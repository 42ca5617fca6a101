"""Sizes of the U-Net of a `NetworkPlan` by arithmetic: no module is built, no tensor allocated.

The planner asks this module, for every candidate patch, how many parameters the network has, how
large the reference's memory proxy is and how many bytes a training step needs. The network module
(`nnlite/network/unet.py`) is the ground truth; tests compare these numbers with a real network.

Layout of the PlainConvUNet (see unet.py): stage s has width f_s and spatial shape S_s (`stage_shapes`).
Every conv *unit* is Conv → InstanceNorm(affine) → LeakyReLU(inplace).

    encoder stage s:  2 units (the first strided)                      → (f_s, *S_s)
    decoder level l:  ConvTranspose(f_{l+1} → f_l, kernel = stride)    → (f_l, *S_l)
                      concat with skip_l                               → (2 f_l, *S_l)
                      2 units (2 f_l → f_l, f_l → f_l)                 → (f_l, *S_l)
                      1×1 head                                         → (K, *S_l)

The residual encoder (ResEnc) replaces the encoder stages by a stem unit (in → f_0) and
`blocks_per_stage[s]` residual blocks per stage (two units each, the first strided; a skip with
AvgPool and a 1×1 projection where size or width change). Attention gates add three small convs
per decoder level (`gate_channels`). Every function below covers all of these.
"""

from __future__ import annotations

import math
from typing import Sequence

from nnlite.plans import NetworkPlan

# --- memory model constants (bytes) ---------------------------------------------------------------
FP32_BYTES = 4  # weights, gradients, SGD momentum and the loss' softmax buffers are fp32
AMP_BYTES = 2  # activations under torch.autocast(float16) on CUDA
INT64_BYTES = 8  # the loss keeps its (downsampled) integer target
# Per parameter: fp32 weight + fp32 gradient + fp32 SGD momentum buffer + a transient fp32 copy that
# the fused/foreach SGD step allocates; AMP adds autocast's cached fp16 copy of each weight.
PARAM_STATE_BYTES = 4 * FP32_BYTES
AMP_WEIGHT_COPY_BYTES = AMP_BYTES
# Peak / saved tensors: backward holds activation gradients (several full-resolution tensors at once)
# next to the saved tensors, and the caching allocator rounds and fragments blocks. Calibrated so that
# at 8 GiB the planner shrinks 3D patches where nnU-Net's proxy does in ~95 % of random fingerprints
# (benchmarks/planner_vs_reference.py) and on the worked examples of docs/planning.md.
ALLOCATOR_FACTOR = 1.62
# CUDA context, cuDNN/cuBLAS handles and convolution workspace: device memory torch never reports.
WORKSPACE_BYTES = 384 * 2**20


def gate_channels(c_skip: int) -> int:
    """Width F_int of an attention gate's intermediate maps: half the skip's (Oktay et al.'s default).

    `blocks.AttentionGate` builds its convs with this number, so module and arithmetic agree.
    """
    return max(c_skip // 2, 1)


def stage_shapes(plan: NetworkPlan, patch: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial shape of the encoder output of every stage, stage 0 (= patch) first.

    A strided conv with "same" padding outputs ceil(size / stride) voxels per axis.
    """
    shapes = []
    size = tuple(int(p) for p in patch)
    for stride in plan.strides:
        size = tuple(-(-n // s) for n, s in zip(size, stride))
        shapes.append(size)
    return shapes


def count_parameters(plan: NetworkPlan, in_channels: int, num_classes: int) -> int:
    """Trainable parameters of the U-Net incl. every deep-supervision head, norm affine and gate."""
    f = plan.features_per_stage
    total = _encoder_parameters(plan, in_channels)
    for level in range(plan.n_stages - 1):
        up_kernel = math.prod(plan.strides[level + 1])
        total += f[level + 1] * f[level] * up_kernel + f[level]  # transposed conv + bias
        total += _stack_parameters(2 * f[level], f[level], plan.kernel_sizes[level], plan.conv_per_stage_decoder)
        total += f[level] * num_classes + num_classes  # 1×1 head + bias
        if plan.attention_gates:
            total += _gate_parameters(f[level], f[level + 1], plan.strides[level + 1])
    return total


def _encoder_parameters(plan: NetworkPlan, in_channels: int) -> int:
    f = plan.features_per_stage
    if plan.encoder == "plain":
        widths = (in_channels, *f)
        return sum(_stack_parameters(widths[s], f[s], plan.kernel_sizes[s], plan.conv_per_stage)
                   for s in range(plan.n_stages))
    total = _stack_parameters(in_channels, f[0], plan.kernel_sizes[0], 1)  # stem
    widths = (f[0], *f)
    for s in range(plan.n_stages):
        k = math.prod(plan.kernel_sizes[s])
        block = 2 * (f[s] * f[s] * k + 3 * f[s])  # two units: conv weight, bias, norm weight, norm bias
        first = block - f[s] * f[s] * k + widths[s] * f[s] * k  # the first unit reads widths[s] channels
        if widths[s] != f[s]:
            first += widths[s] * f[s] + 2 * f[s]  # skip projection: bias-free 1×1 conv + norm
        total += first + (plan.blocks_per_stage[s] - 1) * block
    return total


def _gate_parameters(c_skip: int, c_gate: int, stride: Sequence[int]) -> int:
    """θ (kernel = stride, no bias) + φ (1×1) + ψ (1×1 → 1 channel), see blocks.AttentionGate."""
    inner = gate_channels(c_skip)
    return c_skip * inner * math.prod(stride) + (c_gate * inner + inner) + (inner + 1)


def _stack_parameters(c_in: int, c_out: int, kernel: Sequence[int], n_units: int) -> int:
    """n_units conv units (conv weight + bias + norm weight + norm bias); only the first changes width."""
    k = math.prod(kernel)
    first = c_in * c_out * k + c_out + 2 * c_out
    rest = c_out * c_out * k + c_out + 2 * c_out
    return first + (n_units - 1) * rest


def conv_feature_map_elements(plan: NetworkPlan, patch: Sequence[int], in_channels: int,
                              num_classes: int, deep_supervision: bool = False) -> int:
    """nnU-Net's VRAM proxy (`compute_conv_feature_map_size`) at batch 1.

    Sum of the element counts of every conv, transposed-conv and head OUTPUT (residual blocks: both
    units and the skip projection where there is one; attention gates: θ, φ and ψ). The reference
    planner builds its network without deep supervision (the default), so only the full-resolution
    head counts; with `deep_supervision` every head does. Sizes use floor division, as the
    reference does. `in_channels` does not enter the proxy.
    """
    f = plan.features_per_stage
    sizes = []
    size = tuple(int(p) for p in patch)
    total = f[0] * math.prod(size) if plan.encoder == "residual" else 0  # the stem
    for s in range(plan.n_stages):
        size = tuple(n // st for n, st in zip(size, plan.strides[s]))
        sizes.append(math.prod(size))
        if plan.encoder == "plain":
            total += plan.conv_per_stage * f[s] * sizes[s]
        else:  # the reference counts a skip output wherever the first block pools or projects
            skip = (f[s - 1] if s else f[0]) != f[s] or any(st != 1 for st in plan.strides[s])
            total += (2 * plan.blocks_per_stage[s] + skip) * f[s] * sizes[s]
    for level in range(plan.n_stages - 1):
        total += plan.conv_per_stage_decoder * f[level] * sizes[level]  # conv units
        total += f[level] * sizes[level]  # transposed conv output
        if deep_supervision or level == 0:
            total += num_classes * sizes[level]  # 1×1 head output
        if plan.attention_gates:
            total += (2 * gate_channels(f[level]) + 1) * sizes[level + 1]  # θ, φ, ψ
    return total


def saved_elements(plan: NetworkPlan, patch: Sequence[int], in_channels: int) -> int:
    """Elements of the network tensors autograd saves for backward, per sample (batch 1).

    Counted once per storage (a tensor saved by two ops counts once):
      - the network input (saved by the first conv);
      - per conv unit: the conv output (saved by InstanceNorm) and the norm output, which the
        in-place LeakyReLU overwrites and saves and the next conv/transposed conv/head saves again;
        a unit without nonlinearity (a residual block's second) saves only its conv output;
      - per residual block: its two units, the output of the in-place LeakyReLU after the add, and
        on a projected skip the 1×1 conv output (saved by its norm) and an AvgPool output;
      - per decoder level: the concatenation (saved by the first decoder conv). The transposed-conv
        output is only read by torch.cat, which saves nothing, so it is freed; heads save their input
        (already counted). Norm statistics (2 numbers per channel) are negligible and left out;
      - per attention gate: the ReLU output (F_int channels) and the sigmoid output (1 channel) at
        the coarser size, and the upsampled attention map (1 channel) the product saves.
    """
    f = plan.features_per_stage
    voxels = [math.prod(shape) for shape in stage_shapes(plan, patch)]
    total = in_channels * voxels[0] + _encoder_saved(plan, voxels)
    for level in range(plan.n_stages - 1):
        total += 2 * f[level] * voxels[level]  # concatenation [up, skip]
        total += 2 * plan.conv_per_stage_decoder * f[level] * voxels[level]
        if plan.attention_gates:
            total += (gate_channels(f[level]) + 1) * voxels[level + 1] + voxels[level]
    return total


def _encoder_saved(plan: NetworkPlan, voxels: Sequence[int]) -> int:
    f = plan.features_per_stage
    if plan.encoder == "plain":
        return sum(2 * plan.conv_per_stage * f[s] * voxels[s] for s in range(plan.n_stages))
    total = 2 * f[0] * voxels[0]  # the stem unit
    widths = (f[0], *f)
    for s in range(plan.n_stages):
        total += 4 * plan.blocks_per_stage[s] * f[s] * voxels[s]  # unit 1 (2), unit 2 (1), add + LeakyReLU (1)
        if widths[s] != f[s]:
            total += f[s] * voxels[s]  # the projection's conv output
            if any(st != 1 for st in plan.strides[s]):
                total += widths[s] * voxels[s]  # the AvgPool output the projection reads
    return total


def loss_levels(plan: NetworkPlan) -> list[int]:
    """Decoder levels whose head enters the deep-supervision loss (the lowest has weight 0)."""
    n_outputs = plan.n_stages - 1
    return list(range(max(n_outputs - 1, 1)))


def loss_bytes(plan: NetworkPlan, patch: Sequence[int], num_classes: int) -> int:
    """Bytes the Dice + CE loss saves per sample, summed over the deep-supervision levels.

    Per level of S voxels: log_softmax output (CE) and softmax output (Dice), both fp32 under
    autocast, the float32 one-hot target the Dice products save, and the int64 target of nll_loss.
    """
    voxels = [math.prod(shape) for shape in stage_shapes(plan, patch)]
    per_voxel = 3 * num_classes * FP32_BYTES + INT64_BYTES
    return sum(per_voxel * voxels[level] for level in loss_levels(plan))


def activation_bytes(plan: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int,
                     batch_size: int, dtype_bytes: int) -> int:
    """Bytes of everything autograd saves for backward in one deep-supervised training step.

    Network tensors at `dtype_bytes` (2 under AMP, 4 in fp32) plus the loss buffers (fp32).
    """
    per_sample = saved_elements(plan, patch, in_channels) * dtype_bytes + loss_bytes(plan, patch, num_classes)
    return batch_size * per_sample


def training_memory_bytes(plan: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int,
                          batch_size: int, amp: bool = True) -> int:
    """Predicted peak device memory of one training step (forward + backward + SGD step).

    = ALLOCATOR_FACTOR × (saved activations + the logits the loop holds) + parameter state
      (weight, gradient, momentum, optimizer temporary, AMP weight copy) + WORKSPACE_BYTES.
    """
    dtype_bytes = AMP_BYTES if amp else FP32_BYTES
    held = activation_bytes(plan, patch, in_channels, num_classes, batch_size, dtype_bytes)
    voxels = [math.prod(shape) for shape in stage_shapes(plan, patch)]
    logits = batch_size * num_classes * dtype_bytes * sum(voxels[: plan.n_stages - 1])
    per_param = PARAM_STATE_BYTES + (AMP_WEIGHT_COPY_BYTES if amp else 0)
    params = count_parameters(plan, in_channels, num_classes) * per_param
    return int(ALLOCATOR_FACTOR * (held + logits)) + params + WORKSPACE_BYTES
