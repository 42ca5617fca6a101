"""Which reduced precision a device computes natively (autocast dtypes for training and inference)."""

from __future__ import annotations

import contextlib

import torch


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
