"""The device of training and inference (`--device auto|cpu|cuda` resolved), this process's
place in a torchrun launch, and the reduced precision that device computes natively when predicting."""

from __future__ import annotations

import contextlib
import os
from typing import Mapping

import torch

from nnlite.common.errors import UserError


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


def launched_rank(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank) of a torchrun launch, from RANK, WORLD_SIZE and LOCAL_RANK;
    (0, 1, 0) without torchrun. Training joins the process group with it, predict splits its cases."""
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return 0, 1, 0
        return int(environ["RANK"]), world_size, int(environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as error:
        raise UserError("torchrun environment", f"WORLD_SIZE, RANK and LOCAL_RANK must be integers "
                                                f"({type(error).__name__}: {error})") from None
