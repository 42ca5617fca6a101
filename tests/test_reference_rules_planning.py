"""Rules nnlite takes from nnU-Net v2 for planning, fingerprint, preprocessing and augmentation, each
pinned by an expectation written from nnU-Net's documented values (Isensee et al., "nnU-Net: a
self-configuring method for deep learning-based biomedical image segmentation", Nature Methods 2021,
and nnU-Net v2.8.1's default ExperimentPlanner, DefaultPreprocessor and nnUNetTrainer; the project's
nnU-Net reference notes, sections cited as "reference §N"). No expected value is imported from the
module under test: every number below is a literal of the reference, or a worked example whose
answer changes when the rule's constant moves to a neighbouring value (`benchmarks/mutations.py`
applies those changes and checks that a test here fails).

Random augmentation is checked on many fixed-seed draws: observed extremes, means and firing rates
against the reference's values, with tolerances far smaller than the distance to a neighbouring value.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from nnlite.loading.augmentation import (
    augment_config,
    fired_transforms,
    sample_augment_params,
)
from nnlite.loading.intensity_transforms import IntensityConfig, sample_intensity_params
from nnlite.loading.spatial_transforms import sample_spatial_params, spatial_config
from nnlite.network.geometry import conv_feature_map_elements
from nnlite.planning.fingerprint import samples_per_case
from nnlite.planning.memory_budget import MemoryBudget
from nnlite.planning.planner import (
    network_plan,
    normalization,
    plan_experiment,
    target_spacing,
)
from nnlite.planning.presets import get_preset
from nnlite.planning.statistics import Drawn, intensity_statistics
from nnlite.planning.topology import initial_patch, pool_and_conv_props
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats, NetworkPlan
from tests.loader_fixtures import toy_plans

STATS = IntensityStats(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                       percentile_99_5=1.0)


def fingerprint(spacing, shape, n=100, channels=("MRI",), relative=1.0, n_labels=3) -> Fingerprint:
    """n identical cases of one spacing and shape (cropped = uncropped; `relative` is the median
    relative size after cropping)."""
    cases = tuple(CaseFingerprint(f"case{i:03d}", tuple(map(float, spacing)), tuple(shape), tuple(shape))
                  for i in range(n))
    return Fingerprint(cases=cases, intensity_per_channel={str(i): STATS for i in range(len(channels))},
                       channel_names={str(i): c for i, c in enumerate(channels)},
                       labels={"background": 0, **{f"l{i}": i for i in range(1, n_labels)}},
                       median_relative_size_after_crop=relative)


def spacing_table(z_spacings, in_plane=(1.0, 1.0)) -> np.ndarray:
    """(N, 3) spacings: the given out-of-plane spacings, the same in-plane spacing for every case."""
    z = np.asarray(z_spacings, dtype=np.float64)
    return np.column_stack([z, np.full_like(z, in_plane[0]), np.full_like(z, in_plane[1])])


def shape_table(n, shape=(20.0, 200.0, 200.0)) -> np.ndarray:
    return np.tile(np.asarray(shape, dtype=np.float64), (n, 1))


# --- target spacing (reference §3.2) ------------------------------------------------------------

def test_target_spacing_is_the_per_axis_median_not_the_mean():
    # isotropic cases of 1, 1, 1.5, 2 and 4 mm: the median is 1.5 (the mean would be 1.9)
    spacings = np.array([[s, s, s] for s in (1.0, 1.0, 1.5, 2.0, 4.0)])
    target, _ = target_spacing(spacings, shape_table(5, (100.0, 100.0, 100.0)))
    np.testing.assert_allclose(target, [1.5, 1.5, 1.5], rtol=0, atol=1e-12)


def test_anisotropic_axis_gets_the_10th_percentile_of_its_spacings():
    # z spacings 2, 3, …, 12 mm (median 7 > 3 × 0.5 mm, 20 slices × 3 < 200): numpy's linear 10th
    # percentile of 11 values is the 2nd smallest, 3 mm (the 5th would give 2.5, the 20th 4.0)
    target, _ = target_spacing(spacing_table(np.arange(2.0, 13.0), (0.5, 0.5)), shape_table(11))
    np.testing.assert_allclose(target, [3.0, 0.5, 0.5], rtol=0, atol=1e-12)


def test_anisotropic_target_never_drops_below_the_other_axes_spacing():
    # in-plane 0.8 and 1.0 mm; z spacings 0.6, 0.6 and nine of 5 mm: the 10th percentile, 0.6 mm, is
    # finer than the in-plane axes, so the target becomes max(other spacings) + 1e-5 = 1.00001 mm
    target, _ = target_spacing(spacing_table([0.6, 0.6] + [5.0] * 9, (0.8, 1.0)), shape_table(11))
    assert target[0] == pytest.approx(1.0 + 1e-5, rel=0, abs=1e-9)
    np.testing.assert_allclose(target[1:], [0.8, 1.0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, anisotropic", [
    ((60.0, 200.0, 200.0), True),  # 60 × 3 = 180 < 200: the size condition holds
    ((67.0, 200.0, 200.0), False),  # 67 × 3 = 201 ≥ 200: the median spacing stays
    ((100.0, 200.0, 200.0), False),
])
def test_anisotropy_needs_the_size_condition_too(shape, anisotropic):
    # z spacings 2, 2 and nine of 5 mm (median 5 > 3 × 1): 10th percentile 2 mm, median 5 mm
    target, _ = target_spacing(spacing_table([2.0, 2.0] + [5.0] * 9), shape_table(11, shape))
    np.testing.assert_allclose(target, [2.0 if anisotropic else 5.0, 1.0, 1.0], rtol=0, atol=1e-12)


# --- topology and network width (reference §3.1, §3.5) ------------------------------------------

def test_pooling_stops_at_a_feature_map_edge_of_4():
    # 96³ isotropic: an axis is pooled while it has ≥ 2·4 = 8 voxels: 96 → 48 → 24 → 12 → 6, i.e.
    # 4 poolings, 5 stages and a 6-voxel bottleneck (an edge of 3 would pool once more, 5 once less)
    topology = pool_and_conv_props((1.0, 1.0, 1.0), (96, 96, 96))
    assert topology.n_stages == 5 and topology.divisible_by == (16, 16, 16)


def test_a_lone_pooling_axis_needs_3_times_the_minimal_edge():
    # spacing (1, 4, 4), patch (20, 8, 8): only the fine axis is within 2× of the finest spacing; it
    # is pooled once (20 ≥ 12), then at 10 voxels (< 3·4 = 12) pooling stops: 2 stages
    topology = pool_and_conv_props((1.0, 4.0, 4.0), (20, 8, 8))
    assert topology.strides == ((1, 1, 1), (2, 1, 1))


def test_axes_2x_coarser_than_the_finest_are_not_pooled_and_get_kernel_1():
    # spacing (2.5, 1, 1): 2.5 / 1 ≥ 2, so stage 1 pools only in-plane with kernel (1, 3, 3); then
    # (2.5, 2, 2) are within 2× and every axis is pooled with kernel 3
    topology = pool_and_conv_props((2.5, 1.0, 1.0), (64, 128, 128))
    assert topology.strides[:3] == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert topology.kernel_sizes[:2] == ((1, 3, 3), (3, 3, 3))


@pytest.mark.parametrize("spacing, median, patch", [
    ((1.0, 1.0, 1.0), (1000, 1000, 1000), [256, 256, 256]),  # the volume of 256³
    ((2.0, 1.0, 1.0), (1000, 1000, 1000), [161, 323, 323]),  # equal extent: 256·2^(1/3) = 322.5 → 323, 161
    ((1.0, 1.0, 1.0), (100, 300, 300), [100, 256, 256]),  # clipped to the median shape
    ((1.0, 1.0), (5000, 5000), [2048, 2048]),  # 2D: the area of 2048²
])
def test_initial_patch_has_the_volume_of_256_cubed_or_2048_squared(spacing, median, patch):
    assert initial_patch(spacing, median) == patch


def test_features_double_from_32_and_are_capped_at_320_in_3d_and_512_in_2d():
    preset = get_preset("default")
    net3 = network_plan(pool_and_conv_props((1.0, 1.0, 1.0), (128, 128, 128)), preset)
    assert net3.features_per_stage == (32, 64, 128, 256, 320, 320)
    net2 = network_plan(pool_and_conv_props((1.0, 1.0), (512, 512)), preset)
    assert net2.features_per_stage == (32, 64, 128, 256, 512, 512, 512, 512)


# --- the reference's memory proxy (reference §3.1, §3.5 step 5-6) -------------------------------

def six_stage_plan() -> NetworkPlan:
    return NetworkPlan(strides=((1, 1, 1),) + ((2, 2, 2),) * 5, kernel_sizes=((3, 3, 3),) * 6,
                       features_per_stage=(32, 64, 128, 256, 320, 320))


def eight_stage_2d_plan() -> NetworkPlan:
    return NetworkPlan(strides=((1, 1),) + ((2, 2),) * 7, kernel_sizes=((3, 3),) * 8,
                       features_per_stage=(32, 64, 128, 256, 512, 512, 512, 512))


@pytest.mark.parametrize("gpu_gb", [8.0, 16.0])
def test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch(gpu_gb):
    # UNet_reference_val_3d = 560e6 at 8 GB and batch 2; _2d = 85e6 at 8 GB and batch 12. Small
    # patches give batches of ~20-300, so a 2 % change of any of these numbers changes the result.
    scale = gpu_gb / 8.0
    net3, patch3 = six_stage_plan(), (64, 64, 64)
    estimate3 = conv_feature_map_elements(net3, patch3, 1, 3)
    budget = MemoryBudget(gpu_gb, 1, 3, "nnunet")
    assert budget.max_batch(net3, patch3) == round(560_000_000 * scale / estimate3 * 2)
    net2, patch2 = eight_stage_2d_plan(), (256, 256)
    estimate2 = conv_feature_map_elements(net2, patch2, 1, 3)
    assert budget.max_batch(net2, patch2) == round(85_000_000 * scale / estimate2 * 12)
    # the patch shrinks while estimate / reference batch × 2 > reference (3D at batch 2: estimate ≤ 560e6·scale)
    assert budget.fits(net3, patch3) == (estimate3 <= 560_000_000 * scale)


def test_default_planner_budget_is_8_gb():
    plans = plan_experiment(fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=40), configs=["3d_fullres"])
    assert plans.gpu_memory_gb == 8.0


# --- batch size: the 5 % cap and the minimum of 2 (reference §3.5 step 6) -------------------------

@pytest.mark.parametrize("n, batch", [(40, 2), (150, 5), (260, 9)])
def test_batch_is_capped_at_5_percent_of_the_dataset_and_at_least_2(n, batch):
    # Hippocampus-like 36×50×35 at 1 mm: patch (40, 56, 40) = 89,600 voxels; the dataset holds
    # n × 63,000 voxels: round(0.05 n 63000 / 89600) = 1 → 2 (minimum), 5 (n=150), 9 (n=260)
    plans = plan_experiment(fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=n), configs=["3d_fullres"],
                            memory_model="nnunet")
    full = plans.configurations["3d_fullres"]
    assert full.patch_size == (40, 56, 40)
    assert full.batch_size == batch


# --- configurations (reference §3.6) ------------------------------------------------------------

def test_2d_data_gets_only_the_2d_configuration_with_batch_dice():
    # 2D images: shape (1, y, x), spacing 999 on the unit axis
    plans = plan_experiment(fingerprint((999.0, 1.0, 1.0), (1, 256, 256), n=50))
    assert list(plans.configurations) == ["2d"]
    assert plans.configurations["2d"].batch_dice is True


def test_no_lowres_when_it_is_not_at_least_2x_smaller():
    # 220³ at 1 mm: the 128³ patch covers 19.7 % < 25 % so 3d_lowres is tried, but the search stops
    # at a median image only ~1.3× smaller than fullres (< 2): dropped; 3d_fullres keeps batch Dice off
    plans = plan_experiment(fingerprint((1.0, 1.0, 1.0), (220, 220, 220)), memory_model="nnunet")
    assert list(plans.configurations) == ["2d", "3d_fullres"]
    assert plans.configurations["3d_fullres"].patch_size == (128, 128, 128)
    assert plans.configurations["3d_fullres"].batch_dice is False
    assert plans.configurations["2d"].batch_dice is True


def test_no_lowres_when_the_patch_covers_a_quarter_of_the_median_image():
    # 160³ at 1 mm: the 128³ patch covers 51 % ≥ 25 %: no 3d_lowres is even tried
    plans = plan_experiment(fingerprint((1.0, 1.0, 1.0), (160, 160, 160)), memory_model="nnunet")
    assert "3d_lowres" not in plans.configurations
    assert any("no 3d_lowres: the fullres patch covers" in reason for reason in plans.reasons)


def test_lowres_spacing_grows_by_1_03_per_step_until_the_patch_covers_a_quarter():
    # CT abdomen (reference §3.6): 3d_lowres exists; nnU-Net 2.8.1 ends at spacing
    # (2.98513, 1.49456, 1.49456) = (2.5 · 1.03^6, 0.78 · 1.03^22, 0.78 · 1.03^22): the fine axes
    # (spacing more than 2× finer than the coarsest) grow alone until they catch up
    plans = plan_experiment(fingerprint((2.5, 0.78, 0.78), (162, 512, 512), channels=("CT",)),
                            memory_model="nnunet")
    low, full = plans.configurations["3d_lowres"], plans.configurations["3d_fullres"]
    steps = np.log(np.asarray(low.spacing) / np.asarray(full.spacing)) / math.log(1.03)
    np.testing.assert_allclose(steps, [6, 22, 22], rtol=0, atol=1e-9)
    coverage = np.prod(low.patch_size, dtype=np.float64) / np.prod(low.median_shape, dtype=np.float64)
    assert 0.25 <= coverage < 0.27  # stopped at the first step covering ≥ 25 %
    assert full.batch_dice is True and low.batch_dice is False and plans.configurations["2d"].batch_dice


# --- normalization choice and the mask rule (reference §4) --------------------------------------

def test_normalization_follows_the_channel_name_casefolded():
    names = ("CT", "ct", "noNorm", "NONORM", "zscore", "rescale_to_0_1", "T2", "MRI", "ADC")
    schemes, mask, _ = normalization(fingerprint((1, 1, 1), (8, 8, 8), n=2, channels=names))
    assert schemes == ("ct", "ct", "none", "none", "zscore", "rescale_0_1", "zscore", "zscore", "zscore")
    assert mask == (False,) * len(names)


@pytest.mark.parametrize("relative, masked", [(0.5, True), (0.74, True), (0.75, False), (0.76, False),
                                              (1.0, False)])
def test_mask_for_norm_when_cropping_removed_more_than_a_quarter(relative, masked):
    # use_mask_for_norm = median relative size after cropping < 0.75, and only for z-score channels
    schemes, mask, _ = normalization(fingerprint((1, 1, 1), (8, 8, 8), n=2, channels=("T1", "CT", "noNorm"),
                                                 relative=relative))
    assert schemes == ("zscore", "ct", "none")
    assert mask == (masked, False, False)


def test_planned_resampling_orders_are_3_for_data_1_for_seg_and_probabilities_0_along_z():
    config = plan_experiment(fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=40)).configurations["3d_fullres"]
    orders = (config.resampling_order_data, config.resampling_order_seg,
              config.resampling_order_probabilities, config.resampling_order_z)
    assert orders == (3, 1, 1, 0)


# --- fingerprint (reference §2) -----------------------------------------------------------------

def test_fingerprint_draws_1e8_foreground_voxels_split_over_the_cases():
    # num_samples = int(10e7 // n_cases) per case and channel (10e7 = 1e8)
    assert samples_per_case(1) == 100_000_000
    assert samples_per_case(3) == 33_333_333
    assert samples_per_case(40) == 2_500_000
    assert samples_per_case(260) == 384_615


def test_ct_clipping_percentiles_are_0_5_and_99_5():
    # 0, 1, …, 1000 once each: numpy's linear percentiles 0.5 / 50 / 99.5 are 5, 500 and 995
    values = np.arange(1001, dtype=np.float32)
    stats = intensity_statistics(values.copy(), [Drawn(values.copy(), np.ones(1001, dtype=np.int64))])
    assert (stats.percentile_00_5, stats.median, stats.percentile_99_5) == (5.0, 500.0, 995.0)
    assert (stats.min, stats.max) == (0.0, 1000.0)


# --- augmentation: ranges (reference §7) --------------------------------------------------------

ALWAYS = {"p_noise": 1.0, "p_blur": 1.0, "p_brightness": 1.0, "p_contrast": 1.0, "p_lowres": 1.0,
          "p_gamma_inverted": 1.0, "p_gamma": 1.0}
N_DRAWS = 4000


@pytest.fixture(scope="module")
def intensity_draws():
    """Per step name: the sampled step of N_DRAWS two-channel 3D samples with every step firing."""
    rng = np.random.default_rng(1234)
    cfg = IntensityConfig(n_channels=2, n_spatial=3, **ALWAYS)
    steps: dict[str, list] = {}
    for _ in range(N_DRAWS):
        for step in sample_intensity_params(rng, cfg).steps:
            steps.setdefault(step.name, []).append(step)
    return steps


def assert_uniform_range(values, low, high, tolerance):
    """Draws of U(low, high): every value inside, both ends approached within `tolerance`."""
    values = np.asarray(values, dtype=np.float64)
    assert low - 1e-12 <= values.min() <= low + tolerance, (values.min(), low)
    assert high - tolerance <= values.max() <= high + 1e-12, (values.max(), high)


def assert_bg_contrast(values, low, high):
    """batchgeneratorsv2's BGContrast(low, high): half U(low, 1), half U(1, high)."""
    values = np.asarray(values, dtype=np.float64)
    assert_uniform_range(values, low, high, 0.01)
    below = values < 1
    assert abs(below.mean() - 0.5) < 0.03, below.mean()
    assert abs(values[below].mean() - (low + 1) / 2) < 0.01
    assert abs(values[~below].mean() - (1 + high) / 2) < 0.015


def test_noise_std_is_uniform_0_to_0_1_shared_by_the_channels(intensity_draws):
    sigmas = [step.sigma for step in intensity_draws["noise"]]  # one σ per sample, every channel
    assert_uniform_range(sigmas, 0.0, 0.1, 0.001)
    assert abs(np.mean(sigmas) - 0.05) < 0.002


def test_blur_sigma_is_uniform_0_5_to_1_per_axis_for_half_the_channels(intensity_draws):
    per_channel = [sigmas for step in intensity_draws["blur"] for sigmas in step.sigmas]
    blurred = [s for s in per_channel if s is not None]
    assert abs(len(blurred) / len(per_channel) - 0.5) < 0.02  # p per channel 0.5
    sigmas = np.array(blurred)
    assert sigmas.shape[1] == 3 and np.all(sigmas[:, 0] != sigmas[:, 1])  # drawn per axis
    assert_uniform_range(sigmas, 0.5, 1.0, 0.005)


def test_brightness_factor_is_bg_contrast_0_75_to_1_25_per_channel(intensity_draws):
    factors = np.array([step.factors for step in intensity_draws["brightness"]])
    assert_bg_contrast(factors, 0.75, 1.25)
    assert np.mean(factors[:, 0] != factors[:, 1]) == 1.0  # drawn per channel


def test_contrast_factor_is_bg_contrast_0_75_to_1_25_per_channel(intensity_draws):
    factors = np.array([step.factors for step in intensity_draws["contrast"]])
    assert_bg_contrast(factors, 0.75, 1.25)
    assert np.mean(factors[:, 0] != factors[:, 1]) == 1.0


def test_low_resolution_zoom_is_uniform_0_5_to_1_for_half_the_channels(intensity_draws):
    zooms = [z for step in intensity_draws["lowres"] for z in step.zooms]
    drawn = [z for z in zooms if z is not None]
    assert abs(len(drawn) / len(zooms) - 0.5) < 0.02  # p per channel 0.5
    assert_uniform_range(drawn, 0.5, 1.0, 0.005)


@pytest.mark.parametrize("name", ["gamma", "gamma_inverted"])
def test_gamma_is_bg_contrast_0_7_to_1_5_per_channel(intensity_draws, name):
    gammas = np.array([step.gammas for step in intensity_draws[name]])
    assert_bg_contrast(gammas, 0.7, 1.5)
    assert np.mean(gammas[:, 0] != gammas[:, 1]) == 1.0


def spatial_draws(patch, n=N_DRAWS, seed=99):
    cfg = replace(spatial_config(patch), p_rotation=1.0, p_scaling=1.0)  # ranges untouched
    rng = np.random.default_rng(seed)
    return [sample_spatial_params(rng, cfg) for _ in range(n)]


def test_scaling_is_uniform_0_7_to_1_4_shared_by_the_axes():
    scales = [p.scale for p in spatial_draws((40, 56, 40))]
    assert_uniform_range(scales, 0.7, 1.4, 0.005)
    assert abs(np.mean(scales) - 1.05) < 0.01


@pytest.mark.parametrize("patch, degrees, n_angles", [
    ((40, 56, 40), 30, 3),  # 3D: ±30° about every axis
    ((20, 64, 64), 180, 1),  # 64 / 20 = 3.2 > 3: dummy 2D, ±180° in-plane
    ((16, 48, 48), 30, 3),  # 48 / 16 = 3 is not > 3: still 3D
    ((192, 160), 180, 1),  # 2D, side ratio 1.2 ≤ 1.5
    ((150, 100), 180, 1),  # 2D, side ratio exactly 1.5: not elongated
    ((160, 100), 15, 1),  # 2D, side ratio 1.6 > 1.5: ±15°
])
def test_rotation_range_follows_the_patch_shape(patch, degrees, n_angles):
    draws = spatial_draws(patch, n=2000)
    angles = np.degrees(np.array([p.angles for p in draws]))
    drawn = angles[:, :n_angles]
    assert np.all(np.abs(drawn) <= degrees + 1e-9) and np.abs(drawn).max() > degrees * 0.99
    assert np.all(angles[:, n_angles:] == 0)


# --- augmentation: probabilities (reference §7) -------------------------------------------------

REFERENCE_RATES = {"rotation": 0.2, "scaling": 0.2, "noise": 0.1, "blur": 0.2, "brightness": 0.15,
                   "contrast": 0.15, "lowres": 0.25, "gamma_inverted": 0.1, "gamma": 0.3}


def test_every_augmentation_fires_at_the_reference_probability():
    # 20,000 draws: the standard error of a rate is ≤ 0.0035, the tolerance 0.015 (≥ 4 standard
    # errors), a neighbouring probability (±0.05) is ≥ 14 standard errors away
    n = 20_000
    cfg = augment_config(toy_plans(patch=(40, 56, 40), channels=1).configurations["3d_fullres"])
    rng = np.random.default_rng(2021)
    draws = [sample_augment_params(rng, cfg) for _ in range(n)]
    counts = Counter(name for params in draws for name in fired_transforms(params))
    for name, p in REFERENCE_RATES.items():
        assert abs(counts[name] / n - p) < 0.015, (name, counts[name] / n, p)
    flips = Counter(axis for params in draws for axis in params.spatial.flip_axes)
    for axis in range(3):  # every axis mirrored independently with p 0.5
        assert abs(flips[axis] / n - 0.5) < 0.015, (axis, flips[axis] / n)
