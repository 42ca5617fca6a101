"""An ONNX file (`python -m nnlite.export onnx`) as a network again: `predict --onnx` runs it in the
same sliding window (tiles, mirrors, Gaussian weights) as the folds' checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nnlite.common.errors import UserError


def require(module: str):
    """Import an optional dependency, or a UserError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(module, "is not installed: pip install 'nnlite[onnx]' (onnx, onnxruntime)") from None


class OnnxNetwork(nn.Module):
    """An ONNX file as a torch module: (B, C, *S) float32 → logits (B, K, *S), computed by onnxruntime
    on the CPU (the tensors come back on the input's device)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        onnxruntime = require("onnxruntime")
        if not Path(path).is_file():
            raise UserError(path, "ONNX file not found")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001  onnxruntime raises its own exception types
            raise UserError(path, f"onnxruntime cannot load it ({str(error).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.deep_supervision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(x.device)
