"""Augmentation: zero strength is identity, known strengths do what they say, firing probabilities,
labels never invented, mirroring commutes with the label map."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from scipy.stats import binomtest

from nnlite.loading.augmentation import (IDENTITY, AugmentConfig, AugmentParams, augment_config,
                                         crop_and_augment, fired_transforms, sample_augment_params)
from nnlite.loading.intensity_transforms import (Blur, Brightness, Contrast, Gamma, IntensityParams,
                                                 LowResolution, Noise, apply_intensity)
from nnlite.loading.spatial_transforms import (ROTATION_3D, SCALE_RANGE, SpatialParams, apply_spatial,
                                               spatial_config, warp)
from tests.loader_fixtures import toy_plans

P_VALUE = 1e-3  # statistical tests (fixed seeds, so deterministic) fail below this


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def cfg3d(patch=(16, 16, 16), channels=1, use_mask=False) -> AugmentConfig:
    return augment_config(toy_plans(patch=patch, channels=channels, use_mask=use_mask)
                          .configurations["3d_fullres"])


def random_case(rng, shape=(24, 24, 24), labels=(0, 1, 2)):
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    seg = rng.choice(np.array(labels, dtype=np.int8), size=(1, *shape))
    return image, seg


def test_config_follows_reference_rules():
    assert spatial_config((40, 56, 40)).rotation_max == pytest.approx(math.radians(30))
    dummy = spatial_config((8, 64, 64))  # 64/8 > 3: dummy 2D, in-plane ±180°
    assert dummy.planar and dummy.rotation_max == pytest.approx(math.pi)
    assert spatial_config((192, 160)).rotation_max == pytest.approx(math.pi)  # ratio 1.2
    assert spatial_config((256, 128)).rotation_max == pytest.approx(math.radians(15))  # ratio 2
    assert spatial_config((192, 160)).mirror_axes == (1, 2)
    assert cfg3d((8, 64, 64)).intensity.lowres_ignore_axes == (0,)


# --- zero strength is identity ------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(16, 16, 16), (4, 16, 16)])  # 3D and dummy-2D (planar)
def test_identity_warp_is_identity(patch):
    rng = np.random.default_rng(1)
    image, seg = random_case(rng, patch)
    params = SpatialParams(angles=(0.0, 0.0, 0.0), scale=1.0)  # fires, but with zero strength
    planar = spatial_config(patch).planar
    out, out_seg = apply_spatial(torch.from_numpy(image), torch.from_numpy(seg), params, patch, planar)
    np.testing.assert_allclose(out.numpy(), image, atol=1e-5)
    np.testing.assert_array_equal(out_seg.numpy(), seg)


def test_identity_params_crop_exactly():
    rng = np.random.default_rng(2)
    image, seg = random_case(rng)
    cfg = cfg3d((8, 12, 10))
    out, out_seg = crop_and_augment(image, seg, (3, 5, 7), IDENTITY, cfg)
    region = (slice(None), slice(3, 11), slice(5, 17), slice(7, 17))
    np.testing.assert_array_equal(out.numpy(), image[region])
    np.testing.assert_array_equal(out_seg.numpy(), seg[region])


@pytest.mark.parametrize("step", [
    Noise(0.0, 3), Blur((None, None)), Brightness((1.0, 1.0)), Contrast((1.0, 1.0)),
    LowResolution((1.0, 1.0)), Gamma((1.0, 1.0), invert=False), Gamma((1.0, 1.0), invert=True)])
def test_intensity_step_at_zero_strength_is_identity(step):
    image = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 10, 12, 9)).astype(np.float32))
    out = apply_intensity(image, IntensityParams((step,)))
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-5)


# --- known strength -----------------------------------------------------------------------------

@pytest.mark.parametrize("axis, plane", [(0, (1, 2)), (1, (2, 0)), (2, (0, 1))])
def test_quarter_turn_equals_rot90(axis, plane):
    rng = np.random.default_rng(4)
    image, seg = random_case(rng, (30, 30, 30))
    angles = [0.0, 0.0, 0.0]
    angles[axis] = math.pi / 2
    params = AugmentParams(SpatialParams(tuple(angles), None), IntensityParams())
    start = (7, 5, 9)
    out, out_seg = crop_and_augment(image, seg, start, params, cfg3d((12, 12, 12)))
    crop = (slice(None),) + tuple(slice(s, s + 12) for s in start)
    expected = np.rot90(image[crop], k=-1, axes=(plane[0] + 1, plane[1] + 1))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
    expected_seg = np.rot90(seg[crop], k=-1, axes=(plane[0] + 1, plane[1] + 1))
    np.testing.assert_array_equal(out_seg.numpy(), expected_seg)


def box_object(shape=(32, 32, 32), lo=12, hi=20):
    seg = np.zeros((1, *shape), dtype=np.int8)
    seg[:, lo:hi, lo:hi, lo:hi] = 1
    return seg.astype(np.float32), seg


def extent(seg: np.ndarray, axis: int) -> int:
    other = tuple(a for a in range(seg.ndim) if a != axis)
    return int(np.any(seg == 1, axis=other).sum())


def test_scale_two_halves_an_objects_extent():
    image, seg = box_object()  # an 8-voxel cube centred at 15.5, the patch centre below
    params = AugmentParams(SpatialParams(None, 2.0), IntensityParams())
    out, out_seg = crop_and_augment(image, seg, (8, 8, 8), params, cfg3d((16, 16, 16)))
    assert [extent(out_seg[0].numpy(), a) for a in range(3)] == [4, 4, 4]
    assert [extent((out[0].numpy() > 0.5).astype(int), a) for a in range(3)] == [4, 4, 4]


def test_planar_scale_leaves_axis_zero_alone():
    image, seg = box_object()
    params = AugmentParams(SpatialParams(None, 2.0), IntensityParams())
    out, out_seg = crop_and_augment(image, seg, (8, 8, 8), params, cfg3d((16, 64, 64)))
    seg_np = out_seg[0].numpy()
    assert extent(seg_np, 0) == 8 and extent(seg_np, 1) == 4 and extent(seg_np, 2) == 4


def test_noise_has_the_drawn_std():
    image = torch.full((2, 32, 32, 32), 3.0)
    out = apply_intensity(image, IntensityParams((Noise(0.05, 7),)))
    noise = (out - image).numpy()
    assert noise.std() == pytest.approx(0.05, rel=0.03)
    assert abs(noise.mean()) < 0.002
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02  # independent channels


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_follows_the_formula_and_keeps_mean_and_std(invert):
    x = np.random.default_rng(5).gamma(2.0, size=(1, 20, 20, 20)).astype(np.float64)
    out = apply_intensity(torch.from_numpy(x.astype(np.float32)),
                          IntensityParams((Gamma((2.0,), invert),))).numpy().astype(np.float64)
    y = -x if invert else x
    g = ((y - y.min()) / (y.max() - y.min())) ** 2.0
    g = (g - g.mean()) / g.std() * y.std() + y.mean()
    np.testing.assert_allclose(out, -g if invert else g, atol=1e-3)
    assert out.mean() == pytest.approx(x.mean(), abs=1e-3) and out.std() == pytest.approx(x.std(), rel=1e-3)


def test_brightness_and_contrast():
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 8, 8, 8)).astype(np.float32))
    bright = apply_intensity(x, IntensityParams((Brightness((1.2, 0.8)),)))
    np.testing.assert_allclose(bright.numpy(), x.numpy() * np.array([1.2, 0.8])[:, None, None, None],
                               rtol=1e-6)
    out = apply_intensity(x, IntensityParams((Contrast((1.5, 0.5)),))).numpy()
    for c, f in enumerate((1.5, 0.5)):
        m = x[c].mean().item()
        expected = np.clip((x[c].numpy() - m) * f + m, x[c].min().item(), x[c].max().item())
        np.testing.assert_allclose(out[c], expected, atol=1e-5)
        assert out[c].min() >= x[c].min().item() - 1e-6 and out[c].max() <= x[c].max().item() + 1e-6


def test_blur_matches_scipy_gaussian():
    x = np.random.default_rng(7).normal(size=(1, 12, 14, 16)).astype(np.float32)
    sigmas = (1.0, 0.8, 1.0)  # kernel radii 3, 2, 3 = scipy's truncate=3
    out = apply_intensity(torch.from_numpy(x), IntensityParams((Blur((sigmas,)),))).numpy()
    expected = gaussian_filter(x[0].astype(np.float64), sigmas, truncate=3.0, mode="mirror")
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


def test_lowres_removes_fine_detail_except_on_ignored_axes():
    checker = (np.indices((16, 16, 16)).sum(0) % 2).astype(np.float32)[None]
    out = apply_intensity(torch.from_numpy(checker), IntensityParams((LowResolution((0.5,)),)))
    assert out.std() < 0.05 < checker.std()  # every other voxel kept: the checkerboard vanishes
    stripes = (np.indices((16, 16, 16))[0] % 2).astype(np.float32)[None]  # varies along axis 0 only
    kept = apply_intensity(torch.from_numpy(stripes), IntensityParams((LowResolution((0.5,), (0,)),)))
    np.testing.assert_allclose(kept.numpy(), stripes, atol=1e-6)


# --- probabilities ------------------------------------------------------------------------------

EXPECTED_RATES = {"rotation": 0.2, "scaling": 0.2, "mirror": 1 - 0.5**3, "noise": 0.1, "blur": 0.2,
                  "brightness": 0.15, "contrast": 0.15, "lowres": 0.25, "gamma_inverted": 0.1,
                  "gamma": 0.3}


def test_each_transform_fires_at_its_probability():
    cfg = cfg3d((40, 56, 40), channels=2)
    rng = np.random.default_rng(8)
    draws = [sample_augment_params(rng, cfg) for _ in range(1000)]
    counts = Counter(name for p in draws for name in fired_transforms(p))
    for name, p in EXPECTED_RATES.items():
        assert binomtest(counts[name], 1000, p).pvalue > P_VALUE, (name, counts[name])
    flips = Counter(axis for p in draws for axis in p.spatial.flip_axes)
    for axis in range(3):
        assert binomtest(flips[axis], 1000, 0.5).pvalue > P_VALUE
    per_channel = [c is not None for p in draws for s in p.intensity.steps if s.name in ("blur", "lowres")
                   for c in (s.sigmas if s.name == "blur" else s.zooms)]
    assert binomtest(sum(per_channel), len(per_channel), 0.5).pvalue > P_VALUE
    angles = np.array([p.spatial.angles for p in draws if p.spatial.angles is not None])
    scales = np.array([p.spatial.scale for p in draws if p.spatial.scale is not None])
    assert np.abs(angles).max() <= ROTATION_3D and np.all(angles != 0)  # all 3 angles drawn
    assert SCALE_RANGE[0] <= scales.min() and scales.max() <= SCALE_RANGE[1]


# --- labels and mirroring -----------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), labels=st.sets(st.integers(0, 9), min_size=1, max_size=4),
       planar=st.booleans())
def test_warp_never_invents_labels(seed, labels, planar):
    rng = np.random.default_rng(seed)
    image, seg = random_case(rng, (14, 14, 14), tuple(sorted(labels)))
    seg[:, :, :3] = -1
    cfg = cfg3d((4, 16, 16) if planar else (10, 12, 10))
    params = AugmentParams(SpatialParams(tuple(rng.uniform(-3, 3, 3)), float(rng.uniform(0.7, 1.4)),
                                         (1,)), IntensityParams())
    start = tuple(int(s) for s in rng.integers(-3, 8, 3))
    _, out_seg = crop_and_augment(image, seg, start, params, cfg)
    assert set(np.unique(out_seg.numpy())) <= set(labels) | {0}  # -1 (outside) was mapped to 0
    raw = warp(torch.from_numpy(image)[None], torch.from_numpy(seg)[None],
               torch.from_numpy(np.eye(3) * 1.3)[None], torch.tensor([[6.0, 7.0, 6.5]]), (8, 8, 8))[1]
    assert set(np.unique(raw.numpy())) <= set(labels) | {-1}


def test_outside_becomes_background_and_masked_channels_are_zeroed():
    rng = np.random.default_rng(9)
    image, seg = random_case(rng, (12, 12, 12), (0, 1))
    image = np.concatenate([image, image]) + 5
    seg[:, :, :4] = -1
    out, out_seg = crop_and_augment(image, seg, (0, 0, 0), IDENTITY,
                                    augment_config(toy_plans((8, 8, 8), channels=2, use_mask=True)
                                                   .configurations["3d_fullres"]))
    outside = seg[0, :8, :8, :8] < 0
    assert np.all(out.numpy()[:, outside] == 0) and np.all(out.numpy()[:, ~outside] != 0)
    assert out_seg.min() == 0 and np.array_equal(out_seg[0].numpy(), seg[0, :8, :8, :8].clip(0))


@pytest.mark.parametrize("angles", [None, (0.3, -0.2, 0.1)])
def test_mirroring_commutes_with_the_label_map(angles):
    rng = np.random.default_rng(10)
    image, seg = random_case(rng, (20, 20, 20), (-1, 0, 1, 2))
    cfg = cfg3d((10, 10, 10))
    plain = AugmentParams(SpatialParams(angles, None, ()), IntensityParams())
    mirrored = AugmentParams(SpatialParams(angles, None, (0, 2)), IntensityParams())
    out, out_seg = crop_and_augment(image, seg, (5, 5, 5), plain, cfg)
    out_m, out_seg_m = crop_and_augment(image, seg, (5, 5, 5), mirrored, cfg)
    np.testing.assert_allclose(out_m.numpy(), np.flip(out.numpy(), (1, 3)), atol=1e-5)
    np.testing.assert_array_equal(out_seg_m.numpy(), np.flip(out_seg.numpy(), (1, 3)))
