"""U-Net topology from spacing and patch: nnU-Net's pooling/kernel loop and patch arithmetic.

Pure functions on tuples; the numbers follow nnU-Net v2 exactly (docs/planning.md), including its
float patch sizes: the initial patch may be clipped to a non-integer median shape, which
`pool_and_conv_props` pads up to an integer multiple of the total stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_FEATURE_MAP = 4  # UNet_featuremap_min_edge_length: bottleneck edge ≥ 4 voxels on pooled axes
POOL_MIN_SIZE = 2 * MIN_FEATURE_MAP  # an axis may be pooled while it has ≥ 8 voxels
SINGLE_AXIS_MIN_SIZE = 3 * MIN_FEATURE_MAP  # ... or ≥ 12 when it is the only axis left to pool
SPACING_RATIO_LIMIT = 2  # pool / use kernel 3 on axes within a factor 2 of the finest spacing
INITIAL_PATCH_EDGE = {3: 256, 2: 2048}  # the initial patch has the volume of 256³ / 2048²


@dataclass(frozen=True)
class Topology:
    """Result of the pooling loop: strides and kernels per stage, the padded patch, its divisor."""

    strides: tuple[tuple[int, ...], ...]  # stage 0 first, all ones
    kernel_sizes: tuple[tuple[int, ...], ...]  # one per stage, the bottleneck's all 3
    patch_size: tuple[int, ...]  # padded up to a multiple of `divisible_by`
    divisible_by: tuple[int, ...]  # 2 ** (number of poolings per axis)

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[float]:
    """Patch of equal physical extent per axis with the volume of 256³ (3D) / 2048² (2D), clipped
    to the median shape (which may be fractional, as in nnU-Net)."""
    inverse = 1 / np.asarray(spacing, dtype=np.float64)
    edge = INITIAL_PATCH_EDGE[len(spacing)]
    scale = (edge ** len(spacing) / np.prod(inverse)) ** (1 / len(spacing))
    rounded = [round(v) for v in inverse * scale]  # Python round: half to even, as the reference
    return [min(p, m) for p, m in zip(rounded, median_shape)]


def pool_and_conv_props(spacing: Sequence[float], patch: Sequence[float]) -> Topology:
    """nnU-Net's `get_pool_and_conv_props` loop (no cap on the number of poolings).

    Each iteration pools (stride 2) every axis that still has ≥ 8 voxels and whose spacing is within
    a factor 2 of the finest such axis (a lone axis needs ≥ 12). An axis' kernel becomes 3 once its
    spacing is within a factor 2 of the finest spacing of all axes, and stays 3.
    """
    ndim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch]
    strides = [(1,) * ndim]
    kernels: list[tuple[int, ...]] = []
    n_pools = [0] * ndim
    kernel = [1] * ndim
    while True:
        axes = _axes_to_pool(current_spacing, current_size)
        if not axes:
            break
        finest = min(current_spacing)
        kernel = [3 if k == 3 or s / finest < SPACING_RATIO_LIMIT else 1 for k, s in zip(kernel, current_spacing)]
        for axis in axes:
            n_pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(tuple(2 if axis in axes else 1 for axis in range(ndim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * ndim)  # bottleneck
    divisor = tuple(2**n for n in n_pools)
    return Topology(tuple(strides), tuple(kernels), pad_to_multiple(patch, divisor), divisor)


def _axes_to_pool(spacing: list[float], size: list[float]) -> list[int]:
    """Axes pooled in this iteration (empty: stop)."""
    big_enough = [a for a in range(len(size)) if size[a] >= POOL_MIN_SIZE]
    if not big_enough:
        return []
    finest = min(spacing[a] for a in big_enough)
    axes = [a for a in big_enough if spacing[a] / finest < SPACING_RATIO_LIMIT]
    if len(axes) == 1 and size[axes[0]] < SINGLE_AXIS_MIN_SIZE:
        return []
    return axes


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """Smallest multiple of divisor per axis that is ≥ shape (shape may be fractional)."""
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, divisor))


def shrink_step(spacing: Sequence[float], topology: Topology, median_shape: Sequence[float]) -> Topology | None:
    """One step of nnU-Net's patch-shrinking loop (None: the patch cannot shrink any further).

    Reduce the axis whose patch is largest relative to the median shape (the last such axis on a
    tie, as argsort does). Subtracting the current divisor could skip valid sizes (256 - 64 = 192
    skips 224), so the divisor is recomputed for the reduced patch and that is subtracted instead.
    Where nnU-Net's step would leave no pooling at all (a 1-stage network it cannot build, e.g. the
    finest axis drops below 12 voxels while the others are ≥ 2× coarser), the next axis in the
    ratio order is reduced instead; this only happens at budgets far below 8 GB.
    """
    ratios = [p / m for p, m in zip(topology.patch_size, median_shape)]
    for axis in reversed(np.argsort(ratios)):
        smaller = _reduce_axis(spacing, topology, int(axis))
        if smaller is not None and smaller.n_stages >= 2:
            return smaller
    return None


def _reduce_axis(spacing: Sequence[float], topology: Topology, axis: int) -> Topology | None:
    patch = list(topology.patch_size)
    trial = list(patch)
    trial[axis] -= topology.divisible_by[axis]
    if trial[axis] < 1:
        return None
    divisor = pool_and_conv_props(spacing, trial).divisible_by
    patch[axis] -= divisor[axis]
    return pool_and_conv_props(spacing, patch) if patch[axis] >= 1 else None
