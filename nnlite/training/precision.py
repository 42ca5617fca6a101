"""The device and autocast dtype of training and inference: `--device auto|cpu|cuda` resolved,
and which reduced precision that device computes natively."""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch

from nnlite.common.errors import UserError
from nnlite.network.geometry import stage_shapes
from nnlite.plans import NetworkPlan

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convs there take about half the fp32 time; elsewhere bf16 is
    emulated and slower than fp32."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 on CUDA (as the reference predicts), bf16 on a CPU that computes it natively, else fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when present, else CPU; "cuda" without a GPU is a UserError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda", "no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        index = torch.cuda.current_device()
        return torch.device("cuda", index)
    return torch.device("cpu")
