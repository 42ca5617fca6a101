"""Slice pictures (viewing/slices.py): outlines, error map, square pixels, the busiest slice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nnlite.viewing.slices import (FALSE_NEGATIVE_COLOR, FALSE_POSITIVE_COLOR, PREDICTION_COLOR,
                                   REFERENCE_COLOR, busiest_slice, error_masks, intensity_window,
                                   outline, plane_spacing, render_slice, square_pixels, take_slice,
                                   to_grey)


def square(size: int = 8, lo: int = 2, hi: int = 6, value: int = 1) -> np.ndarray:
    seg = np.zeros((size, size), dtype=np.int16)
    seg[lo:hi, lo:hi] = value
    return seg


def test_outline_is_the_one_pixel_boundary_of_a_square():
    ring = outline(square())
    expected = square().astype(bool)
    expected[3:5, 3:5] = False  # the 2×2 inside has only same-label neighbours
    assert np.array_equal(ring, expected)


def test_outline_separates_touching_labels_and_counts_the_border_as_background():
    seg = np.ones((4, 6), dtype=np.int16)
    seg[:, 3:] = 2
    ring = outline(seg)
    assert ring[:, 2].all() and ring[:, 3].all()  # where 1 meets 2
    assert ring[0].all() and ring[-1].all()  # the image border
    assert not ring[1:3, 1].any() and not ring[1:3, 4].any()


@given(st.integers(0, 2**32 - 1))
def test_outline_lies_inside_the_foreground(seed):
    seg = np.random.default_rng(seed).integers(0, 3, (7, 9))
    ring = outline(seg)
    assert not (ring & (seg == 0)).any()


def test_error_masks_split_false_positives_and_false_negatives():
    ref = np.array([[0, 1, 1, 2]])
    pred = np.array([[1, 1, 0, 1]])
    false_pos, false_neg = error_masks(pred, ref)
    assert false_pos.tolist() == [[True, False, False, False]]
    assert false_neg.tolist() == [[False, False, True, True]]  # missed, and the wrong label


def test_grey_window_clips_and_spans_0_to_255():
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    low, high = intensity_window(volume)
    grey = to_grey(volume[5], (low, high))
    assert grey.shape == (10, 10, 3) and grey.dtype == np.uint8
    assert to_grey(np.array([[low - 5, high + 5]]), (low, high))[0, :, 0].tolist() == [0, 255]


def test_slices_along_each_axis_and_their_pixel_sizes():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert take_slice(volume, 0, 1).shape == (3, 4)
    assert take_slice(volume, 1, 2).tolist() == volume[:, 2, :].tolist()
    assert take_slice(volume, 2, 3).shape == (2, 3)
    assert plane_spacing((3.0, 0.8, 0.7), 0) == (0.8, 0.7)
    assert plane_spacing((3.0, 0.8, 0.7), 2) == (3.0, 0.8)
    with pytest.raises(ValueError):
        take_slice(volume, 3, 0)


def test_square_pixels_stretches_the_coarse_axis():
    image = np.arange(6).reshape(2, 3)
    stretched = square_pixels(image, (3.0, 1.0))  # rows three times as tall as columns are wide
    assert stretched.shape == (6, 3)
    assert stretched[:, 0].tolist() == [0, 0, 0, 3, 3, 3]
    assert square_pixels(image, (1.0, 1.0)).tolist() == image.tolist()


def test_busiest_slice_counts_both_label_maps_and_falls_back_to_the_middle():
    ref = np.zeros((5, 4, 4), dtype=np.int16)
    pred = np.zeros_like(ref)
    ref[1, :2, :2] = 1  # 4 voxels on slice 1
    pred[3] = 1  # 16 voxels on slice 3
    assert busiest_slice([ref, None], 0) == 1
    assert busiest_slice([ref, pred], 0) == 3
    assert busiest_slice([np.zeros_like(ref)], 1) == 2
    assert busiest_slice([ref], 2) in (0, 1)


def test_render_slice_draws_each_channel_with_both_outlines_and_an_error_map():
    data = np.zeros((2, 4, 10, 10), dtype=np.float32)
    data[1] = 50.0
    ref = np.zeros((4, 10, 10), dtype=np.int16)
    pred = np.zeros_like(ref)
    ref[2, 2:6, 2:6] = 1
    pred[2, 4:8, 4:8] = 1
    panels = render_slice(data, (1.0, 1.0, 1.0), 0, 2, ref=ref, pred=pred, channel_names=["T1", "T2"])
    assert [p.title for p in panels] == ["T1", "T2", "errors"]
    t1 = panels[0].image
    assert tuple(t1[2, 2]) == REFERENCE_COLOR and tuple(t1[7, 7]) == PREDICTION_COLOR
    errors = panels[2].image
    assert errors[7, 7, 0] > errors[7, 7, 2]  # predicted only: the red of FALSE_POSITIVE_COLOR
    assert errors[2, 2, 2] > errors[2, 2, 0]  # reference only: the blue of FALSE_NEGATIVE_COLOR
    assert tuple(errors[5, 5]) == tuple(errors[0, 0])  # agreement: plain grey
    assert FALSE_POSITIVE_COLOR != FALSE_NEGATIVE_COLOR


def test_render_slice_without_a_reference_has_no_error_map():
    data = np.random.default_rng(0).normal(size=(1, 3, 6, 6)).astype(np.float32)
    pred = np.zeros((3, 6, 6), dtype=np.int16)
    panels = render_slice(data, (3.0, 1.0, 1.0), 1, 2, pred=pred)
    assert [p.title for p in panels] == ["channel 0"]
    assert panels[0].image.shape == (9, 6, 3)  # z (3 mm) stretched three times


def test_the_uncertainty_overlay_turns_uncertain_pixels_orange_and_leaves_certain_ones_grey():
    from nnlite.viewing.slices import UNCERTAINTY_ALPHA, UNCERTAINTY_COLOR, heat

    data = np.full((1, 3, 4, 4), 50.0, np.float32)
    data[0, :, 0, 0] = 0.0  # a dark and a bright pixel set the grey window
    data[0, :, 0, 1] = 100.0
    uncertainty = np.zeros((3, 4, 4), np.float32)
    uncertainty[:, 2:, :] = 1.0  # the lower half of every slice is uncertain
    uncertainty[:, 1, 3] = 0.5
    panels = render_slice(data, (1.0, 1.0, 1.0), 0, 1, uncertainty=uncertainty)
    assert [p.title for p in panels] == ["channel 0", "uncertainty"]
    grey, overlay = panels[0].image, panels[1].image
    np.testing.assert_array_equal(overlay[:1], grey[:1])  # certain: unchanged
    expected = (1 - UNCERTAINTY_ALPHA) * grey[3, 0].astype(float) + UNCERTAINTY_ALPHA * np.array(UNCERTAINTY_COLOR)
    np.testing.assert_array_equal(overlay[2:], np.broadcast_to(expected.round().astype(np.uint8), (2, 4, 3)))
    half = heat(grey, uncertainty[1])[1, 3]  # half as uncertain: half as far towards orange
    assert np.allclose(half, (1 - UNCERTAINTY_ALPHA / 2) * grey[1, 3] + UNCERTAINTY_ALPHA / 2 * np.array(UNCERTAINTY_COLOR), atol=1)
    assert len(render_slice(data, (1.0, 1.0, 1.0), 0, 1)) == 1  # no map: no panel
