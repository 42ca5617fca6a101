"""The per-sample augmentation pipeline: crop exactly what the sampled affine needs, warp, intensity.

Order (nnU-Net's, Isensee et al., Nature Methods 2021): spatial (rotation, scaling, mirroring, see
`spatial_transforms`) → noise → blur → brightness → contrast → low resolution → gamma (inverted) →
gamma → masked-normalization channels zeroed where seg < 0 → seg -1 → 0. Validation samples use
`IDENTITY` (crop only). Parameters are drawn first from an explicit `np.random.Generator`
(`sample_augment_params`), then `crop_and_augment` applies them, so a seed reproduces a sample.

When no channel is normalized inside the mask, OUTSIDE (-1) is merged into background before a
warp rather than after it (the reference keeps it a separate label through the warp): the result
is the same except where outside and background together outweigh a label that beats each alone,
and the warp interpolates one label channel fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnlite.loading.intensity_transforms import (STEP_NAMES, IntensityConfig, IntensityParams,
                                                 apply_intensity, sample_intensity_params)
from nnlite.loading.sampling import read_region
from nnlite.loading.spatial_transforms import (SpatialConfig, SpatialParams, apply_spatial, sample_matrix,
                                               sample_spatial_params, source_box, spatial_config)
from nnlite.plans import ConfigurationPlan


@dataclass(frozen=True)
class AugmentConfig:
    """Everything the pipeline needs to know about a configuration."""

    spatial: SpatialConfig  # patch as (Z, Y, X); 2D configurations use (1, Y, X)
    intensity: IntensityConfig
    squeeze: bool  # 2D configuration: return (C, Y, X) instead of (C, 1, Y, X)
    masked_channels: tuple[int, ...] = ()  # channels normalized inside the mask: zeroed outside

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.spatial.patch_size


@dataclass(frozen=True)
class AugmentParams:
    spatial: SpatialParams
    intensity: IntensityParams


IDENTITY = AugmentParams(SpatialParams(None, None, ()), IntensityParams())
TRANSFORM_NAMES = ("rotation", "scaling", "mirror") + STEP_NAMES


def augment_config(config: ConfigurationPlan) -> AugmentConfig:
    """The reference's augmentation settings for a configuration (dummy-2D, rotation, mirroring)."""
    spatial = spatial_config(tuple(config.patch_size))
    squeeze = len(config.patch_size) == 2
    dummy_2d = spatial.planar and not squeeze
    intensity = IntensityConfig(n_channels=len(config.normalization), n_spatial=len(config.patch_size),
                                lowres_ignore_axes=(0,) if dummy_2d else ())
    masked = tuple(c for c, flag in enumerate(config.use_mask_for_norm) if flag)
    return AugmentConfig(spatial, intensity, squeeze, masked)


def sample_augment_params(rng: np.random.Generator, cfg: AugmentConfig) -> AugmentParams:
    """Spatial parameters first, then the intensity steps."""
    spatial = sample_spatial_params(rng, cfg.spatial)
    return AugmentParams(spatial, sample_intensity_params(rng, cfg.intensity))


def fired_transforms(params: AugmentParams) -> set[str]:
    """Names (of TRANSFORM_NAMES) of the transforms that fired; "mirror" = any axis mirrored."""
    fired = {step.name for step in params.intensity.steps}
    spatial = params.spatial
    fired |= {name for name, on in (("rotation", spatial.angles is not None),
                                    ("scaling", spatial.scale is not None),
                                    ("mirror", bool(spatial.flip_axes))) if on}
    return fired


def patch_source_box(start: tuple[int, ...], params: SpatialParams,
                     cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, centre): the input box [lo, hi) a patch at lower corner `start` reads, and the
    patch centre in input voxel coordinates."""
    patch = np.asarray(cfg.patch_size)
    centre = np.asarray(start, dtype=float) + (patch - 1) / 2
    if not params.needs_warp:
        lo = np.asarray(start, dtype=int)
        return lo, lo + patch, centre
    planar = cfg.spatial.planar
    lo, hi = source_box(sample_matrix(params, planar), centre, cfg.patch_size,
                        (1, 2) if planar else (0, 1, 2))
    return lo, hi, centre


def read_source(data: np.ndarray, seg: np.ndarray, start: tuple[int, ...], params: AugmentParams,
                cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The input box a sample's spatial transform reads: image float32 (C, *box), seg int16
    (1, *box), and the patch centre in box coordinates (the crop half of `crop_and_augment`; the
    device pipeline, `device_augmentation`, applies the rest to a whole batch)."""
    lo, hi, centre = patch_source_box(start, params.spatial, cfg)
    region, labels = read_region(data, seg, lo, hi)
    if not cfg.masked_channels and params.spatial.needs_warp:
        # OUTSIDE becomes background at the end anyway: merged now, the warp has one label fewer
        np.maximum(labels, 0, out=labels)
    return region, labels, centre - lo


def crop_and_augment(data: np.ndarray, seg: np.ndarray, start: tuple[int, ...],
                     params: AugmentParams, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample from a case's arrays data (C, Z, Y, X) and seg (1, Z, Y, X).

    Returns image float32 (C, *patch) and seg int16 (1, *patch) with OUTSIDE already mapped to 0
    (patch without the unit axis for 2D configurations).
    """
    region, labels, centre = read_source(data, seg, start, params, cfg)
    image, labels = apply_spatial(torch.from_numpy(region), torch.from_numpy(labels), params.spatial,
                                  cfg.patch_size, cfg.spatial.planar, centre)
    if cfg.squeeze:
        image, labels = image[:, 0], labels[:, 0]
    if params.intensity.steps:
        image = apply_intensity(image, params.intensity)
    outside = labels < 0
    if cfg.masked_channels:
        image[list(cfg.masked_channels)] = image[list(cfg.masked_channels)].masked_fill(outside, 0.0)
    labels = labels.masked_fill(outside, 0)
    return image, labels

