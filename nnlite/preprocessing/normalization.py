"""Per-channel intensity normalization as planned (nnU-Net's default normalization schemes).

Schemes (`ConfigurationPlan.normalization`, one per channel):
- "zscore": (x - mean) / std over the cropped image; with `use_mask_for_norm` the statistics come
  from, and only apply to, voxels inside the nonzero region (seg >= 0); outside voxels keep 0.
- "ct": clip to the dataset's foreground 0.5 / 99.5 percentiles, then subtract the dataset's
  foreground mean and divide by its std (`Plans.intensity_per_channel`).
- "none": unchanged. "rescale_0_1": (x - min) / (max - min) per image. "rgb_0_1": x / 255 for 8-bit
  RGB channels (nnU-Net's "rgb_to_0_1"); values outside 0..255 are refused.
Statistics accumulate in float64 (nnU-Net accumulates in float32, which loses ~1e-3 of the std on
images with a large offset); the image itself stays float32. Results agree with nnU-Net to ~1e-6.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from nnlite.common.layout import PLANS_FILE
from nnlite.common.errors import UserError
from nnlite.plans import IntensityStats

STD_FLOOR = 1e-8  # nnU-Net's eps: std (and max - min) never below this, so constant images stay finite
RGB_MAX = 255.0  # nnU-Net's RGBTo01Normalization: 8-bit colour


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / max(std, 1e-8); with `mask` (bool, same shape) only masked voxels are used/changed."""
    image = image.astype(np.float32, copy=False)
    if mask is not None and not mask.any():  # an empty region has no statistics; nothing inside it to normalize either
        return image
    inside = image if mask is None else image[mask]
    inside -= np.float32(inside.mean(dtype=np.float64))
    inside /= np.float32(max(inside.std(dtype=np.float64), STD_FLOOR))
    if mask is not None:
        image[mask] = inside
    return image


def ct_normalize(image: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Clip to the dataset's foreground [0.5, 99.5] percentiles, then global foreground z-score."""
    image = image.astype(np.float32, copy=False)
    np.clip(image, stats.percentile_00_5, stats.percentile_99_5, out=image)
    image -= stats.mean
    image /= max(stats.std, STD_FLOOR)
    return image


def rescale_0_1(image: np.ndarray) -> np.ndarray:
    """(x - min) / max(max - min, 1e-8) over the image."""
    image = image.astype(np.float32, copy=False)
    image -= image.min()
    image /= max(float(image.max()), STD_FLOOR)
    return image


def rgb_0_1(image: np.ndarray) -> np.ndarray:
    """x / 255: an 8-bit colour channel to [0, 1] (nnU-Net refuses other ranges: so does nnlite)."""
    image = image.astype(np.float32, copy=False)
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > RGB_MAX:
        raise UserError("rgb_to_0_1 channel", f"values {low:g}..{high:g} lie outside 0..{RGB_MAX:g} "
                        "(the scheme expects 8-bit colour)")
    image /= RGB_MAX
    return image


def normalize_channel(image: np.ndarray, scheme: str, mask: np.ndarray | None = None,
                      stats: IntensityStats | None = None) -> np.ndarray:
    """Normalize one channel (*spatial) float32 in place (returns it). `mask` only for zscore."""
    if scheme == "zscore":
        return zscore(image, mask)
    if scheme == "ct":
        if stats is None:
            raise UserError(PLANS_FILE, "CT normalization needs intensity_per_channel statistics")
        return ct_normalize(image, stats)
    if scheme == "rescale_0_1":
        return rescale_0_1(image)
    if scheme == "rgb_0_1":
        return rgb_0_1(image)
    if scheme == "none":
        return image.astype(np.float32, copy=False)
    raise UserError(PLANS_FILE, f"unknown normalization scheme {scheme!r}")


def normalize(data: np.ndarray, seg: np.ndarray, schemes: Sequence[str],
              use_mask_for_norm: Sequence[bool],
              intensity_per_channel: Mapping[str, IntensityStats]) -> np.ndarray:
    """Normalize data (C, *spatial) float32 in place, channel by channel.

    seg (1, *spatial): labels with -1 outside the nonzero region (from cropping); voxels with
    seg >= 0 form the mask of masked z-score. Only "zscore" honours use_mask_for_norm, as in nnU-Net.
    """
    if len(schemes) != data.shape[0]:
        raise UserError(PLANS_FILE, f"{len(schemes)} normalization schemes for {data.shape[0]} channels")
    mask = seg[0] >= 0
    for c, scheme in enumerate(schemes):
        channel_mask = mask if use_mask_for_norm[c] and scheme == "zscore" else None
        data[c] = normalize_channel(data[c], scheme, channel_mask, intensity_per_channel.get(str(c)))
    return data
