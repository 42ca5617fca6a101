"""Resample images, label maps and probabilities between spacings, numerically like nnU-Net.

nnU-Net resamples with skimage `resize(order, mode='edge', anti_aliasing=False)`, which is
`scipy.ndimage.zoom(order, mode='nearest', grid_mode=True)` followed by clipping to the input's
value range. `grid_mode=True` is the align_corners=False convention: output voxel i samples the
input at (i + 0.5) * n_in / n_out - 0.5, and 'nearest' repeats the edge voxel beyond the border.

That operation is separable: padding, the spline prefilter and the tensor-product evaluation all
act axis by axis. So we build, once per (n_in, n_out, order), the exact 1-D linear operator as a
dense (n_out, n_in) matrix -- by running the same 1-D `ndimage.zoom` on unit vectors -- and apply
it along each axis with a float32 matrix product (BLAS). For order 3 this replaces 64 spline taps
per output voxel in float64 with three matrix products, and agrees with the 3-D zoom to ~1e-6.

Label maps follow batchgenerators' `resize_segmentation`: with order k ≥ 1 (nnU-Net's default is
1) every label's 0/1 indicator is interpolated with order k and clipped to [0, 1], a voxel gets the
label with the highest score, exact ties go to the nearest-neighbour label when it is one of the
tied labels (else the smallest tied label); order 0 is plain nearest neighbour. So no label that is
absent from the input can appear.

Anisotropic data (see `separate_z_axis`) is resampled in-plane with the given order and with
nearest neighbour along the coarse axis, as nnU-Net's `resample_data_or_seg` does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD: max/min spacing above this → separate z
ORDER_DATA = 3  # cubic spline for images
ORDER_SEG = 1  # linear interpolation of one-hot label indicators (the plans' default)
ORDER_Z = 0  # nearest neighbour along the coarse axis when resampling separately


def new_shape_for(shape: Sequence[int], old_spacing: Sequence[float],
                  new_spacing: Sequence[float]) -> tuple[int, ...]:
    """round(shape × old/new spacing) per axis, with Python's round (half to even) like nnU-Net."""
    return tuple(int(round(o / n * s)) for s, o, n in zip(shape, old_spacing, new_spacing))


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    top = max(spacing)
    return [axis for axis, value in enumerate(spacing) if top / value == 1]


def _is_anisotropic(spacing: Sequence[float]) -> bool:
    return max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis to resample with nearest neighbour, or None (nnU-Net's determine_do_sep_z_and_axis).

    The current spacing decides first (max/min > 3), else the new spacing does; when several axes
    share the largest spacing, e.g. (0.24, 1.25, 1.25), nothing is resampled separately.
    """
    if _is_anisotropic(current_spacing):
        axes = _lowres_axes(current_spacing)
    elif _is_anisotropic(new_spacing):
        axes = _lowres_axes(new_spacing)
    else:
        return None
    return axes[0] if len(axes) == 1 else None


@lru_cache(maxsize=256)
def axis_operator(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of the 1-D resize: column j = zoom of the j-th unit vector."""
    eye = np.eye(n_in, dtype=np.float64)
    columns = [ndimage.zoom(e, n_out / n_in, order=order, mode="nearest", grid_mode=True) for e in eye]
    matrix = np.stack(columns, axis=1)
    if matrix.shape != (n_out, n_in):  # zoom derives its output length by rounding n_in × factor
        raise ValueError(f"1-D zoom {n_in} → {n_out} gave {matrix.shape[0]} samples")
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=256)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output sample for nearest neighbour (order 0, align_corners=False)."""
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    source = ndimage.map_coordinates(np.arange(n_in, dtype=np.float64), coords[None], order=0,
                                     mode="nearest")
    indices = source.astype(np.intp)
    indices.setflags(write=False)
    return indices


def _apply_axis(array: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """Multiply `matrix` (n_out, n_in) into `array` along `axis` (dtype of `array` kept)."""
    moved = np.moveaxis(array, axis, -1)
    out = moved @ matrix.T.astype(array.dtype, copy=False)
    return np.moveaxis(out, -1, axis)


def resize_separable(array: np.ndarray, new_shape: Sequence[int], order: int,
                  axes: Sequence[int]) -> np.ndarray:
    """Separable zoom of `array` along `axes` to `new_shape` (those axes only), without clipping.

    Axes that shrink go first, so the later products run on less data.
    """
    target = dict(zip(axes, new_shape))
    for axis in sorted(axes, key=lambda a: target[a] / array.shape[a]):
        if array.shape[axis] != target[axis]:
            array = _apply_axis(array, axis_operator(array.shape[axis], target[axis], order), axis)
    return np.ascontiguousarray(array)


def resize_nearest(array: np.ndarray, new_size: int, axis: int) -> np.ndarray:
    """Nearest-neighbour resize along one axis (mode 'nearest', align_corners=False)."""
    if array.shape[axis] == new_size:
        return array
    return np.take(array, nearest_indices(array.shape[axis], new_size), axis=axis)


def _resize_image_channel(image: np.ndarray, new_shape: tuple[int, ...], order: int,
                          sep_axis: int | None) -> np.ndarray:
    """One channel (*spatial) → (*new_shape) float32, clipped like skimage (per slice if separate)."""
    if sep_axis is None:
        out = resize_separable(image, new_shape, order, range(image.ndim))
        return np.clip(out, image.min(), image.max(), out=out)
    plane = [a for a in range(image.ndim) if a != sep_axis]
    out = resize_separable(image, [new_shape[a] for a in plane], order, plane)
    low = image.min(axis=tuple(plane), keepdims=True)  # skimage clips each 2-D slice to its own range
    high = image.max(axis=tuple(plane), keepdims=True)
    np.clip(out, low, high, out=out)
    return resize_nearest(out, new_shape[sep_axis], sep_axis)


def resample_image(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                   new_spacing: Sequence[float], order: int = ORDER_DATA,
                   order_z: int = ORDER_Z) -> np.ndarray:
    """Images or probabilities (C, *spatial) → float32 (C, *new_shape).

    Order 3 for images, 1 for probabilities; separate-z rule of `separate_z_axis`. An unchanged
    shape returns the input untouched (as nnU-Net does).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    if order_z != ORDER_Z:
        raise ValueError("only nearest neighbour (order_z 0) is supported along the separate axis")
    sep_axis = separate_z_axis(current_spacing, new_spacing)
    data = np.asarray(data, dtype=np.float32)
    out = np.empty((data.shape[0],) + new_shape, dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = _resize_image_channel(data[c], new_shape, order, sep_axis)
    return out


def _resize_labels(seg: np.ndarray, new_shape: tuple[int, ...], axes: list[int],
                   order: int) -> np.ndarray:
    """Label map → new_shape along `axes`: argmax of indicators interpolated with `order` (≥ 1) and
    clipped to [0, 1] like skimage; order 0 is nearest neighbour.

    Exact ties go to the nearest-neighbour label when it is among the tied ones; otherwise the
    smallest tied label wins (labels are visited in ascending order, only a strictly higher score
    takes over). Scores are float64 so that ties at dyadic weights (every even factor) are exact.
    """
    labels = np.unique(seg)
    if len(labels) == 1:
        shape = list(seg.shape)
        for i, axis in enumerate(axes):
            shape[axis] = new_shape[i]
        return np.full(shape, labels[0], dtype=seg.dtype)
    nearest = seg
    for i, axis in enumerate(axes):
        nearest = resize_nearest(nearest, new_shape[i], axis)
    if order == 0:
        return nearest
    best = win = nn_score = None
    for index, label in enumerate(labels):
        score = resize_separable((seg == label).astype(np.float64), new_shape, order, axes)
        np.clip(score, 0.0, 1.0, out=score)  # splines overshoot; order 1 stays in [0, 1] anyway
        if best is None:
            best, win, nn_score = score, np.zeros(score.shape, np.int16), np.zeros_like(score)
        else:
            better = score > best
            win[better] = index
            np.maximum(best, score, out=best)
        np.copyto(nn_score, score, where=nearest == label)
    nn_wins = (nn_score == best) & (best > 0)
    result = labels[win]
    result[nn_wins] = nearest[nn_wins]
    return result.astype(seg.dtype, copy=False)


def resample_seg(seg: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                 new_spacing: Sequence[float], order: int = ORDER_SEG) -> np.ndarray:
    """Label map (1, *spatial) → (1, *new_shape), same dtype; -1 (outside) is a label like any.

    `order` is the in-plane interpolation order of the label indicators (0: nearest neighbour).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(seg.shape[1:]) == new_shape:
        return seg
    sep_axis = separate_z_axis(current_spacing, new_spacing)
    labels = seg[0]
    if sep_axis is None:
        return _resize_labels(labels, new_shape, list(range(labels.ndim)), order)[None]
    plane = [a for a in range(labels.ndim) if a != sep_axis]
    plane_shape = tuple(new_shape[a] for a in plane)
    if tuple(labels.shape[a] for a in plane) != plane_shape:
        labels = _resize_labels(labels, plane_shape, plane, order)
    return resize_nearest(labels, new_shape[sep_axis], sep_axis)[None]
