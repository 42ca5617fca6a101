"""nnU-Net's foreground intensity statistics, bit for bit, with less work.

nnU-Net concatenates every case's sampled foreground intensities (1e8 values per channel) and calls
np.mean, np.std, np.min, np.max and np.percentile on the result. Those calls copy the 400 MB array
(std's deviations) or partition all of it (percentiles). The same numbers come out here with less:

- mean and std: numpy sums an array pairwise: it halves it (the first half rounded down to a multiple of 8)
  until a part holds at most 128 values. `pairwise_sum` walks the top of that tree itself and lets
  numpy sum parts of at most LEAF_SIZE values, so the squared deviations exist one part at a time;
  the additions happen in the same order, so the result has the same bits.
- percentiles: order statistics depend only on how often each value was drawn, not on the order.
  Each case reports its drawn voxels with their counts (`Drawn`); sorting those (at most the
  foreground voxels, ~1e6 for Hippocampus, instead of 1e8 samples) gives the values at numpy's
  ranks, and `interpolate_percentiles` repeats np.percentile's "linear" arithmetic on them.
  When the drawn voxels are not much fewer than the samples, np.percentile partitions the samples.
  One difference remains: -0.0 and 0.0 compare equal, so which of them a partition leaves at a
  rank is an accident of numpy's algorithm; here a zero percentile, min or max is always 0.0.

tests/test_statistics.py checks each function against the numpy call it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from nnlite.plans import IntensityStats

PERCENTILES = (0.5, 50.0, 99.5)  # robust range (CT clipping) and median
LEAF_SIZE = 1 << 18  # values per part summed by numpy in one call (1 MB of float32: stays in cache)
NUMPY_SPLIT_MULTIPLE = 8  # numpy rounds the first half of a pairwise split down to a multiple of 8
NUMPY_BLOCK = 128  # numpy sums at most this many values without splitting
DRAWN_SHARE_FOR_COUNTS = 0.25  # counts are used while drawn voxels ≤ this share of the samples


@dataclass
class Drawn:
    """One case and channel: the foreground voxels that were drawn (values) and how often (counts)."""

    values: np.ndarray
    counts: np.ndarray


def pairwise_sum(x: np.ndarray, leaf_size: int = LEAF_SIZE,
                 part_values: Callable[[np.ndarray], np.ndarray] = lambda part: part) -> np.generic:
    """np.add.reduce(part_values(x)) of a 1-D array, with the same bits, one part ≤ leaf_size at a time.

    `part_values` maps a part of x to the values to sum (elementwise, so parts can go through a buffer).
    """
    if x.size > max(leaf_size, NUMPY_BLOCK):
        half = x.size // 2
        half -= half % NUMPY_SPLIT_MULTIPLE
        return pairwise_sum(x[:half], leaf_size, part_values) + pairwise_sum(x[half:], leaf_size, part_values)
    return np.add.reduce(part_values(x))


def mean_and_std_like_numpy(samples: np.ndarray, leaf_size: int = LEAF_SIZE) -> tuple[float, float]:
    """(np.mean(samples), np.std(samples)) without the array-sized copy of the deviations.

    Follows numpy's _var: the mean as a 1-element array divided in place (the same bits as
    np.mean), the squared deviations summed pairwise; here each part goes through one reused buffer.
    """
    mean = np.add.reduce(samples, keepdims=True)
    np.true_divide(mean, np.intp(samples.size), out=mean, casting="unsafe")
    buffer = np.empty(min(samples.size, max(leaf_size, NUMPY_BLOCK)), samples.dtype)

    def squared_deviations(part: np.ndarray) -> np.ndarray:
        deviations = np.subtract(part, mean, out=buffer[: part.size])
        return np.square(deviations, out=deviations)

    total = pairwise_sum(samples, leaf_size, squared_deviations)
    variance = total.dtype.type(total / np.intp(samples.size))
    return float(mean[0]), float(variance.dtype.type(np.sqrt(variance)))


def order_statistics(drawn: list[Drawn], ranks: np.ndarray) -> np.ndarray:
    """The values at 0-based `ranks` of the sorted multiset that `drawn` describes (float32)."""
    values = np.concatenate([d.values for d in drawn])
    counts = np.concatenate([d.counts for d in drawn])
    order = np.argsort(values)  # equal values may come in any order: their counts add up the same
    at_or_below = np.cumsum(counts[order])  # samples ≤ each sorted value
    return values[order][np.searchsorted(at_or_below, ranks, side="right")] + 0.0  # -0.0 → 0.0


def interpolate_percentiles(n: int, value_at: Callable[[np.ndarray], np.ndarray], dtype: np.dtype) -> np.ndarray:
    """np.percentile(a, PERCENTILES) for `n` samples, given `value_at(ranks)` of sorted `a`.

    numpy's "linear" method: virtual index (n - 1) q, its floor and the next rank (both the last
    rank at or above it), then a lerp computed from whichever end is nearer (gamma ≥ 0.5: from b).
    """
    quantiles = np.true_divide(np.asarray(PERCENTILES), 100)
    virtual = (n - 1) * quantiles
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above], following[above] = n - 1, n - 1
    gamma = virtual - previous
    a, b = value_at(np.concatenate([previous, following]).astype(np.intp)).astype(dtype).reshape(2, -1)
    difference = b - a
    result = np.add(a, difference * gamma)
    np.subtract(b, difference * (1 - gamma), out=result, where=gamma >= 0.5, casting="unsafe")
    return result


def intensity_statistics(samples: np.ndarray, drawn: list[Drawn]) -> IntensityStats:
    """Statistics of one channel's concatenated samples (1-D), as nnU-Net computes them.

    `drawn` describes the same samples by value and count (one entry per case with foreground).
    The samples may be partitioned in place (the fallback for many distinct drawn voxels).
    """
    mean, std = mean_and_std_like_numpy(samples)
    # min and max of the samples are those of the drawn voxels (a few, not 1e8 values)
    low_value = float(min(d.values.min() for d in drawn)) + 0.0
    high_value = float(max(d.values.max() for d in drawn)) + 0.0
    n_drawn = sum(d.values.size for d in drawn)
    if n_drawn <= DRAWN_SHARE_FOR_COUNTS * samples.size:
        low, median, high = interpolate_percentiles(
            samples.size, lambda ranks: order_statistics(drawn, ranks), samples.dtype)
    else:
        low, median, high = np.percentile(samples, PERCENTILES, overwrite_input=True)
    return IntensityStats(mean=mean, std=std, median=float(median), min=low_value, max=high_value,
                          percentile_00_5=float(low), percentile_99_5=float(high))
