"""Patch sampling: the reference's forced-foreground rule, uniform random positions, region reads,
and exact source boxes (zoomed-out samples read real data, never padding, where data exists)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from nnlite.loading.augmentation import AugmentParams, augment_config, crop_and_augment, patch_source_box
from nnlite.loading.intensity_transforms import IntensityParams
from nnlite.loading.loader import plan_batch
from nnlite.loading.sampling import (CaseStore, forced_foreground, foreground_start, random_start,
                                     read_region, start_bounds, unforced_start)
from nnlite.loading.spatial_transforms import SpatialParams, sample_matrix
from nnlite.preprocessing.pipeline import ANNOTATED_KEY
from tests.loader_fixtures import DATA_IDENTIFIER, toy_dataset, toy_plans

P_VALUE = 1e-3


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# Read off nnunetv2 2.8.1's nnUNetDataLoader._oversample_last_XX_percent (oversample 0.33).
REFERENCE_FORCED = {2: [1], 3: [2], 5: [3, 4], 9: [6, 7, 8], 12: [8, 9, 10, 11],
                    50: list(range(34, 50))}


@pytest.mark.parametrize("batch_size", sorted(REFERENCE_FORCED))
def test_forced_indices_match_the_reference(batch_size):
    flags = forced_foreground(batch_size)
    assert [j for j, forced in enumerate(flags) if forced] == REFERENCE_FORCED[batch_size]


def test_start_bounds_follow_the_reference_formula():
    assert start_bounds((20, 30), (8, 30)) == ([0, 0], [12, 0])
    assert start_bounds((5, 6), (8, 9)) == ([-2, -2], [-1, -1])  # smaller image: centred (±1)


def test_random_positions_are_uniform_over_valid_positions():
    rng = np.random.default_rng(0)
    shape, patch = (6, 7, 5), (3, 4, 2)
    counts = np.zeros((4, 4, 4))
    for _ in range(3200):
        counts[random_start(rng, shape, patch)] += 1
    assert counts.min() > 0  # every valid position is reachable, and only those (indexing)
    assert chisquare(counts.ravel()).pvalue > P_VALUE


def test_foreground_start_centres_the_patch_on_a_stored_voxel():
    rng = np.random.default_rng(1)
    locations = {"1": np.array([[10, 2, 20]]), "2": np.zeros((0, 3), dtype=int)}
    assert foreground_start(rng, (30, 30, 30), (8, 8, 8), locations) == (6, 0, 16)  # lb clamps y
    starts = {foreground_start(rng, (30, 30, 30), (8, 8, 8), {"1": np.zeros((0, 3))})
              for _ in range(50)}
    assert len(starts) > 1  # no foreground: random positions


def test_annotated_voxels_centre_unforced_patches_and_stand_in_for_absent_classes():
    """Datasets with an ignore label store ANNOTATED_KEY locations (the reference's (-1, labels…) key)."""
    rng = np.random.default_rng(3)
    annotated = {ANNOTATED_KEY: np.array([[10, 12, 20]]), "1": np.array([[3, 3, 3]])}
    assert unforced_start(rng, (30, 30, 30), (8, 8, 8), annotated) == (6, 8, 16)
    assert {foreground_start(rng, (30, 30, 30), (8, 8, 8), annotated) for _ in range(20)} == {(0, 0, 0)}
    only_annotated = {ANNOTATED_KEY: annotated[ANNOTATED_KEY], "1": np.zeros((0, 3), int)}
    assert foreground_start(rng, (30, 30, 30), (8, 8, 8), only_annotated) == (6, 8, 16)
    starts = {unforced_start(rng, (30, 30, 30), (8, 8, 8), {"1": annotated["1"]}) for _ in range(50)}
    assert len(starts) > 1  # no ignore label: uniform positions


def test_classes_are_drawn_uniformly():
    rng = np.random.default_rng(2)
    locations = {"1": np.array([[5, 5, 5]] * 100), "2": np.array([[20, 20, 20]])}
    hits = sum(foreground_start(rng, (30, 30, 30), (4, 4, 4), locations)[0] == 3 for _ in range(1000))
    assert 430 < hits < 570  # class 1 half the time although it has 100× the voxels


def test_read_region_pads_with_zero_and_outside():
    data = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6) + 1
    seg = np.ones((1, 4, 5, 6), dtype=np.int8)
    image, labels = read_region(data, seg, np.array([-1, 2, 3]), np.array([3, 7, 8]))
    assert image.shape == (2, 4, 5, 5) and labels.shape == (1, 4, 5, 5)
    np.testing.assert_array_equal(image[:, 1:, :3, :3], data[:, :3, 2:, 3:])
    assert np.all(image[:, 0] == 0) and np.all(image[:, :, 3:] == 0) and np.all(image[:, :, :, 3:] == 0)
    assert np.all(labels[:, 1:, :3, :3] == 1) and np.all(labels[:, 0] == -1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), planar=st.booleans())
def test_source_box_holds_every_interpolation_neighbour(seed, planar):
    rng = np.random.default_rng(seed)
    patch = (4, 20, 16) if planar else (8, 12, 16)
    cfg = augment_config(toy_plans(patch).configurations["3d_fullres"])
    params = SpatialParams(tuple(rng.uniform(-np.pi, np.pi, 3)), float(rng.uniform(0.7, 1.4)),
                           tuple(a for a in range(3) if rng.random() < 0.5))
    start = tuple(int(s) for s in rng.integers(-5, 30, 3))
    lo, hi, centre = patch_source_box(start, params, cfg)
    offsets = np.indices(patch).reshape(3, -1).T - (np.array(patch) - 1) / 2
    points = centre + offsets @ sample_matrix(params, cfg.spatial.planar).T
    axes = [1, 2] if planar else [0, 1, 2]  # planar patches copy axis 0 slice by slice
    assert np.all(np.floor(points[:, axes]) >= lo[axes])
    assert np.all(np.floor(points[:, axes]) + 1 <= hi[axes] - 1)  # bilinear's upper neighbour inside
    if planar:
        np.testing.assert_array_equal([lo[0], hi[0]], [start[0], start[0] + patch[0]])


def test_zoomed_out_rotated_patch_reads_real_data_not_padding():
    """The reference crops a fixed enlarged patch (scale 0.85 assumed): at scale 1.4 and 30° its
    patch reaches into padding even in the middle of a big image. Here it never does."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 120, 120, 120)).astype(np.float32)
    seg = np.ones((1, 120, 120, 120), dtype=np.int8)
    seg[:, :, :, :1] = -1  # a sliver of outside, far from the patch
    cfg = augment_config(toy_plans((40, 56, 40)).configurations["3d_fullres"])
    angle = np.radians(30)
    params = SpatialParams((angle, angle, angle), 1.4)
    lo, hi, _ = patch_source_box((40, 32, 40), params, cfg)
    assert np.all(lo >= 0) and np.all(hi <= 120)
    out, out_seg = crop_and_augment(image, seg, (40, 32, 40), AugmentParams(params, IntensityParams()),
                                    cfg)
    assert np.all(out_seg.numpy() == 1) and np.all(out.numpy() != 0)


def test_case_store_reads_shapes_and_locations(tmp_path):
    names = toy_dataset(tmp_path, 2)
    store = CaseStore(tmp_path / "preprocessed" / DATA_IDENTIFIER, names)
    assert store.cases[0].shape == (20, 24, 22)
    data, seg = store.arrays(names[0])
    for label, voxels in store.cases[0].class_locations.items():
        assert len(voxels) and np.all(seg[0][tuple(voxels.T)] == int(label))


@pytest.mark.parametrize("augment", [False, True])
def test_forced_patches_contain_foreground(tmp_path, augment):
    """1000 forced draws on small blobs (radius 2.5 voxels): ≥ 99 % hold foreground, 100 % unaugmented."""
    names = toy_dataset(tmp_path, 6)
    store = CaseStore(tmp_path / "preprocessed" / DATA_IDENTIFIER, names)
    cfg = augment_config(toy_plans((16, 16, 16)).configurations["3d_fullres"])
    hits = 0
    for index in range(100):
        for sample in plan_batch(store.cases, cfg, [True] * 10, 5, index, augment):
            _, seg = crop_and_augment(*store.arrays(sample.case), sample.start, sample.params, cfg)
            hits += bool((seg > 0).any())
    assert hits == 1000 if not augment else hits >= 990


@pytest.mark.slow
def test_forced_patches_contain_foreground_on_the_demo_data(tmp_path):
    """The demo dataset through the real planner and preprocessing: 1000 forced, augmented draws."""
    from nnlite.data.demo_dataset import generate_demo_dataset
    from nnlite.planning.work_folder import plan_dataset
    from nnlite.preprocessing.runner import run_preprocessing

    raw = generate_demo_dataset(tmp_path / "raw", n_cases=5, seed=0)
    plans = plan_dataset(raw, tmp_path / "work", 8.0, ["3d_fullres"], 1)
    run_preprocessing(tmp_path / "work", ["3d_fullres"], workers=1, raw=raw)
    config = plans.configurations["3d_fullres"]
    store = CaseStore(tmp_path / "work" / "preprocessed" / config.data_identifier,
                      sorted(p.name[:-5] for p in (tmp_path / "work" / "preprocessed" /
                                                   config.data_identifier).glob("*.json")))
    cfg = augment_config(config)
    hits = 0
    for index in range(100):
        for sample in plan_batch(store.cases, cfg, [True] * 10, 11, index, True):
            _, seg = crop_and_augment(*store.arrays(sample.case), sample.start, sample.params, cfg)
            hits += bool((seg > 0).any())
    assert hits >= 990, hits


# ---------------------------------------------------------------------------------------------
# region datasets: forced patches centred per region (nnU-Net's foreground_regions locations)

def _brats_like_case() -> tuple[np.ndarray, np.ndarray]:
    """A 12×20×20 body holding 2400 voxels of oedema (1), 400 of necrosis (2), 200 of enhancing (3)."""
    data = np.ones((1, 12, 20, 20), np.float32)
    seg = np.zeros((12, 20, 20), np.int16)
    seg.reshape(-1)[:3000] = 1
    seg.reshape(-1)[2400:2800] = 2
    seg.reshape(-1)[2800:3000] = 3
    return data, seg


def _region_plans(regions):
    from dataclasses import replace

    from nnlite.common.labels import Region
    plans = toy_plans()
    return replace(plans, labels={"background": 0, "label_1": 1, "label_2": 2, "label_3": 3},
                   regions=tuple(Region(name, labels, labels[-1]) for name, labels in regions))


BRATS_REGIONS = (("whole tumour", (1, 2, 3)), ("tumour core", (2, 3)), ("enhancing", (3,)))


def _centre_label_rates(tmp_path, plans, data, seg, draws: int = 9000) -> np.ndarray:
    """Preprocess one case with `plans`, load it as training does, and return the share of forced
    patches centred on labels 1, 2, 3 (a 1-voxel patch starts at its centre voxel)."""
    from nnlite.preprocessing.pipeline import preprocess_case, save_preprocessed
    config = next(iter(plans.configurations))
    spacing = plans.configurations[config].spacing
    out, out_seg, props = preprocess_case(data, seg, spacing, plans, config, case="c0")
    save_preprocessed(tmp_path, out, out_seg, props)
    case = CaseStore(tmp_path, ["c0"]).cases[0]
    rng = np.random.default_rng(7)
    labels = [out_seg[0][foreground_start(rng, case.shape, (1, 1, 1), case.class_locations)]
              for _ in range(draws)]
    return np.bincount(labels, minlength=4)[1:] / draws


def test_forced_patches_of_a_region_dataset_are_centred_per_region(tmp_path):
    """nnU-Net (default_preprocessor._sample_foreground_locations with foreground_regions;
    nnUNetDataLoader.get_bbox): a forced patch picks a region uniformly among the regions present,
    then a voxel uniformly among the region's voxels (all stored here: < 10,000). So with
    n1, n2, n3 = 2400, 400, 200 voxels of labels 1, 2, 3 and regions WT = 1∪2∪3 (3000 voxels),
    TC = 2∪3 (600), ET = 3 (200), each region takes 1/3 of the forced patches and the centre is
      label 3: (200/3000 + 200/600 + 1) / 3 = 0.4667,  label 2: (400/3000 + 400/600) / 3 = 0.2667,
      label 1: (2400/3000) / 3 = 0.2667.
    The old per-label rule (a label uniformly among 1, 2, 3) gave 1/3 each."""
    data, seg = _brats_like_case()
    rates = _centre_label_rates(tmp_path, _region_plans(BRATS_REGIONS), data, seg)
    expected = np.array([(2400 / 3000) / 3, (400 / 3000 + 400 / 600) / 3, (200 / 3000 + 200 / 600 + 1) / 3])
    np.testing.assert_allclose(rates, expected, atol=0.02)  # binomial sd ≤ 0.0053 at 9000 draws


def test_a_region_absent_from_a_case_is_never_drawn(tmp_path):
    """No enhancing tumour in the case: WT and TC present, each half of the forced patches:
    label 1: (2400/2800) / 2 = 0.4286, label 2: (400/2800 + 1) / 2 = 0.5714."""
    data, seg = _brats_like_case()
    seg[seg == 3] = 0
    rates = _centre_label_rates(tmp_path, _region_plans(BRATS_REGIONS), data, seg)
    np.testing.assert_allclose(rates, [(2400 / 2800) / 2, (400 / 2800 + 1) / 2, 0.0], atol=0.02)
