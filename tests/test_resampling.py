"""Resampling: invariants (hypothesis), hand-computed cases, and the reference's own primitives
(scipy.ndimage.zoom / skimage.resize / batchgenerators.resize_segmentation) as expectations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from batchgenerators.augmentations import utils as bg_utils  # the reference's label resizing
from scipy import ndimage
from skimage import transform as skimage_transform  # the reference's image resizing

from nnlite.data.dataset import check_case, load_dataset
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.preprocessing.resampling import (axis_operator, new_shape_for, resample_image, resample_seg,
                                             separate_z_axis)

SETTINGS = settings(max_examples=30, deadline=None)
shapes = st.tuples(*[st.integers(2, 12)] * 3)
spacings = st.tuples(*[st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.5, 5.0])] * 3)


def _zoom_expectation(image: np.ndarray, new_shape, order: int) -> np.ndarray:
    """What skimage.resize(order, mode='edge', anti_aliasing=False) computes, written with scipy."""
    factors = np.array(new_shape) / np.array(image.shape)
    out = ndimage.zoom(image.astype(np.float64), factors, order=order, mode="nearest", grid_mode=True)
    return np.clip(out, image.min(), image.max())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@SETTINGS
@given(shape=shapes, spacing=spacings, seed=st.integers(0, 2**16))
def test_same_spacing_is_identity(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(2,) + shape).astype(np.float32)
    seg = rng.integers(-1, 3, size=(1,) + shape).astype(np.int8)
    assert np.array_equal(resample_image(data, shape, spacing, spacing), data)
    assert np.array_equal(resample_seg(seg, shape, spacing, spacing), seg)


@pytest.mark.parametrize("n", [1, 2, 7, 33])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_one_axis_operator_to_same_length_is_identity(n, order):
    assert np.allclose(axis_operator(n, n, order), np.eye(n), atol=1e-6)


@SETTINGS
@given(shape=shapes, old=spacings, new=spacings)
def test_output_shape_follows_spacing_ratio(shape, old, new):
    """Each axis keeps its physical extent to within half a voxel: |n·new − s·old| ≤ new / 2."""
    expected = new_shape_for(shape, old, new)
    if min(expected) < 1:
        return
    for n, s, o, t in zip(expected, shape, old, new):
        assert abs(n * t - s * o) <= t / 2 + 1e-9
    data = np.random.default_rng(0).normal(size=(1,) + shape).astype(np.float32)
    assert resample_image(data, expected, old, new).shape == (1,) + expected
    seg = (data > 0).astype(np.int8)
    assert resample_seg(seg, expected, old, new).shape == (1,) + expected


@SETTINGS
@given(shape=shapes, new_shape=shapes, old=spacings, new=spacings, seed=st.integers(0, 2**16),
       present=st.sets(st.integers(-1, 6), min_size=1, max_size=4), order=st.sampled_from([0, 1, 3]))
def test_label_resampling_never_invents_labels(shape, new_shape, old, new, seed, present, order):
    rng = np.random.default_rng(seed)
    seg = rng.choice(sorted(present), size=(1,) + shape).astype(np.int16)
    out = resample_seg(seg, new_shape, old, new, order)
    assert set(np.unique(out)) <= set(np.unique(seg))
    assert out.dtype == seg.dtype


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_block_label_survives_down_and_up(spacing):
    seg = np.zeros((1, 64, 64, 64), np.int8)
    seg[0, 7:55, 3:49, 5:52] = 1  # ~48 voxels a side: boundary errors of ≤ 1 coarse voxel stay < 5 %
    coarse = tuple(s * f for s, f in zip(spacing, (1.7, 2.0, 2.3)))
    down = resample_seg(seg, new_shape_for(seg.shape[1:], spacing, coarse), spacing, coarse)
    up = resample_seg(down, seg.shape[1:], coarse, spacing)
    assert _dice(up[0] == 1, seg[0] == 1) >= 0.95


@pytest.mark.parametrize("current, new, axis", [
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),
    ((3.0, 0.75, 0.75), (1.0, 0.75, 0.75), 0),  # current spacing ratio 4 decides
    ((0.75, 0.75, 3.01), (0.75, 0.75, 0.75), 2),
    ((3.0, 1.0, 1.0), (3.0, 1.0, 1.0), None),  # ratio exactly 3 is not > 3
    ((1.0, 1.0, 1.0), (1.0, 3.5, 1.0), 1),  # isotropic now, the new spacing decides
    ((0.24, 1.25, 1.25), (0.24, 1.25, 1.25), None),  # two axes share the max: no separate z
    ((4.0, 4.0, 1.0), (5.0, 1.0, 1.0), None),  # current decides (tie) even if new has one axis
    ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0),
])
def test_separate_z_hand_cases(current, new, axis):
    assert separate_z_axis(current, new) == axis


@SETTINGS
@given(current=st.tuples(*[st.floats(0.2, 8.0)] * 3), new=st.tuples(*[st.floats(0.2, 8.0)] * 3))
def test_separate_z_exactly_when_anisotropy_above_3(current, new):
    axis = separate_z_axis(current, new)
    anisotropic = max(current) / min(current) > 3 or max(new) / min(new) > 3
    if not anisotropic:
        assert axis is None
    elif axis is not None:
        decider = current if max(current) / min(current) > 3 else new
        assert decider[axis] == max(decider) and list(decider).count(max(decider)) == 1
    else:  # only a shared maximum switches it off
        decider = current if max(current) / min(current) > 3 else new
        assert list(decider).count(max(decider)) > 1


@SETTINGS
@given(shape=shapes, new_shape=shapes, seed=st.integers(0, 2**16))
def test_image_matches_scipy_zoom(shape, new_shape, seed):
    image = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 100
    out = resample_image(image[None], new_shape, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))[0]
    if tuple(shape) == tuple(new_shape):
        return
    assert np.abs(out - _zoom_expectation(image, new_shape, 3)).max() < 1e-3  # float32 on ±400


def test_probabilities_match_scipy_zoom_order1():
    probs = np.random.default_rng(3).random((3, 9, 14, 11)).astype(np.float32)
    out = resample_image(probs, (13, 10, 20), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=1)
    for c in range(3):
        assert np.abs(out[c] - _zoom_expectation(probs[c], (13, 10, 20), 1)).max() < 1e-6


def test_image_matches_skimage_resize():
    image = np.random.default_rng(1).normal(size=(11, 23, 17)).astype(np.float32)
    expected = skimage_transform.resize(image.astype(float), (19, 15, 30), 3, mode="edge",
                                        anti_aliasing=False)
    out = resample_image(image[None], (19, 15, 30), (1, 1, 1), (1, 1, 1))[0]
    assert np.abs(out - expected).max() < 1e-5


def test_block_label_resampled_by_known_factor():
    seg = np.zeros((1, 3, 8, 8), np.int8)
    seg[0, :, 2:6, 2:6] = 1
    up = resample_seg(seg, (3, 16, 16), (1.0, 1.0, 1.0), (1.0, 0.5, 0.5))
    expected_up = np.zeros((3, 16, 16), np.int8)
    expected_up[:, 4:12, 4:12] = 1  # samples at i/2 - 1/4: indicator 0.75 from voxel 4 on
    assert np.array_equal(up[0], expected_up)
    down = resample_seg(seg, (3, 4, 4), (1.0, 1.0, 1.0), (1.0, 2.0, 2.0))
    expected_down = np.zeros((3, 4, 4), np.int8)
    expected_down[:, 1:3, 1:3] = 1  # samples at 2i + 1/2: both neighbours inside for i = 1, 2
    assert np.array_equal(down[0], expected_down)


def test_seg_matches_resize_segmentation():
    rng = np.random.default_rng(2)
    blocks = np.kron(rng.integers(-1, 3, size=(3, 4, 4)), np.ones((4, 3, 5))).astype(np.int16)
    for new_shape in [(24, 6, 10), (6, 24, 40), (7, 13, 29), (12, 12, 20)]:
        expected = bg_utils.resize_segmentation(blocks, new_shape, 1)
        assert np.array_equal(resample_seg(blocks[None], new_shape, (1, 1, 1), (1, 1, 1))[0], expected)
    noise = rng.integers(0, 4, size=(9, 11, 10)).astype(np.int16)
    expected = bg_utils.resize_segmentation(noise, (13, 7, 17), 1)
    out = resample_seg(noise[None], (13, 7, 17), (1, 1, 1), (1, 1, 1))[0]
    assert (out != expected).mean() < 2e-3  # only float-rounding near-ties may differ


@pytest.mark.parametrize("order", [0, 3])
def test_seg_orders_other_than_linear_match_resize_segmentation(order):
    """A plan's resampling_order_seg: 0 is nearest neighbour, 3 is cubic indicators clipped to [0, 1]."""
    rng = np.random.default_rng(order)
    blocks = np.kron(rng.integers(-1, 3, size=(3, 4, 4)), np.ones((4, 3, 5))).astype(np.int16)
    for new_shape in [(24, 6, 10), (6, 24, 40), (7, 13, 29)]:
        expected = bg_utils.resize_segmentation(blocks, new_shape, order)
        out = resample_seg(blocks[None], new_shape, (1, 1, 1), (1, 1, 1), order)[0]
        assert np.array_equal(out, expected), new_shape
    linear = resample_seg(blocks[None], (7, 13, 29), (1, 1, 1), (1, 1, 1), 1)[0]
    assert not np.array_equal(out, linear)  # the order is really used
    noise = rng.integers(0, 4, size=(9, 11, 10)).astype(np.int16)
    expected = bg_utils.resize_segmentation(noise, (13, 7, 17), order)
    out = resample_seg(noise[None], (13, 7, 17), (1, 1, 1), (1, 1, 1), order)[0]
    assert (out != expected).mean() < 2e-3  # only float-rounding near-ties may differ


def _separate_z_expectation(image: np.ndarray, new_shape, order: int) -> np.ndarray:
    """The reference algorithm written out: per slice 2-D resize, then nearest along axis 0."""
    planes = np.stack([_zoom_expectation(s, new_shape[1:], order) for s in image])
    coords = np.meshgrid(*[(np.arange(n) + 0.5) * (o / n) - 0.5 for o, n in zip(planes.shape, new_shape)],
                         indexing="ij")
    return ndimage.map_coordinates(planes, np.array(coords), order=0, mode="nearest")


def test_separate_z_path_on_anisotropic_demo_case(tmp_path):
    dataset = load_dataset(generate_demo_dataset(tmp_path / "raw", n_cases=1, seed=0))
    case = check_case(dataset, dataset.cases[0])
    spacing = case.spacing
    target = (spacing[0] / 2.2, spacing[1] * 1.3, spacing[2] * 0.9)
    assert separate_z_axis(spacing, target) == 0
    new_shape = new_shape_for(case.data.shape[1:], spacing, target)
    out = resample_image(case.data[:1], new_shape, spacing, target)[0]
    expected = _separate_z_expectation(case.data[0], new_shape, 3)
    assert np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()
    seg = case.seg[None].astype(np.int16)
    out_seg = resample_seg(seg, new_shape, spacing, target)[0]
    planes = np.stack([bg_utils.resize_segmentation(s, new_shape[1:], 1) for s in case.seg])
    z = ndimage.zoom(np.arange(planes.shape[0], dtype=float), new_shape[0] / planes.shape[0], order=0,
                     mode="nearest", grid_mode=True).astype(int)
    assert np.array_equal(out_seg, planes[z])
