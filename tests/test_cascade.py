"""The cascade's previous stage: where its training inputs come from, their geometry, augmentation."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from inference_fixtures import tiny_plans
from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.planning.splits import make_splits
from nnlite.data.image_io import write_seg
from nnlite.loading.loader import build_loader
from nnlite.loading.previous_stage import (MAX_COMPONENT_FRACTION, augment_one_hot, binary_operator,
                                           remove_random_component)
from nnlite.plans import save_plans
from nnlite.preprocessing.cascade import input_channels, one_hot, previous_stage_dir, seg_to_stage_input
from nnlite.preprocessing.pipeline import preprocess_case, save_preprocessed
from nnlite.training.lowres_predictions import prepare_previous_stage

SHAPE = (8, 16, 16)  # (Z, Y, X) of every toy case = the patch, so a sample sees the whole case
SPACING = (2.0, 1.0, 1.0)
N_CASES, N_FOLDS = 6, 3
DECOY = 2  # a lowres "prediction" of a case its fold trained on: label 2 everywhere


def cascade_plans():
    """tiny_plans with 3d_lowres, 3d_fullres and 3d_cascade_fullres (same grid: no resampling)."""
    plans = tiny_plans(labels=2, spacing=SPACING, patch=SHAPE)
    full = plans.configurations["3d_fullres"]
    configs = {"3d_lowres": replace(full, data_identifier="3d_lowres", next_stage="3d_cascade_fullres"),
               "3d_fullres": full,
               "3d_cascade_fullres": replace(full, previous_stage="3d_lowres")}
    return replace(plans, configurations=configs)


def fold_pattern(fold: int) -> np.ndarray:
    """What lowres fold `fold` predicts for its validation cases: label 1 on slice `fold`, 2 on
    slice fold + 4 (a map no other fold produces, and never the decoy)."""
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[fold], seg[fold + 4] = 1, 2
    return seg


def make_work(root: Path) -> tuple[Path, list[dict]]:
    """Preprocessed cascade cases, 3 folds, and lowres validation folders that also hold decoys."""
    work = root / "work"
    plans = cascade_plans()
    save_plans(plans, work / "plans.json")
    rng = np.random.default_rng(0)
    cases = [f"case_{i}" for i in range(N_CASES)]
    for case in cases:
        data = rng.normal(10, 1, (1, *SHAPE)).astype(np.float32)  # nonzero: no crop
        seg = (rng.random(SHAPE) < 0.2).astype(np.int16)
        arrays = preprocess_case(data, seg, SPACING, plans, "3d_cascade_fullres", case=case,
                                 affine=np.diag([1.0, 1.0, 2.0, 1.0]))
        save_preprocessed(work / "preprocessed" / "3d_fullres", *arrays)
    splits = make_splits(cases, n_folds=N_FOLDS)
    write_json_atomic(work / "splits.json", splits)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for fold, split in enumerate(splits):
        folder = work / "results" / "3d_lowres" / f"fold_{fold}" / "validation"
        for case in split["val"]:
            write_seg(folder / f"{case}.nii.gz", fold_pattern(fold), affine)
        for case in split["train"]:  # must never be used: this fold's model saw these cases
            write_seg(folder / f"{case}.nii.gz", np.full(SHAPE, DECOY, np.uint8), affine)
    return work, splits


def validating_fold(splits: list[dict], case: str) -> int:
    (fold,) = [k for k, split in enumerate(splits) if case in split["val"]]
    return fold


def test_training_inputs_come_only_from_the_fold_that_did_not_train_on_the_case(tmp_path):
    work, splits = make_work(tmp_path)
    plans = cascade_plans()
    folder = prepare_previous_stage(work, plans, "3d_cascade_fullres")
    assert folder == previous_stage_dir(work, plans, "3d_cascade_fullres")
    for case in sum((s["val"] for s in splits), []):
        fold = validating_fold(splits, case)
        assert case not in splits[fold]["train"]
        np.testing.assert_array_equal(np.load(folder / f"{case}_prev.npy")[0], fold_pattern(fold))
        assert json.loads((folder / f"{case}_prev.json").read_text())["fold"] == fold
    # the cascade's training batches: image channel + one one-hot channel per label of that prediction
    cases = sorted(sum((s["val"] for s in splits), []))
    loader = build_loader(work, plans, "3d_cascade_fullres", cases, batch_size=3, augment=False, seed=0,
                          workers=0, forced=[False] * 3, deep_supervision=False)
    seen = set()
    for _, batch in zip(range(8), loader):
        assert batch["data"].shape == (3, input_channels(plans, "3d_cascade_fullres"), *SHAPE)
        for sample, case in zip(batch["data"], batch["cases"]):
            expected = one_hot(fold_pattern(validating_fold(splits, case))[None], [1, 2])
            torch.testing.assert_close(sample[1:], expected, rtol=0, atol=0)
            seen.add(case)
    assert len(seen) >= 4


def test_prepare_keeps_unchanged_files_and_redoes_changed_ones(tmp_path):
    work, splits = make_work(tmp_path)
    plans = cascade_plans()
    folder = prepare_previous_stage(work, plans, "3d_cascade_fullres")
    case = splits[1]["val"][0]
    marker = np.full((1, 1, 1, 1), 7, np.int8)  # only a rewrite can remove it
    np.save(folder / f"{case}_prev.npy", marker)
    source = work / "results" / "3d_lowres" / "fold_1" / "validation" / f"{case}.nii.gz"
    os.utime(source, ns=(1, 1))  # a new timestamp alone is no change
    prepare_previous_stage(work, plans, "3d_cascade_fullres")
    np.testing.assert_array_equal(np.load(folder / f"{case}_prev.npy"), marker)
    new = fold_pattern(1)
    new[7] = 1
    write_seg(work / "results" / "3d_lowres" / "fold_1" / "validation" / f"{case}.nii.gz", new,
              np.diag([1.0, 1.0, 2.0, 1.0]))
    prepare_previous_stage(work, plans, "3d_cascade_fullres")
    np.testing.assert_array_equal(np.load(folder / f"{case}_prev.npy")[0], new)


def test_a_case_without_lowres_prediction_is_a_user_error(tmp_path):
    work, splits = make_work(tmp_path)
    case = splits[2]["val"][0]
    (work / "results" / "3d_lowres" / "fold_2" / "validation" / f"{case}.nii.gz").unlink()
    with pytest.raises(UserError, match=case):
        prepare_previous_stage(work, cascade_plans(), "3d_cascade_fullres")


def test_stage_input_follows_the_preprocessing_of_labels(rng):
    """Transposed, cropped and resampled exactly as preprocessing treats a label map."""
    plans = tiny_plans(labels=2, spacing=(2.0, 1.0, 1.0), patch=(8, 16, 16), transpose=(0, 2, 1))
    shape, spacing = (10, 15, 21), (3.1, 0.8, 1.3)  # raw (z, y, x)
    data = np.zeros((1, *shape), np.float32)
    data[:, 1:9, 2:14, 3:20] = rng.normal(5, 1, (1, 8, 12, 17))
    seg = np.zeros(shape, np.int16)
    seg[2:8, 3:12, 4:18] = rng.integers(0, 3, (6, 9, 14))
    _, expected, props = preprocess_case(data, seg, spacing, plans, "3d_fullres")
    got = seg_to_stage_input(seg, props, plans, "3d_fullres")
    assert got.shape == (1, *props.shape) and got.dtype == np.int8
    np.testing.assert_array_equal(got, np.maximum(expected, 0))  # -1 (outside) is background here


def ball(radius: float, ndim: int) -> np.ndarray:
    r = int(np.floor(radius))
    grid = np.indices((2 * r + 1,) * ndim) - r
    return (grid**2).sum(0) <= radius**2


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), radius=st.floats(1.0, 3.5), operator=st.sampled_from(
    ["dilation", "erosion", "closing", "opening"]))
def test_binary_operators_match_scipy_with_a_ball(seed, radius, operator):
    r = np.random.default_rng(seed)
    mask = ndimage.binary_dilation(r.random((7, 9, 8)) < 0.08, iterations=1)
    strel = ball(radius, 3)

    def dilate(m):
        return ndimage.binary_dilation(m, strel)

    def erode(m):  # the patch border does not erode
        return ndimage.binary_erosion(m, strel, border_value=1)

    expected = {"dilation": lambda m: dilate(m), "erosion": lambda m: erode(m),
                "closing": lambda m: erode(dilate(m)), "opening": lambda m: dilate(erode(m))}[operator](mask)
    np.testing.assert_array_equal(binary_operator(mask, operator, radius), expected)


def test_component_removal_takes_one_whole_small_component():
    mask = np.zeros((10, 10, 10), bool)
    mask[:6, :6, :6] = True  # 216 voxels = 21.6 % of the patch: too large to remove
    mask[8:, 8:, 8:] = True  # 8 voxels
    mask[8, 0, 0] = True  # 1 voxel
    removed = set()
    for seed in range(30):
        gone = remove_random_component(mask, np.random.default_rng(seed))
        assert gone.sum() in (1, 8) and not gone[:6, :6, :6].any()
        assert gone.sum() < MAX_COMPONENT_FRACTION * mask.size
        removed.add(int(gone.sum()))
    assert removed == {1, 8}
    assert not remove_random_component(np.zeros((4, 4), bool), np.random.default_rng(0)).any()


def test_augmentation_keeps_one_hot_and_changes_about_the_reference_share():
    prev = np.zeros((1, 12, 20, 20), np.int8)
    prev[0, 3:9, 4:12, 4:12] = 1  # 384 voxels = 8 % of the patch: removable
    prev[0, 4:8, 14:18, 13:18] = 2
    base = one_hot(prev, [1, 2]).numpy()
    changed = 0
    for seed in range(300):
        out = augment_one_hot(base.copy(), np.random.default_rng(seed))
        assert set(np.unique(out)) <= {0.0, 1.0} and out.sum(0).max() <= 1
        changed += not np.array_equal(out, base)
    # P(any change) = 1 - (1 - 0.4·(1 - 0.5²)·q)(1 - 0.2·(1 - 0.5²)) with q ≈ 7/8 (a closing
    # of a box changes nothing): ≈ 0.37
    assert 0.25 < changed / 300 < 0.5
