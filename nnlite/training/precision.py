"""The autocast dtype of training: which reduced precision `training.amp` trains a plan in on a
device (the device itself: `nnlite.network.hardware`)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from nnlite.common.errors import UserError
from nnlite.network.hardware import cpu_has_native_bf16
from nnlite.network.geometry import stage_shapes
from nnlite.plans import NetworkPlan

log = logging.getLogger(__name__)


def amp_dtype(mode: str, device: torch.device, plan: NetworkPlan, patch: Sequence[int]) -> torch.dtype | None:
    """The autocast dtype of `training.amp` for training `plan` on `device`; None: fp32.

    auto: bf16 on CUDA (fp16 with a grad scaler where bf16 is missing), and bf16 on a CPU whose
    instructions compute it natively (AVX512-BF16 or AMX): there a step of the Hippocampus plan
    takes about half the fp32 time. Elsewhere the CPU would emulate bf16, slower than fp32.
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if mode == "fp16":
        raise UserError("training.amp", "fp16 autocast needs CUDA; use bf16 or off on the CPU")
    if mode == "auto" and not cpu_has_native_bf16():
        return None
    stage = first_cpu_bf16_hazard(plan, patch)
    if stage is None:
        return torch.bfloat16
    problem = (f"stage {stage} of this plan is 2 voxels deep on the first axis, where the CPU's bf16 "
               "conv3d gives wrong weight gradients (torch 2.13, oneDNN: NaN and run-to-run differences)")
    if mode == "bf16":
        raise UserError("training.amp", problem + "; use training.amp=off")
    log.info("training in fp32: %s", problem)
    return None


def first_cpu_bf16_hazard(plan: NetworkPlan, patch: Sequence[int]) -> int | None:
    """The first stage whose 3×… convs see a first-axis extent of 2, else None.

    The CPU's bf16 conv3d weight gradient is nondeterministic and sometimes non-finite exactly when
    the input is 2 deep on the first spatial axis with a kernel of 3 there (measured over depths
    1–12, widths 8–256 and batches 1–8; conv2d and transposed convs are unaffected).
    """
    if plan.ndim != 3:
        return None
    for stage, (shape, kernel) in enumerate(zip(stage_shapes(plan, patch), plan.kernel_sizes)):
        if shape[0] == 2 and kernel[0] == 3:
            return stage
    return None
