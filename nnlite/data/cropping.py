"""Crop a case to its nonzero (body) region and put arrays back. Pure array functions.

The nonzero mask is the union over channels of `data != 0` with holes filled, as nnU-Net does.
Segmentations get OUTSIDE_LABEL (-1) where they are background *and* outside that mask, so the
loader and masked normalization can tell body background from the zero surround.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_fill_holes

OUTSIDE_LABEL = -1  # seg value for voxels outside the nonzero region or outside the image


@dataclass(frozen=True)
class Crop:
    """data (C, *cropped), seg (1, *cropped) or None, bbox as [start, stop) per spatial axis."""

    data: np.ndarray
    seg: np.ndarray | None
    bbox: tuple[tuple[int, int], ...]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """(C, *spatial) → bool (*spatial): any channel nonzero, holes filled."""
    return binary_fill_holes(np.any(data != 0, axis=0))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Tight half-open box of the True voxels; the whole array when nothing is True."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None) -> Crop:
    """Crop data (C, *spatial) and seg (1, *spatial) to the nonzero box; mark outside voxels -1."""
    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    region = tuple(slice(start, stop) for start, stop in bbox)
    cropped = data[(slice(None),) + region]
    mask = mask[region]
    if seg is None:
        out_seg = np.where(mask, 0, OUTSIDE_LABEL).astype(np.int8)[None]
    else:
        out_seg = seg[(slice(None),) + region].copy()
        out_seg[(out_seg == 0) & ~mask[None]] = OUTSIDE_LABEL
    return Crop(np.ascontiguousarray(cropped), out_seg, bbox)


def uncrop(array: np.ndarray, bbox: tuple[tuple[int, int], ...], shape: tuple[int, ...],
           fill: float = 0) -> np.ndarray:
    """Put array (..., *cropped) back into a `fill`-valued array (..., *shape) at bbox."""
    lead = array.shape[: array.ndim - len(shape)]
    full = np.full(lead + tuple(shape), fill, dtype=array.dtype)
    region = tuple(slice(start, stop) for start, stop in bbox)
    full[(Ellipsis,) + region] = array
    return full
