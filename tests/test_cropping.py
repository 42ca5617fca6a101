"""Cropping to the nonzero region: known boxes, hole filling, -1 marking, crop/uncrop round trip."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.data.cropping import OUTSIDE_LABEL, bounding_box, crop_to_nonzero, nonzero_mask, uncrop

SETTINGS = settings(max_examples=30, deadline=None)


def test_known_crop():
    data = np.zeros((2, 8, 9, 10), np.float32)
    data[0, 2:5, 1:4, 3:7] = 1.0
    data[1, 4, 6, 8] = -3.0  # a second channel widens the box (union over channels)
    crop = crop_to_nonzero(data)
    assert crop.bbox == ((2, 5), (1, 7), (3, 9))
    assert crop.data.shape == (2, 3, 6, 6)
    assert np.array_equal(crop.data, data[:, 2:5, 1:7, 3:9])


def test_holes_are_filled_and_only_background_outside_becomes_minus_one():
    data = np.zeros((1, 5, 7, 7), np.float32)
    data[0, :, 1:6, 1:6] = 1.0
    data[0, 2, 3, 3] = 0.0  # an enclosed hole inside the body: still body
    data[0, 0, 1, 1] = 0.0  # a notch on the border: outside
    seg = np.zeros((1, 5, 7, 7), np.int16)
    seg[0, 0, 1, 1] = 2  # a label outside the mask keeps its value
    seg[0, 1, 1, 1] = 0
    crop = crop_to_nonzero(data, seg)
    assert crop.bbox == ((0, 5), (1, 6), (1, 6))
    assert crop.seg[0, 2, 2, 2] == 0  # the filled hole
    assert crop.seg[0, 0, 0, 0] == 2
    assert crop.seg[0, 1, 0, 0] == 0
    assert np.count_nonzero(crop.seg == OUTSIDE_LABEL) == 0  # the notch is labelled, nothing else outside
    no_seg = crop_to_nonzero(data)
    assert no_seg.seg.dtype == np.int8 and no_seg.seg[0, 0, 0, 0] == OUTSIDE_LABEL


def test_all_zero_image_keeps_the_whole_array():
    data = np.zeros((1, 3, 4, 5), np.float32)
    assert bounding_box(nonzero_mask(data)) == ((0, 3), (0, 4), (0, 5))
    assert crop_to_nonzero(data).data.shape == data.shape


@SETTINGS
@given(shape=st.tuples(*[st.integers(1, 10)] * 3), seed=st.integers(0, 2**16))
def test_crop_then_uncrop_restores(shape, seed):
    rng = np.random.default_rng(seed)
    data = np.zeros((2,) + shape, np.float32)
    starts = [int(rng.integers(0, s)) for s in shape]
    stops = [int(rng.integers(a + 1, s + 1)) for a, s in zip(starts, shape)]
    box = tuple(slice(a, b) for a, b in zip(starts, stops))
    data[(slice(None),) + box] = rng.normal(size=(2,) + tuple(b - a for a, b in zip(starts, stops)))
    data[data == 0] = 0.5  # normal draws are never exactly 0, but be sure the box is full
    outside = np.ones(shape, bool)
    outside[box] = False
    data[:, outside] = 0
    crop = crop_to_nonzero(data)
    assert crop.bbox == tuple(zip(starts, stops))
    assert np.array_equal(uncrop(crop.data, crop.bbox, shape), data)
    assert np.array_equal(uncrop(crop.seg, crop.bbox, shape, fill=OUTSIDE_LABEL)[0],
                          np.where(outside, OUTSIDE_LABEL, 0))
