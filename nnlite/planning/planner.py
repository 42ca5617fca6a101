"""Experiment planning: from a `Fingerprint` and a GPU-memory budget to `Plans`.

The decisions are nnU-Net v2's default planner (docs/planning.md): median target spacing with the
anisotropy rule, the coarsest axis first, an initial patch of equal physical extent, the pooling
loop of `topology.py`, widths 32·2^i, and the configurations 2d / 3d_fullres / 3d_lowres /
3d_cascade_fullres under the reference's conditions. What differs is the memory model: nnlite
predicts the bytes a training step needs (`network.geometry.training_memory_bytes`) and shrinks the
patch until batch 2 fits the budget, instead of comparing an element-count proxy with a hand-tuned
constant. `memory_model="nnunet"` switches back to the proxy (for comparison with the reference).
Every decision is written, in words, into the plan's `reasons`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.planning.memory_budget import (GIB, MEMORY_MODELS, MIN_BATCH, MemoryBudget, check_gpu_memory,
                                          nnunet_class_count)
from nnlite.planning.presets import PlannerPreset, get_preset
from nnlite.planning.topology import Topology, initial_patch, pool_and_conv_props, shrink_step
from nnlite.plans import ConfigurationPlan, Fingerprint, NetworkPlan, Plans

log = logging.getLogger(__name__)

ANISO_THRESHOLD = 3  # an axis is anisotropic when its spacing is > 3× the others' (and its size < 1/3)
ANISO_SPACING_PERCENTILE = 10  # ... then its target spacing is this percentile of its spacings
ANISO_EPSILON = 1e-5  # added when that percentile falls below the other axes' spacing
BASE_FEATURES = 32  # width of stage 0; doubles per stage
MAX_FEATURES = {3: 320, 2: 512}  # width cap per dimensionality
LOWRES_CREATION_THRESHOLD = 0.25  # plan 3d_lowres when the fullres patch covers < 25 % of the median image
LOWRES_SPACING_FACTOR = 1.03  # lowres spacing grows by this factor per iteration
LOWRES_MIN_SHRINK = 2  # drop 3d_lowres unless it has ≥ 2× fewer median voxels than fullres
MASK_NORM_CROP_THRESHOLD = 0.75  # z-score inside the nonzero mask when cropping keeps < 75 % of voxels
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
CHANNEL_NORMALIZATION = {"ct": "ct", "nonorm": "none", "zscore": "zscore", "rescale_to_0_1": "rescale_0_1",
                         "rgb_to_0_1": "rgb_0_1"}


# ------------------------------------------------------------------------------------------------
# dataset-level decisions


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """spacings, shapes (N, 3) raw order → fullres target spacing (3,) and the reasons.

    The median spacing, except on a strongly anisotropic axis (spacing > 3× and size < 1/3 of the
    others'), which gets its 10th percentile so thin-slice cases are not downsampled too much.
    """
    target = np.percentile(spacings, 50, 0)
    sizes = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacing = max(target[a] for a in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * other_spacing
    aniso_size = sizes[worst] * ANISO_THRESHOLD < min(sizes[a] for a in others)
    reasons = [f"target spacing: median spacing {_fmt(target)} mm"]
    if aniso_spacing and aniso_size:
        value = np.percentile(spacings[:, worst], ANISO_SPACING_PERCENTILE)
        if value < other_spacing:
            value = max(other_spacing, value) + ANISO_EPSILON
        reasons.append(f"anisotropic: axis {worst} spacing {target[worst]:.3g} > {ANISO_THRESHOLD} × "
                       f"{other_spacing:.3g} and median size {sizes[worst]:.4g} × {ANISO_THRESHOLD} < "
                       f"{min(sizes[a] for a in others):.4g}, so its target is the "
                       f"{ANISO_SPACING_PERCENTILE}th percentile {value:.4g} mm")
        target[worst] = value
    return target, reasons


def transpose_axes(spacing: np.ndarray) -> tuple[int, ...]:
    """The coarsest axis first, the others in ascending order (isotropic data keeps (0, 1, 2))."""
    worst = int(np.argmax(spacing))
    return (worst,) + tuple(a for a in range(len(spacing)) if a != worst)


def normalization(fingerprint: Fingerprint) -> tuple[tuple[str, ...], tuple[bool, ...], str]:
    """Scheme per channel from its name (CT → ct, else z-score) and whether to use the nonzero mask."""
    names = [fingerprint.channel_names[k] for k in sorted(fingerprint.channel_names, key=int)]
    schemes = tuple(CHANNEL_NORMALIZATION.get(name.casefold(), "zscore") for name in names)
    cropped = fingerprint.median_relative_size_after_crop < MASK_NORM_CROP_THRESHOLD
    mask = tuple(cropped and scheme == "zscore" for scheme in schemes)
    reason = (f"normalization {list(schemes)}; median size after cropping "
              f"{fingerprint.median_relative_size_after_crop:.3f} "
              f"{'<' if cropped else '≥'} {MASK_NORM_CROP_THRESHOLD}, so z-score "
              f"{'only inside the nonzero mask' if cropped else 'over the whole image'}")
    return schemes, mask, reason


# ------------------------------------------------------------------------------------------------
# one configuration


def network_plan(topology: Topology, preset: PlannerPreset, architecture: str | None = None,
                 kwargs: Mapping[str, Any] | None = None) -> NetworkPlan:
    """The preset's network family (plain or residual encoder) on this topology, widths 32·2^i;
    built by `architecture` (with `kwargs`) when one is named."""
    ndim, n = len(topology.patch_size), topology.n_stages
    widths = tuple(min(BASE_FEATURES * 2**i, MAX_FEATURES[ndim]) for i in range(n))
    return NetworkPlan(strides=topology.strides, kernel_sizes=topology.kernel_sizes, features_per_stage=widths,
                       conv_per_stage=preset.conv_per_stage, conv_per_stage_decoder=preset.conv_per_stage_decoder,
                       encoder=preset.encoder, blocks_per_stage=preset.blocks_per_stage(n),
                       architecture=architecture, kwargs=dict(kwargs or {}))


def budget_network(topology: Topology, budget: MemoryBudget) -> NetworkPlan:
    """The network the budget judges on this topology (its preset, its builder)."""
    return network_plan(topology, budget.preset, budget.architecture, budget.network_kwargs)


def fit_patch(spacing: Sequence[float], median_shape: Sequence[float], budget: MemoryBudget
              ) -> tuple[Topology, int, list[str]] | None:
    """Initial patch → topology → shrink (nnU-Net's axis rule) until batch MIN_BATCH fits.

    None when the median image allows no pooling at all (nnU-Net would plan a 1-stage network that
    it cannot build); the configuration is then skipped.
    """
    start = initial_patch(spacing, median_shape)
    topology = pool_and_conv_props(spacing, start)
    if topology.n_stages < 2:
        return None
    reasons = [f"initial patch {_fmt(start, 4)}: volume of {'256³' if len(spacing) == 3 else '2048²'} at "
               f"equal physical extent, clipped to the median shape {_fmt(median_shape, 4)}, padded to "
               f"{_fmt(topology.patch_size)}"]
    steps = 0
    while not budget.fits(budget_network(topology, budget), topology.patch_size):
        smaller = shrink_step(spacing, topology, median_shape)
        if smaller is None:
            raise UserError("--gpu-memory-gb", f"{budget.gpu_memory_gb:g} GB cannot hold even the "
                                               f"smallest network at batch {MIN_BATCH}")
        topology, steps = smaller, steps + 1
    if steps:
        reasons.append(f"patch shrunk {steps}× (the axis largest relative to the median first) to "
                       f"{_fmt(topology.patch_size)} so that batch {MIN_BATCH} fits {budget.gpu_memory_gb:g} GB")
    return topology, steps, reasons


def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], n_voxels_dataset: float,
                       budget: MemoryBudget, data_identifier: str, fingerprint: Fingerprint
                       ) -> ConfigurationPlan | None:
    """Patch, topology and batch for one spacing (3D or 2D) and median shape (both transposed);
    None when the median image is too small to pool."""
    fitted = fit_patch(spacing, median_shape, budget)
    if fitted is None:
        return None
    topology, _, reasons = fitted
    net = budget_network(topology, budget)
    patch = topology.patch_size
    reasons.append(f"{net.n_stages} stages, strides {[list(s) for s in net.strides]}, kernels "
                   f"{[list(k) for k in net.kernel_sizes]}: pool axes with ≥ 8 voxels within 2× of the "
                   f"finest spacing, bottleneck ≥ 4 voxels")
    by_memory = budget.max_batch(net, patch)
    covered = budget.preset.max_dataset_covered
    by_dataset = round(n_voxels_dataset * covered / np.prod(patch, dtype=np.float64))
    batch = max(min(by_memory, by_dataset), MIN_BATCH)
    reasons.append(f"batch {batch}: memory allows {by_memory}, {covered:.0%} of the dataset "
                   f"allows {by_dataset}, minimum {MIN_BATCH}")
    memory = budget.predicted_bytes(net, patch, batch)
    sized_by = (f"measuring one step of {net.architecture} (network/measured_memory.py)" if net.architecture
                else f"the '{budget.model}' model")
    reasons.append(f"predicted training memory {memory / GIB:.2f} GiB at batch {batch} (bytes, AMP); patch and "
                   f"batch sized by {sized_by} for {budget.gpu_memory_gb:g} GB")
    schemes, mask, norm_reason = normalization(fingerprint)
    return ConfigurationPlan(
        spacing=tuple(float(s) for s in spacing), patch_size=tuple(int(p) for p in patch),
        median_shape=tuple(int(round(m)) for m in median_shape), batch_size=int(batch), network=net,
        normalization=schemes, use_mask_for_norm=mask, batch_dice=False, data_identifier=data_identifier,
        predicted_memory_bytes=int(memory), reasons=tuple(reasons + [norm_reason]),
    )


# ------------------------------------------------------------------------------------------------
# all configurations


def plan_lowres(fullres: ConfigurationPlan, median_shape: np.ndarray, n_training: int, budget: MemoryBudget,
                fingerprint: Fingerprint) -> tuple[ConfigurationPlan | None, str]:
    """nnU-Net's 3d_lowres search: coarsen the spacing by 1.03 until the patch covers ≥ 25 %."""
    full_spacing = np.asarray(fullres.spacing)
    median_voxels = np.prod(median_shape, dtype=np.float64)
    coverage = np.prod(fullres.patch_size, dtype=np.float64) / median_voxels
    if coverage >= LOWRES_CREATION_THRESHOLD:
        return None, (f"no 3d_lowres: the fullres patch covers {coverage:.0%} ≥ "
                      f"{LOWRES_CREATION_THRESHOLD:.0%} of the median image")
    spacing, lowres = full_spacing.copy(), None
    while coverage < LOWRES_CREATION_THRESHOLD:
        coarse = max(spacing) / spacing > 2  # first catch up the fine axes, then grow all
        if np.any(coarse):
            spacing[coarse] *= LOWRES_SPACING_FACTOR
        else:
            spacing *= LOWRES_SPACING_FACTOR
        scaled = full_spacing / spacing * median_shape
        median_voxels = np.prod(scaled, dtype=np.float64)
        median_lowres = tuple(round(s) for s in scaled)
        lowres = plan_configuration(spacing, median_lowres, float(median_voxels * n_training), budget,
                                    "3d_lowres", fingerprint)
        # an unpoolable step (None) is passed through, as nnU-Net does, with its unpadded patch
        if lowres is None:
            patch = pool_and_conv_props(spacing, initial_patch(spacing, median_lowres)).patch_size
        else:
            patch = lowres.patch_size
        coverage = np.prod(patch, dtype=np.int64) / median_voxels
    if lowres is None:
        return None, "no 3d_lowres: its median image is too small to pool"
    shrink = np.prod(median_shape, dtype=np.float64) / median_voxels
    if shrink < LOWRES_MIN_SHRINK:
        return None, f"no 3d_lowres: its median image is only {shrink:.2f}× smaller than fullres (< {LOWRES_MIN_SHRINK})"
    reason = (f"3d_lowres: the fullres patch covers < {LOWRES_CREATION_THRESHOLD:.0%} of the median image; "
              f"spacing grown ×{LOWRES_SPACING_FACTOR} per step to {_fmt(spacing)} mm, where the patch covers "
              f"{coverage:.0%} ({shrink:.2f}× fewer voxels than fullres)")
    return replace(lowres, reasons=lowres.reasons + (reason,)), reason


def plan_experiment(fingerprint: Fingerprint, gpu_memory_gb: float | None = None,
                    configs: Sequence[str] | None = None, *, dataset_name: str = "dataset",
                    memory_model: str = "bytes", preset: str = "default", architecture: str | None = None,
                    network_kwargs: Mapping[str, Any] | None = None) -> Plans:
    """All configurations that apply (or those in `configs`), as nnU-Net's planner (or the one of
    `preset`, see `presets`) decides them. `gpu_memory_gb` None: the preset's budget. `architecture`
    ("module.path:function", with `network_kwargs`): every network is built by that builder, and
    patch and batch are sized by measuring it (network/measured_memory.py)."""
    planner = get_preset(preset)
    gpu_memory_gb = planner.gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb
    check_arguments(gpu_memory_gb, configs, memory_model)
    spacings = np.array([c.spacing for c in fingerprint.cases], dtype=np.float64)
    shapes = np.array([c.shape_after_crop for c in fingerprint.cases], dtype=np.float64)
    n_training = len(fingerprint.cases)
    spacing, reasons = target_spacing(spacings, shapes)
    transpose = transpose_axes(spacing)
    reasons.append(f"transpose {list(transpose)}: the coarsest axis ({transpose[0]}) first")
    new_shapes = [[int(round(s / t * n)) for s, t, n in zip(sp, spacing, sh)] for sp, sh in zip(spacings, shapes)]
    median = np.median(np.array(new_shapes, dtype=np.float64), 0)[list(transpose)]
    spacing_t = spacing[list(transpose)]
    n_voxels = float(np.prod(median, dtype=np.float64) * n_training)
    classes = (nnunet_class_count(fingerprint.labels, fingerprint.regions) if memory_model == "nnunet"
               else fingerprint.num_classes)
    budget = MemoryBudget(gpu_memory_gb, len(fingerprint.channel_names), classes, memory_model, planner,
                          architecture, dict(network_kwargs or {}))
    blocks = f" with {', '.join(map(str, planner.blocks_per_stage(5)))}, … blocks per stage" if planner.blocks_per_stage(1) else ""
    reasons.append(f"preset '{preset}' (nnU-Net's {planner.plans_name}): {planner.encoder} encoder{blocks}, "
                   f"{planner.conv_per_stage_decoder} conv unit(s) per decoder level")
    configurations = _plan_3d(spacing_t, median, n_voxels, n_training, budget, fingerprint, reasons)
    plan_2d = plan_configuration(spacing_t[1:], median[1:], n_voxels, budget, "2d", fingerprint)
    if plan_2d is None:
        reasons.append(f"no 2d: the median slice {_fmt(median[1:], 4)} is too small to pool")
    else:
        configurations = {"2d": replace(plan_2d, batch_dice=True), **configurations}
    if not configurations:
        raise UserError("fingerprint", f"the median image {_fmt(median, 4)} is too small for any U-Net")
    return Plans(
        dataset_name=dataset_name, transpose=transpose,
        original_median_spacing=tuple(float(v) for v in np.median(spacings, 0)[list(transpose)]),
        original_median_shape=tuple(float(v) for v in np.median(shapes, 0)[list(transpose)]),
        configurations=_select(configurations, configs), intensity_per_channel=dict(fingerprint.intensity_per_channel),
        channel_names=dict(fingerprint.channel_names), labels=dict(fingerprint.labels),
        gpu_memory_gb=float(gpu_memory_gb), reasons=tuple(reasons),
        extra={"memory_model": memory_model, "preset": preset},
        regions=fingerprint.regions,
    )


def _plan_3d(spacing: np.ndarray, median: np.ndarray, n_voxels: float, n_training: int, budget: MemoryBudget,
             fingerprint: Fingerprint, reasons: list[str]) -> dict[str, ConfigurationPlan]:
    """3d_fullres, 3d_lowres and the cascade (ordered as nnU-Net writes them)."""
    if median[0] == 1:
        reasons.append("no 3D configurations: the data is 2D (median size 1 on the first axis)")
        return {}
    fullres = plan_configuration(spacing, median, n_voxels, budget, "3d_fullres", fingerprint)
    if fullres is None:
        reasons.append(f"no 3D configurations: the median image {_fmt(median, 4)} is too small to pool")
        return {}
    lowres, lowres_reason = plan_lowres(fullres, median, n_training, budget, fingerprint)
    reasons.append(lowres_reason)
    if lowres is None:
        return {"3d_fullres": fullres}
    dice = "batch Dice: on for 3d_fullres (a lowres stage exists), off for 3d_lowres"
    fullres = replace(fullres, batch_dice=True, reasons=fullres.reasons + (dice,))
    cascade = replace(fullres, previous_stage="3d_lowres", reasons=fullres.reasons + (
        "3d_cascade_fullres: 3d_fullres with the one-hot 3d_lowres prediction as extra input channels",))
    return {"3d_lowres": replace(lowres, next_stage="3d_cascade_fullres"), "3d_fullres": fullres,
            "3d_cascade_fullres": cascade}


def _select(configurations: dict[str, ConfigurationPlan], configs: Sequence[str] | None
            ) -> dict[str, ConfigurationPlan]:
    """Keep the requested configurations; the cascade stays only alongside 3d_lowres."""
    if configs is None:
        return configurations
    missing = [c for c in configs if c not in configurations]
    if missing:
        raise UserError("--configs", f"{missing[0]} does not apply to this dataset "
                                     f"(applicable: {', '.join(configurations)}); see plans.json reasons")
    wanted = set(configs) | ({"3d_cascade_fullres"} if {"3d_lowres", "3d_fullres"} <= set(configs) else set())
    selected = {name: plan for name, plan in configurations.items() if name in wanted}
    if "3d_lowres" in selected and "3d_cascade_fullres" not in selected:
        selected["3d_lowres"] = replace(selected["3d_lowres"], next_stage=None)
    if "3d_cascade_fullres" in selected and "3d_lowres" not in selected:
        del selected["3d_cascade_fullres"]
    return selected


def check_arguments(gpu_memory_gb: float | None, configs: Sequence[str] | None, memory_model: str,
                    preset: str = "default") -> None:
    get_preset(preset)
    if gpu_memory_gb is not None:
        check_gpu_memory(gpu_memory_gb)
    if memory_model not in MEMORY_MODELS:
        raise UserError("--memory-model", f"unknown model '{memory_model}' (choose from {MEMORY_MODELS})")
    unknown = [c for c in configs or () if c not in CONFIGURATIONS]
    if unknown:
        raise UserError("--configs", f"unknown configuration '{unknown[0]}' (choose from {CONFIGURATIONS})")


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"
