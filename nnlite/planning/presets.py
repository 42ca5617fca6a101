"""Planner presets: the network family and the memory constants of each of nnU-Net's planners.

`default` is nnU-Net's `ExperimentPlanner` (PlainConvUNet). `resenc-m|l|xl` are its residual-encoder
planners `nnUNetPlannerResEncM|L|XL` (docs/architectures.md): a residual encoder with 1, 3, 4, 6, 6, …
blocks per stage, one decoder conv per stage, their own memory targets and proxy reference values,
a shrink criterion without the reference-batch factor, and no 5 % cap on the batch. Everything a
preset changes is data here; the planner reads it, nothing else branches on the preset's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnlite.common.errors import UserError

# Residual blocks per encoder stage of nnU-Net's ResEnc planners; deeper stages repeat the last.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class PlannerPreset:
    """What a planner preset decides beyond the shared topology rules."""

    name: str
    encoder: str  # NetworkPlan.encoder: "plain" or "residual"
    conv_per_stage: int  # plain encoder: conv units per stage
    conv_per_stage_decoder: int  # conv units per decoder level
    gpu_memory_gb: float  # the budget when --gpu-memory-gb is not given
    reference_elements: dict[int, int]  # nnunet model: proxy elements that fill reference_gb (3D, 2D)
    reference_gb: float  # the memory those reference values correspond to
    shrink_per_reference_batch: bool  # nnunet model: shrink while estimate / ref_batch × 2 > reference
    max_dataset_covered: float  # a batch may hold at most this fraction of the dataset's voxels
    plans_name: str  # the reference's plans name, for comparisons

    def blocks_per_stage(self, n_stages: int) -> tuple[int, ...]:
        """Residual blocks per encoder stage for an `n_stages` network (empty for plain encoders)."""
        if self.encoder != "residual":
            return ()
        blocks = RESENC_BLOCKS_PER_STAGE
        return tuple(blocks[min(s, len(blocks) - 1)] for s in range(n_stages))


def _resenc(name: str, gb: float, ref_3d: int, ref_2d: int, plans_name: str) -> PlannerPreset:
    return PlannerPreset(name=name, encoder="residual", conv_per_stage=2, conv_per_stage_decoder=1,
                         gpu_memory_gb=gb, reference_elements={3: ref_3d, 2: ref_2d}, reference_gb=gb,
                         shrink_per_reference_batch=False, max_dataset_covered=1.0, plans_name=plans_name)


PRESETS = {
    # UNet_reference_val_3d/2d 560e6 / 85e6 at 8 GB; batch ≤ 5 % of the dataset
    "default": PlannerPreset(name="default", encoder="plain", conv_per_stage=2, conv_per_stage_decoder=2,
                             gpu_memory_gb=8.0, reference_elements={3: 560_000_000, 2: 85_000_000},
                             reference_gb=8.0, shrink_per_reference_batch=True, max_dataset_covered=0.05,
                             plans_name="nnUNetPlans"),
    "resenc-m": _resenc("resenc-m", 8.0, 680_000_000, 135_000_000, "nnUNetResEncUNetMPlans"),
    "resenc-l": _resenc("resenc-l", 24.0, 2_100_000_000, 380_000_000, "nnUNetResEncUNetLPlans"),
    "resenc-xl": _resenc("resenc-xl", 40.0, 3_600_000_000, 560_000_000, "nnUNetResEncUNetXLPlans"),
}


def get_preset(name: str) -> PlannerPreset:
    if name not in PRESETS:
        raise UserError("--preset", f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]
