"""Normalization schemes: statistics (hypothesis), hand-computed values, constant images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.common.errors import UserError
from nnlite.plans import IntensityStats
from nnlite.preprocessing.normalization import ct_normalize, normalize, normalize_channel, rescale_0_1, zscore

SETTINGS = settings(max_examples=30, deadline=None)
CT_STATS = IntensityStats(mean=100.0, std=50.0, median=90.0, min=-3000.0, max=3000.0,
                          percentile_00_5=-1000.0, percentile_99_5=1000.0)


@SETTINGS
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 1000), offset=st.floats(-1000, 1000))
def test_zscore_gives_mean_0_std_1(seed, scale, offset):
    # |offset| ≤ 1000 std: beyond that float32 input itself cannot resolve the std to 1e-3
    image = (np.random.default_rng(seed).normal(size=(6, 7, 8)) * scale + offset * scale).astype(np.float32)
    out = zscore(image.copy())
    assert abs(out.mean()) < 1e-3
    assert abs(out.std() - 1) < 1e-3


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_masked_zscore_normalizes_inside_and_keeps_outside(seed):
    rng = np.random.default_rng(seed)
    image = np.zeros((8, 9, 10), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[1:7, 2:8, 3:9] = True
    image[mask] = rng.normal(loc=300, scale=40, size=mask.sum())
    out = zscore(image.copy(), mask)
    assert abs(out[mask].mean()) < 1e-3 and abs(out[mask].std() - 1) < 1e-3
    assert np.all(out[~mask] == 0)


def test_zscore_hand_computed():
    out = zscore(np.array([1, 2, 3, 4], np.float32))
    expected = (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25)  # population std, as numpy/nnU-Net
    assert np.allclose(out, expected, atol=1e-6)


def test_ct_clips_to_percentiles_then_uses_global_stats():
    out = ct_normalize(np.array([-2000, 0, 50, 3000], np.float32), CT_STATS)
    assert np.allclose(out, [-22, -2, -1, 18])


def test_rescale_0_1_hand_computed():
    assert np.allclose(rescale_0_1(np.array([2, 4, 6], np.float32)), [0, 0.5, 1])


def test_rgb_to_0_1_divides_by_255_and_refuses_other_ranges():
    # nnU-Net's RGBTo01Normalization: x / 255, asserting 0 <= x <= 255
    out = normalize_channel(np.array([0, 51, 255], np.float32), "rgb_0_1")
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0])
    with pytest.raises(UserError, match="outside 0..255"):
        normalize_channel(np.array([0, 256], np.float32), "rgb_0_1")
    with pytest.raises(UserError, match="outside 0..255"):
        normalize_channel(np.array([-1, 3], np.float32), "rgb_0_1")


def test_a_channel_named_rgb_to_0_1_is_planned_as_rgb():
    from types import SimpleNamespace

    from nnlite.planning.planner import normalization

    fingerprint = SimpleNamespace(channel_names={"0": "RGB_to_0_1", "1": "T2"}, median_relative_size_after_crop=1.0)
    schemes, mask, _ = normalization(fingerprint)
    assert schemes == ("rgb_0_1", "zscore") and mask == (False, False)


@pytest.mark.parametrize("scheme", ["zscore", "ct", "rescale_0_1", "none"])
def test_constant_image_stays_finite(scheme):
    stats = IntensityStats(5.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0)  # a constant foreground: std 0
    out = normalize_channel(np.full((3, 4, 5), 5.0, np.float32), scheme, None, stats)
    assert np.all(np.isfinite(out))
    if scheme != "none":
        assert np.all(out == 0)


def test_masked_zscore_with_empty_mask_is_finite():
    out = zscore(np.ones((3, 3), np.float32), np.zeros((3, 3), bool))
    assert np.all(np.isfinite(out))


def test_normalize_per_channel_honours_mask_only_for_zscore():
    rng = np.random.default_rng(0)
    data = rng.normal(loc=50, scale=10, size=(3, 6, 6, 6)).astype(np.float32)
    seg = np.full((1, 6, 6, 6), -1, np.int8)
    seg[0, 1:5, 1:5, 1:5] = 0
    data[:, seg[0] < 0] = 0
    original = data.copy()
    out = normalize(data, seg, ("zscore", "zscore", "ct"), (True, False, True), {"2": CT_STATS})
    inside = seg[0] >= 0
    assert abs(out[0][inside].mean()) < 1e-4 and np.all(out[0][~inside] == 0)
    assert abs(out[1].mean()) < 1e-4  # unmasked: statistics over the whole image
    assert np.allclose(out[2], (np.clip(original[2], -1000, 1000) - 100) / 50, atol=1e-5)


def test_unknown_scheme_is_a_user_error():
    with pytest.raises(UserError):
        normalize_channel(np.zeros(3, np.float32), "histogram")
