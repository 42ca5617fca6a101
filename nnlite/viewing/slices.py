"""Slice pictures of one case as RGB arrays: grey channels, label outlines, an error map and the
uncertainty map as a heat overlay.

Everything here is plain numpy (no plotting library, no Streamlit), so the pictures the app shows
are unit-tested without a browser. Volumes are (Z, Y, X) label maps and (C, Z, Y, X) images with
spacing (z, y, x) in mm (docs/conventions.md); a slice is taken along one of the three axes and
stretched to square pixels, so an anisotropic case keeps its proportions on every axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnlite.evaluation.pictures import intensity_window

MAX_STRETCH = 8  # at most this many screen pixels per voxel along the coarse axis
AXIS_NAMES = ("z (through-plane)", "y", "x")  # axis 0 is the coarsest after reading (conventions.md)
REFERENCE_COLOR = (0, 220, 0)  # outline of the reference labels
PREDICTION_COLOR = (255, 0, 255)  # outline of the predicted labels
FALSE_POSITIVE_COLOR = (255, 40, 40)  # predicted foreground where the reference has background
FALSE_NEGATIVE_COLOR = (40, 120, 255)  # reference foreground the prediction misses or mislabels
ERROR_ALPHA = 0.7  # opacity of the error colours over the grey image
UNCERTAINTY_COLOR = (255, 170, 0)  # the uncertainty overlay: orange, as opaque as the voxel is uncertain
UNCERTAINTY_ALPHA = 0.85  # opacity of the overlay where the uncertainty is 1 (0 where it is 0)


@dataclass(frozen=True)
class Panel:
    """One picture of the viewer: its title and an RGB image (H, W, 3) uint8."""

    title: str
    image: np.ndarray


def to_grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A 2D float plane → RGB uint8 (H, W, 3), values outside the window clipped."""
    low, high = window
    grey = np.clip((plane - low) / (high - low), 0.0, 1.0) * 255.0
    return np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The plane `index` along spatial `axis` (0 z, 1 y, 2 x) of a (Z, Y, X) volume."""
    if not 0 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return np.take(volume, index, axis=axis)


def plane_spacing(spacing: Sequence[float], axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of a slice along `axis`."""
    rows, cols = [s for i, s in enumerate(spacing) if i != axis]
    return float(rows), float(cols)


def square_pixels(image: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Repeat rows or columns (nearest neighbour) so that one pixel is as tall as it is wide."""
    rows_mm, cols_mm = pixel_mm
    fine = min(rows_mm, cols_mm)
    factors = [min(max(s / fine, 1.0), MAX_STRETCH) for s in (rows_mm, cols_mm)]
    for axis, factor in enumerate(factors):
        size = image.shape[axis]
        picks = np.floor(np.arange(round(size * factor)) / factor).astype(int)
        image = np.take(image, np.minimum(picks, size - 1), axis=axis)
    return image


def outline(seg: np.ndarray) -> np.ndarray:
    """Bool (H, W): foreground pixels of a 2D label map whose 4-neighbour has another label
    (the image border counts as background), i.e. the one-pixel boundary of every label."""
    padded = np.pad(seg, 1)
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(seg.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        differs |= shifted != centre
    return differs & (seg > 0)


def error_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, false negatives) of two label maps of the same shape: predicted
    foreground on reference background, and reference foreground not predicted as its label."""
    wrong = pred != ref
    return wrong & (pred > 0) & (ref == 0), wrong & (ref > 0)


def paint(image: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    """A copy of RGB `image` with `mask`'s pixels blended towards `color`."""
    painted = image.astype(np.float32)
    painted[mask] = (1 - alpha) * painted[mask] + alpha * np.asarray(color, dtype=np.float32)
    return painted.round().astype(np.uint8)


def heat(image: np.ndarray, values: np.ndarray, color: Sequence[int] = UNCERTAINTY_COLOR,
         alpha: float = UNCERTAINTY_ALPHA) -> np.ndarray:
    """A copy of RGB `image` (H, W, 3) blended towards `color` pixel by pixel, by `values` (H, W)
    in [0, 1] times `alpha`: a certain pixel stays grey, an uncertain one turns orange."""
    weight = (np.clip(values, 0.0, 1.0) * alpha)[..., None].astype(np.float32)
    painted = (1 - weight) * image.astype(np.float32) + weight * np.asarray(color, dtype=np.float32)
    return painted.round().astype(np.uint8)


def busiest_slice(segs: Sequence[np.ndarray | None], axis: int) -> int:
    """The slice along `axis` with the most foreground voxels over the given label maps (Z, Y, X);
    the middle slice when none holds any."""
    present = [seg for seg in segs if seg is not None]
    if not present:
        return 0
    counts = sum((seg > 0).sum(axis=tuple(i for i in range(3) if i != axis)) for seg in present)
    return int(np.argmax(counts)) if np.any(counts) else present[0].shape[axis] // 2


def render_slice(data: np.ndarray, spacing: Sequence[float], axis: int, index: int,
                 ref: np.ndarray | None = None, pred: np.ndarray | None = None,
                 channel_names: Sequence[str] | None = None,
                 uncertainty: np.ndarray | None = None) -> list[Panel]:
    """The viewer's pictures of one slice: every channel of data (C, Z, Y, X) with the reference
    (green) and prediction (magenta) outlines, then — when both are given — the error map over
    channel 0 (false positives red, false negatives blue), then — when given — the uncertainty
    map (Z, Y, X) in [0, 1] as an orange heat overlay over channel 0 with the prediction's outline.
    Label maps are (Z, Y, X)."""
    names = list(channel_names or [f"channel {c}" for c in range(data.shape[0])])
    pixel_mm = plane_spacing(spacing, axis)
    ref_plane = None if ref is None else take_slice(ref, axis, index)
    pred_plane = None if pred is None else take_slice(pred, axis, index)
    panels = []
    greys = [to_grey(take_slice(channel, axis, index), intensity_window(channel)) for channel in data]
    for name, grey in zip(names, greys):
        if ref_plane is not None:
            grey = paint(grey, outline(ref_plane), REFERENCE_COLOR)
        if pred_plane is not None:
            grey = paint(grey, outline(pred_plane), PREDICTION_COLOR)
        panels.append(Panel(name, square_pixels(grey, pixel_mm)))
    if ref_plane is not None and pred_plane is not None:
        false_pos, false_neg = error_masks(pred_plane, ref_plane)
        errors = paint(paint(greys[0], false_pos, FALSE_POSITIVE_COLOR, ERROR_ALPHA),
                       false_neg, FALSE_NEGATIVE_COLOR, ERROR_ALPHA)
        panels.append(Panel("errors", square_pixels(errors, pixel_mm)))
    if uncertainty is not None:
        overlay = heat(greys[0], take_slice(uncertainty, axis, index))
        if pred_plane is not None:
            overlay = paint(overlay, outline(pred_plane), PREDICTION_COLOR)
        panels.append(Panel("uncertainty", square_pixels(overlay, pixel_mm)))
    return panels
