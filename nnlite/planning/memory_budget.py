"""The GPU-memory budget a configuration must fit, and the model that judges it.

nnlite predicts the bytes one training step needs (`network.geometry.training_memory_bytes`:
activations, gradients, weights and optimizer state by arithmetic) and compares them with the
budget; `model="nnunet"` switches to the reference's element-count proxy scaled by a hand-tuned
constant, for comparison with nnU-Net's plans. A network whose plan names a builder
(`network.architecture`) is described by no arithmetic: its bytes are measured by running one step
of it on fake tensors (`network.measured_memory`), under either model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from nnlite.common.errors import UserError
from nnlite.network.geometry import conv_feature_map_elements, training_memory_bytes
from nnlite.planning.presets import PRESETS, PlannerPreset
from nnlite.common.labels import IGNORE_KEY, Region
from nnlite.plans import NetworkPlan


MIN_BATCH = 2  # UNet_min_batch_size: the patch shrinks until this batch fits
GIB = 2**30


# nnU-Net's proxy model: the conv-output elements (batch 1) of a preset's `reference_elements` "fill"
# its `reference_gb` at this reference batch size
NNUNET_REFERENCE_BATCH = {3: 2, 2: 12}
MEMORY_MODELS = ("bytes", "nnunet")


def nnunet_class_count(labels: dict[str, int], regions: Sequence[Region] = ()) -> int:
    """The class count nnU-Net's planner gives its memory proxy: `len(dataset_json['labels'].keys())`,
    i.e. background, every label or region, and the ignore label when there is one (not the
    network's outputs: one more than them for a region or an ignore-label dataset)."""
    if regions:  # nnlite keeps the integers of a region dataset; its dataset.json keys are the regions
        return 1 + len(regions) + (IGNORE_KEY in labels)
    return len(labels)


@dataclass(frozen=True)
class MemoryBudget:
    """What one configuration may use, and the model that judges it."""

    gpu_memory_gb: float
    in_channels: int
    num_classes: int  # network outputs (bytes model); `nnunet_class_count` (nnunet model)
    model: str = "bytes"  # "bytes" (nnlite) or "nnunet" (the reference's proxy)
    preset: PlannerPreset = PRESETS["default"]  # its proxy constants (nnunet model)
    architecture: str | None = None  # the builder the planned networks name; None: the built-in U-Net
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)  # ... and its keywords

    def _proxy(self, net: NetworkPlan, patch: Sequence[int]) -> tuple[float, float, int]:
        """(estimate, reference, reference batch) of nnU-Net's proxy model."""
        reference = self.preset.reference_elements[net.ndim] * self.gpu_memory_gb / self.preset.reference_gb
        estimate = conv_feature_map_elements(net, patch, self.in_channels, self.num_classes)
        return float(estimate), reference, NNUNET_REFERENCE_BATCH[net.ndim]

    def predicted_bytes(self, net: NetworkPlan, patch: Sequence[int], batch: int) -> int:
        if net.architecture is not None:  # another builder: measure its network (imports torch only now)
            from nnlite.network.measured_memory import planned_training_memory_bytes

            return planned_training_memory_bytes(net, patch, self.in_channels, self.num_classes, batch, amp=True)
        return training_memory_bytes(net, patch, self.in_channels, self.num_classes, batch, amp=True)

    def uses_proxy(self, net: NetworkPlan) -> bool:
        """nnU-Net's proxy counts the built-in U-Net only; another builder's network is measured."""
        return self.model == "nnunet" and net.architecture is None

    def fits(self, net: NetworkPlan, patch: Sequence[int], batch: int = MIN_BATCH) -> bool:
        if self.uses_proxy(net):
            estimate, reference, ref_batch = self._proxy(net, patch)
            if not self.preset.shrink_per_reference_batch:
                return estimate <= reference  # the ResEnc planners: the batch does not enter
            return estimate / ref_batch * batch <= reference
        return self.predicted_bytes(net, patch, batch) <= self.gpu_memory_gb * GIB

    def max_batch(self, net: NetworkPlan, patch: Sequence[int]) -> int:
        """Largest batch the budget allows (nnunet: round(reference / estimate × reference batch))."""
        if self.uses_proxy(net):
            estimate, reference, ref_batch = self._proxy(net, patch)
            return round(reference / estimate * ref_batch)
        fixed = self.predicted_bytes(net, patch, 0)
        per_sample = self.predicted_bytes(net, patch, 1) - fixed
        batch = max(int((self.gpu_memory_gb * GIB - fixed) // per_sample), 0)
        while batch > 0 and not self.fits(net, patch, batch):
            batch -= 1
        while self.fits(net, patch, batch + 1):
            batch += 1
        return batch


def resolve_gpu_memory(value: str | float) -> float:
    """'auto' → total memory of the present CUDA device in GiB; otherwise a positive number."""
    if str(value).strip().lower() != "auto":
        try:
            gb = float(value)
        except ValueError:
            raise UserError("--gpu-memory-gb", f"expected a number of GB or 'auto', got {value!r}") from None
        check_gpu_memory(gb)
        return gb
    import torch  # only 'auto' needs it

    if not torch.cuda.is_available():
        raise UserError("--gpu-memory-gb", "'auto' needs a CUDA device and none is present; give a number of GB")
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def check_gpu_memory(gpu_memory_gb: float) -> None:
    if not (math.isfinite(gpu_memory_gb) and gpu_memory_gb > 0):
        raise UserError("--gpu-memory-gb", f"must be a positive number of GB, got {gpu_memory_gb}")
