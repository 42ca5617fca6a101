"""Plans moved between datasets (`plan RAW WORK --plans-from SOURCE_WORK`), for fine-tuning.

nnU-Net users fine-tune by copying a trained model's plans onto the new dataset
(`nnUNetv2_move_plans_between_datasets`), so the network built for the new dataset has the
pretrained one's shapes. nnlite does the same with a planned WORK: every configuration keeps the
source's spacing, patch, batch and network topology (stages, strides, kernels, widths, encoder,
and its transpose: the axes mean the same), while what belongs to the data comes from the new
dataset's fingerprint: channels, labels and regions, the intensity statistics, the normalization
per new channel name, the median shapes and the case classes (the classification head is planned
for the new dataset's classes). The network's inputs and outputs are sized by the new dataset when
it is built, which is what `train --pretrained` adapts (training/pretrained.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.planning.planner import normalization
from nnlite.plans import ConfigurationPlan, Fingerprint, Plans

PLANS_FROM_KEY = "plans_from"  # plans.extra: the WORK whose plans were copied
COPIED_KEYS = ("memory_model", "preset")  # plans.extra entries that describe the copied plan


def moved_plans(source: Plans, fingerprint: Fingerprint, dataset_name: str, source_work: Path,
                configs: Sequence[str] | None = None) -> Plans:
    """`source`'s configurations (all, or `configs`) for the dataset of `fingerprint`."""
    chosen = select_configurations(source, configs, source_work)
    schemes, mask, norm_reason = normalization(fingerprint)
    transpose = list(source.transpose)
    spacings = np.array([c.spacing for c in fingerprint.cases], dtype=np.float64)
    shapes = np.array([c.shape_after_crop for c in fingerprint.cases], dtype=np.float64)
    origin = (f"from {source_work}'s plans ({source.dataset_name}): spacing, patch, batch and network "
              "topology copied (plan --plans-from)")
    configurations = {
        name: replace(config, network=replace(config.network, class_head=0),  # planned again by classes
                      normalization=schemes, use_mask_for_norm=mask, inference_mirror_axes=None,
                      median_shape=median_shape(spacings, shapes, transpose, config.spacing),
                      reasons=(origin, norm_reason))
        for name, config in chosen.items()}
    extra = {key: source.extra[key] for key in COPIED_KEYS if key in source.extra}
    return Plans(
        dataset_name=dataset_name, transpose=source.transpose,
        original_median_spacing=tuple(float(v) for v in np.median(spacings, 0)[transpose]),
        original_median_shape=tuple(float(v) for v in np.median(shapes, 0)[transpose]),
        configurations=configurations, intensity_per_channel=dict(fingerprint.intensity_per_channel),
        channel_names=dict(fingerprint.channel_names), labels=dict(fingerprint.labels),
        regions=fingerprint.regions, gpu_memory_gb=source.gpu_memory_gb,
        reasons=(f"{origin}; channels, labels, intensity statistics and normalization from this dataset",),
        extra={**extra, PLANS_FROM_KEY: str(Path(source_work).resolve())})


def select_configurations(source: Plans, configs: Sequence[str] | None, source_work: Path
                          ) -> dict[str, ConfigurationPlan]:
    """The source's configurations to copy; a stage's lowres stage or parent comes along only when
    chosen too (a cascade without its lowres stage is refused, an orphaned child stands alone)."""
    names = list(configs) if configs else list(source.configurations)
    unknown = [name for name in names if name not in source.configurations]
    if unknown:
        raise UserError("--configs", f"{unknown[0]!r} is not planned in {source_work} "
                        f"(planned: {', '.join(source.configurations)})")
    chosen = {name: source.configurations[name] for name in source.configurations if name in names}
    for name, config in chosen.items():
        if config.previous_stage is not None and config.previous_stage not in chosen:
            raise UserError("--configs", f"{name} needs its lowres stage {config.previous_stage}: add it")
        if config.next_stage is not None and config.next_stage not in chosen:
            chosen[name] = config = replace(config, next_stage=None)
        if config.inherits_from is not None and config.inherits_from not in chosen:
            chosen[name] = replace(config, inherits_from=None)
    return chosen


def median_shape(spacings: np.ndarray, shapes: np.ndarray, transpose: Sequence[int],
                 spacing: Sequence[float]) -> tuple[int, ...]:
    """Median shape (cropped) of the cases (N, 3 raw order) resampled to `spacing` (transposed; a 2D
    configuration's two entries are the last two axes)."""
    target = np.asarray(spacing, dtype=np.float64)
    spacings_t, shapes_t = spacings[:, transpose][:, -len(target):], shapes[:, transpose][:, -len(target):]
    return tuple(int(round(v)) for v in np.median(np.round(shapes_t * spacings_t / target), 0))
