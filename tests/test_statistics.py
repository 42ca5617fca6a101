"""The intensity statistics give the bits of the numpy calls nnU-Net makes on the concatenated samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnlite.planning.statistics as statistics
from nnlite.planning.statistics import (PERCENTILES, Drawn, interpolate_percentiles, intensity_statistics,
                                        mean_and_std_like_numpy, order_statistics, pairwise_sum)

SETTINGS = settings(max_examples=40, deadline=None)
LEAVES = st.sampled_from([128, 1000, 4096, statistics.LEAF_SIZE])


def draw_cases(seed: int, n_cases: int, n_samples: int, rounded: bool) -> tuple[np.ndarray, list[Drawn]]:
    """Per case: foreground voxels, n_samples drawn with replacement → concatenated samples + Drawn."""
    rng = np.random.default_rng(seed)
    samples, drawn = [], []
    for _ in range(n_cases):
        pixels = (rng.standard_normal(int(rng.integers(1, 400))) * rng.uniform(1, 1e5)).astype(np.float32)
        if rounded:  # many equal values, as in integer-valued scans (+ 0.0: no -0.0, see statistics)
            pixels = np.round(pixels / 100) + np.float32(0.0)
        index = rng.integers(0, pixels.size, n_samples)
        samples.append(pixels[index])
        counts = np.bincount(index, minlength=pixels.size)
        drawn.append(Drawn(pixels[counts > 0], counts[counts > 0]))
    return np.concatenate(samples), drawn


def bits(values) -> list[bytes]:
    return [np.float64(v).tobytes() for v in np.atleast_1d(values)]


@SETTINGS
@given(size=st.integers(1, 200_000), leaf=LEAVES, seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_pairwise_sum_mean_and_std_have_numpys_bits(size, leaf, seed, dtype):
    x = (np.random.default_rng(seed).standard_normal(size) * 1e4 + 3e4).astype(dtype)
    assert np.add.reduce(x).tobytes() == pairwise_sum(x, leaf).tobytes()
    assert bits([np.mean(x), np.std(x)]) == bits(mean_and_std_like_numpy(x, leaf))


@SETTINGS
@given(seed=st.integers(0, 2**16), n_cases=st.integers(1, 6), n_samples=st.integers(1, 3000),
       rounded=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_percentiles_from_counts_have_numpys_bits(seed, n_cases, n_samples, rounded, dtype):
    samples, drawn = draw_cases(seed, n_cases, n_samples, rounded)
    samples = samples.astype(dtype)  # float64: a case without foreground promoted the concatenation
    ours = interpolate_percentiles(samples.size, lambda ranks: order_statistics(drawn, ranks), samples.dtype)
    assert bits(np.percentile(samples, PERCENTILES)) == bits(ours)


@pytest.mark.parametrize("share", [statistics.DRAWN_SHARE_FOR_COUNTS, 0.0])  # counts, then partition
def test_intensity_statistics_equal_nnunets_numpy_calls(monkeypatch, share):
    monkeypatch.setattr(statistics, "DRAWN_SHARE_FOR_COUNTS", share)
    for seed in range(5):
        samples, drawn = draw_cases(seed, 20, 5000, rounded=seed % 2 == 0)
        low, median, high = np.percentile(samples, PERCENTILES)  # nnU-Net's median is the 50th percentile
        expected = (np.mean(samples), np.std(samples), median, np.min(samples), np.max(samples), low, high)
        stats = intensity_statistics(samples.copy(), drawn)
        ours = (stats.mean, stats.std, stats.median, stats.min, stats.max, stats.percentile_00_5,
                stats.percentile_99_5)
        assert bits(expected) == bits(ours)
