"""A trained fold as an ONNX file (`python -m nnlite.export onnx`), and that file as a network again.

The exported graph is the U-Net without deep supervision: image (B, C, Z, Y, X) → logits
(B, K, Z, Y, X) (2D: no Z), with the batch and every spatial size dynamic. Spatial sizes must be
divisible by the configuration's total stride (the patch size always is); the sliding window only
feeds patch-sized tiles. The opset is one that onnxruntime runs on every execution provider we
know of. After writing, the file is run once with onnxruntime on a random patch and compared with
PyTorch; the largest absolute difference of the logits is reported.

`OnnxNetwork` wraps an onnxruntime session as a torch module, so the sliding window
(`predict --onnx`) runs the same tiles, mirrors and Gaussian weights on the ONNX model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic
from nnlite.inference.options import CHECKPOINTS
from nnlite.network import build_unet
from nnlite.plans import load_plans
from nnlite.preprocessing.cascade import input_channels
from nnlite.training.checkpoints import load_checkpoint

OPSET = 17  # onnxruntime ≥ 1.14 runs it on CPU, CUDA and TensorRT; InstanceNormalization since opset 6
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SPATIAL_NAMES = ("z", "y", "x")


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    in_channels: int
    num_classes: int
    patch_size: tuple[int, ...]
    total_stride: tuple[int, ...]
    max_abs_difference: float  # onnxruntime vs PyTorch logits on one random patch

    def summary(self) -> str:
        spatial = "Z, Y, X" if len(self.patch_size) == 3 else "Y, X"
        return (f"wrote {self.path}: {INPUT_NAME} (B, {self.in_channels}, {spatial}) → {OUTPUT_NAME} "
                f"(B, {self.num_classes}, {spatial}); sizes divisible by {list(self.total_stride)} "
                f"(patch {list(self.patch_size)}); onnxruntime vs PyTorch max |Δ| = {self.max_abs_difference:.2e}")


def load_fold_network(work: Path, config_name: str, fold: str, checkpoint: str = "final") -> tuple[nn.Module, int, int]:
    """The fold's network in eval mode without deep supervision, its input channels and classes."""
    plans = load_plans(Path(work) / "plans.json")
    if config_name not in plans.configurations:
        raise UserError("--config", f"'{config_name}' is not in {Path(work) / 'plans.json'}")
    if checkpoint not in CHECKPOINTS:
        raise UserError("--checkpoint", f"must be one of {sorted(CHECKPOINTS)}")
    path = Path(work) / "results" / config_name / f"fold_{fold}" / CHECKPOINTS[checkpoint]
    channels = input_channels(plans, config_name)
    network = build_unet(plans.configurations[config_name].network, channels, plans.num_classes,
                         deep_supervision=False, region_outputs=bool(plans.regions))
    network.load_state_dict(load_checkpoint(path)["network"])
    network.classifier = None  # a classification head is not exported: the file segments only
    return network.eval(), channels, plans.num_classes


def export_onnx(work: Path, config_name: str, fold: str, out: Path, checkpoint: str = "final") -> OnnxExport:
    """Write the fold's network to `out` (atomically) and check it with onnxruntime."""
    network, channels, classes = load_fold_network(work, config_name, fold, checkpoint)
    config = load_plans(Path(work) / "plans.json").configurations[config_name]
    example = torch.randn(1, channels, *config.patch_size, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(SPATIAL_NAMES[-len(config.patch_size):])}}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the exporter warns that InstanceNorm has no training mode
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})

    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(out, "the output file must end in .onnx")
    _require("onnx")
    _require("onnxruntime")
    write_atomic(out, write)
    with torch.no_grad():
        expected = network(example).numpy()
    difference = float(np.abs(OnnxNetwork(out)(example).numpy() - expected).max())
    return OnnxExport(out, channels, classes, tuple(config.patch_size), config.network.total_stride, difference)


def _require(module: str):
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
        onnxruntime = _require("onnxruntime")
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
