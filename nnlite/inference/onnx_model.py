"""A trained fold as an ONNX file (`python -m nnlite.export onnx`).

The exported graph is the U-Net without deep supervision: image (B, C, Z, Y, X) → logits
(B, K, Z, Y, X) (2D: no Z), with the batch and every spatial size dynamic. Spatial sizes must be
divisible by the configuration's total stride (the patch size always is); the sliding window only
feeds patch-sized tiles. The opset is one that onnxruntime runs on every execution provider we
know of. After writing, the file is run once with onnxruntime on a random patch and compared with
PyTorch; the largest absolute difference of the logits is reported.
`predict --onnx` runs the file again (`models.OnnxNetwork`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnlite.common.layout import fold_folder, plans_file
from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic
from nnlite.inference.models import OnnxNetwork, check_configuration, load_fold_network, require
from nnlite.network.builders import is_builtin
from nnlite.network.classifier import segmentation_output
from nnlite.plans import load_plans
from nnlite.preprocessing.cascade import input_channels

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


def load_exported_network(work: Path, config_name: str, fold: str, checkpoint: str = "final"
                          ) -> tuple[nn.Module, int, int]:
    """The fold's network in eval mode without deep supervision, its input channels and classes."""
    plans = load_plans(plans_file(work))
    check_configuration(work, plans, config_name, checkpoint)
    network = load_fold_network(plans, config_name, fold_folder(work, config_name, fold), checkpoint)
    plan = plans.configurations[config_name].network
    if plan.class_head:  # a classification head is not exported: the file segments only
        if is_builtin(plan):
            network.classifier = None  # the built-in U-Net: the head is not even computed
        else:
            network = SegmentationOnly(network)
    return network, input_channels(plans, config_name), plans.num_classes


class SegmentationOnly(nn.Module):
    """Another builder's network with a classification head → its segmentation logits only."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segmentation_output(self.network(x))


def export_onnx(work: Path, config_name: str, fold: str, out: Path, checkpoint: str = "final") -> OnnxExport:
    """Write the fold's network to `out` (atomically) and check it with onnxruntime."""
    network, channels, classes = load_exported_network(work, config_name, fold, checkpoint)
    config = load_plans(plans_file(work)).configurations[config_name]
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
    require("onnx")
    require("onnxruntime")
    write_atomic(out, write)
    with torch.no_grad():
        expected = network(example).numpy()
    difference = float(np.abs(OnnxNetwork(out)(example).numpy() - expected).max())
    return OnnxExport(out, channels, classes, tuple(config.patch_size), config.network.total_stride, difference)
