"""preprocess_case, foreground locations, storage, the inverse path and the preprocess command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.data.cropping import crop_to_nonzero
from nnlite.data.image_io import write_image, write_seg
from nnlite.common.labels import Region
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans, save_plans
from nnlite.preprocess import main as preprocess_main
from nnlite.preprocessing.pipeline import (case_files, load_case_properties, load_preprocessed,
                                           preprocess_case, resample_to_original, restore_original_geometry,
                                           sample_class_locations, save_preprocessed)
from nnlite.preprocessing.pipeline import ANNOTATED_KEY
from nnlite.preprocessing.records import check_matches_plan, make_record, mismatch, record_path
from nnlite.preprocessing.resampling import resample_image, resample_seg

STATS = IntensityStats(mean=5.0, std=1.0, median=5.0, min=0.0, max=10.0,
                       percentile_00_5=1.0, percentile_99_5=9.0)


def _config(spacing, identifier, ndim=3, **extra) -> ConfigurationPlan:
    network = NetworkPlan(strides=((1,) * ndim, (2,) * ndim), kernel_sizes=((3,) * ndim,) * 2,
                          features_per_stage=(4, 8))
    return ConfigurationPlan(spacing=spacing, patch_size=(8,) * ndim, median_shape=(8,) * ndim,
                             batch_size=2, network=network, normalization=("zscore",),
                             use_mask_for_norm=(False,), batch_dice=False, data_identifier=identifier,
                             **extra)


def _plans(transpose=(0, 1, 2), raw: Path | None = None, fullres=(2.0, 1.0, 1.0)) -> Plans:
    configs = {
        "3d_fullres": _config(fullres, "nnlite_3d_fullres"),
        "2d": _config(fullres[1:], "nnlite_2d", ndim=2),
        "3d_cascade_fullres": _config(fullres, "nnlite_3d_fullres", previous_stage="3d_lowres"),
    }
    return Plans(dataset_name="Dataset999_Tiny", transpose=transpose, original_median_spacing=(2, 1, 1),
                 original_median_shape=(10, 12, 14), configurations=configs,
                 intensity_per_channel={"0": STATS}, channel_names={"0": "MR"},
                 labels={"background": 0, "a": 1, "b": 2}, gpu_memory_gb=8.0,
                 extra={} if raw is None else {"raw_path": str(raw)})


def _case(rng, shape=(10, 12, 14)):
    """A body box of noise over zero background with two label blocks inside."""
    data = np.zeros((1,) + shape, np.float32)
    data[0, 2:9, 2:11, 1:12] = rng.normal(loc=5, scale=2, size=(7, 9, 11))
    seg = np.zeros(shape, np.int16)
    seg[3:7, 4:8, 3:9] = 1
    seg[7:9, 3:6, 8:11] = 2
    return data, seg


def test_same_spacing_crops_normalizes_and_marks_outside(rng):
    data, seg = _case(rng)
    out, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 1.0), _plans(), "3d_fullres", case="c")
    assert props.bbox == ((2, 9), (2, 11), (1, 12))
    assert out.shape == (1, 7, 9, 11) and props.shape == props.shape_after_crop == (7, 9, 11)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    assert np.array_equal(out_seg[0], seg[2:9, 2:11, 1:12]) and out_seg.dtype == np.int8
    assert props.shape_before_crop == (10, 12, 14) and props.spacing == (2.0, 1.0, 1.0)


def test_input_is_not_modified(rng):
    data, seg = _case(rng)
    data_copy, seg_copy = data.copy(), seg.copy()
    preprocess_case(data, seg, (2.0, 1.0, 1.0), _plans(), "3d_fullres")
    assert np.array_equal(data, data_copy) and np.array_equal(seg, seg_copy)


def test_transpose_and_resampling_shape(rng):
    data, seg = _case(rng)
    plans = _plans(transpose=(2, 0, 1), fullres=(0.5, 1.0, 1.0))
    out, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 3.0), plans, "3d_fullres")
    # raw (z, y, x) spacing (2, 1, 3) → transposed (3, 2, 1); cropped raw box (7, 9, 11) → (11, 7, 9)
    assert props.shape_after_crop == (11, 7, 9)
    assert props.shape == (66, 14, 9) == out.shape[1:] == out_seg.shape[1:]
    assert set(np.unique(out_seg)) <= {-1, 0, 1, 2}


def test_2d_keeps_the_case_own_first_axis_spacing(rng):
    data, seg = _case(rng)
    out, _, props = preprocess_case(data, seg, (3.0, 1.0, 1.0), _plans(fullres=(2.0, 0.5, 0.5)), "2d")
    assert props.spacing == (3.0, 0.5, 0.5)
    assert out.shape[1:] == (7, 18, 22)


def test_ct_values_stay_inside_the_clip_range_after_cubic_resampling(rng):
    data, seg = _case(rng)
    data[0, 2:9, 2:11, 1:12] = np.where(rng.random((7, 9, 11)) > 0.5, 9.5, 0.5)  # hard edges
    plans = _plans(fullres=(0.7, 0.45, 0.45))
    ct = Plans(**{**plans.__dict__, "configurations": {
        "3d_fullres": ConfigurationPlan(**{**plans.configurations["3d_fullres"].__dict__,
                                           "normalization": ("ct",)})}})
    out, _, _ = preprocess_case(data, seg, (2.0, 1.0, 1.0), ct, "3d_fullres")
    low, high = (STATS.percentile_00_5 - 5.0) / 1.0, (STATS.percentile_99_5 - 5.0) / 1.0
    assert out.min() >= low and out.max() <= high  # an unclipped cubic spline overshoots here
    assert out.max() == high


def test_class_locations_count_and_lie_on_their_label():
    seg = np.zeros((1, 40, 50, 60), np.int8)
    seg[0, :30] = 1  # 90,000 voxels: the 10,000 cap applies
    seg[0, 30:, :3] = 2  # 1,800 voxels: all of them
    locations = sample_class_locations(seg, [1, 2, 3])
    assert len(locations["1"]) == 10000 and len(locations["2"]) == 1800 and locations["3"] == []
    assert all(seg[0][tuple(p)] == 1 for p in locations["1"][:500])
    assert len({tuple(p) for p in locations["1"]}) == 10000  # drawn without replacement
    big = np.ones((1, 110, 100, 100), np.int8)  # 1.1 M voxels: 1 % = 11,000 > 10,000
    assert len(sample_class_locations(big, [1])["1"]) == math.ceil(0.01 * big.size)


def test_class_locations_follow_the_reference_random_stream():
    seg = np.zeros((1, 6, 7, 8), np.int8)
    seg[0, 1:3] = 2
    seg[0, 4:] = 1
    rng = np.random.RandomState(1234)  # one stream, labels in ascending order
    first = np.argwhere(seg[0] == 1)[rng.choice(112, 112, replace=False)]
    second = np.argwhere(seg[0] == 2)[rng.choice(112, 112, replace=False)]
    locations = sample_class_locations(seg, [1, 2])
    assert locations["1"] == first.tolist() and locations["2"] == second.tolist()


def test_an_ignore_label_adds_annotated_locations_and_no_class(rng):
    data, seg = _case(rng)
    seg[5:, :, :6] = 3  # unannotated
    plans = _plans()
    sparse = replace(plans, labels={**plans.labels, "ignore": 3})
    assert (sparse.num_classes, sparse.ignore_label, plans.num_classes, plans.ignore_label) == (3, 3, 3, None)
    _, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 1.0), sparse, "3d_fullres")
    _, _, dense_props = preprocess_case(data, seg, (2.0, 1.0, 1.0), plans, "3d_fullres")
    assert set(props.class_locations) == {"1", "2", ANNOTATED_KEY}
    annotated = {tuple(p) for p in props.class_locations[ANNOTATED_KEY]}
    expected = {tuple(p) for p in np.argwhere((out_seg[0] >= 0) & (out_seg[0] != 3))}
    assert annotated == expected  # fewer than 10,000: every annotated voxel, none outside or ignored
    assert {k: props.class_locations[k] for k in ("1", "2")} == dense_props.class_locations


def test_region_locations_are_stored_per_region_with_the_reference_stream():
    """nnU-Net samples a region dataset per foreground region: the voxels holding any of its labels,
    its union taken label block by label block in the region's order, drawn from the one
    RandomState(1234) in region order. Keys: Python's repr of the label tuple."""
    seg = np.zeros((1, 6, 7, 8), np.int8)
    seg[0, 0] = 3
    seg[0, 1:3] = 2
    seg[0, 4:] = 1
    rng = np.random.RandomState(1234)
    expected = {}
    for key, members in (("(1, 2, 3)", (1, 2, 3)), ("(2, 3)", (2, 3)), ("(3,)", (3,))):
        union = np.concatenate([np.argwhere(seg[0] == label) for label in members])
        expected[key] = union[rng.choice(len(union), len(union), replace=False)].tolist()
    assert sample_class_locations(seg, [(1, 2, 3), (2, 3), (3,)]) == expected


def test_region_plans_store_region_keys_and_label_plans_keep_label_keys(rng):
    data, seg = _case(rng)
    plans = _plans()
    regions = replace(plans, labels={"background": 0, "label_1": 1, "label_2": 2},
                      regions=(Region("both", (1, 2), 1), Region("second", (2,), 2)))
    _, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 1.0), regions, "3d_fullres")
    assert list(props.class_locations) == ["(1, 2)", "(2,)"]
    assert len(props.class_locations["(1, 2)"]) == int((out_seg > 0).sum())
    _, _, label_props = preprocess_case(data, seg, (2.0, 1.0, 1.0), plans, "3d_fullres")
    assert list(label_props.class_locations) == ["1", "2"]


def test_a_region_folder_with_per_label_locations_is_redone_and_refused(tmp_path):
    """A region dataset preprocessed before locations were stored per region (its record lacks the
    regions) must not be sampled: preprocess redoes it, train refuses it; label records unchanged."""
    plans = _plans()
    regions = replace(plans, labels={"background": 0, "label_1": 1, "label_2": 2},
                      regions=(Region("both", (1, 2), 1), Region("second", (2,), 2)))
    assert set(make_record(plans, "3d_fullres", ["a"])["fields"]) == {
        "data_identifier", "spacing", "normalization", "use_mask_for_norm", "resampling_order_data",
        "resampling_order_seg", "resampling_order_z", "transpose", "intensity_per_channel",
        "channel_names", "labels"}
    old = make_record(regions, "3d_fullres", ["a"])
    old["fields"] = {k: v for k, v in old["fields"].items() if "region" not in k}
    old["sha256"] = "made-by-the-old-rule"
    problem = mismatch(old, make_record(regions, "3d_fullres", ["a"]))
    assert problem is not None and "per region" in problem
    folder = tmp_path / "preprocessed" / "nnlite_3d_fullres"
    folder.mkdir(parents=True)
    record_path(folder).write_text(json.dumps(old))
    with pytest.raises(UserError, match="per region"):
        check_matches_plan(folder, regions, "3d_fullres", tmp_path)


def test_seg_dtype_widens_for_large_labels(rng):
    data, seg = _case(rng)
    seg[seg == 2] = 200
    plans = _plans()
    plans = Plans(**{**plans.__dict__, "labels": {"background": 0, "a": 1, "b": 200}})
    _, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 1.0), plans, "3d_fullres")
    assert out_seg.dtype == np.int16 and len(props.class_locations["200"]) > 0


def test_save_load_round_trip_is_memory_mappable(tmp_path, rng):
    data, seg = _case(rng)
    out, out_seg, props = preprocess_case(data, seg, (2.0, 1.0, 1.0), _plans(), "3d_fullres", case="c1",
                                          affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    save_preprocessed(tmp_path, out, out_seg, props)
    loaded, loaded_seg, loaded_props = load_preprocessed(tmp_path, "c1")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float32
    assert np.array_equal(loaded, out) and np.array_equal(loaded_seg, out_seg)
    assert loaded_props == props == load_case_properties(tmp_path / "c1.json")
    assert not list(tmp_path.glob("*.tmp"))


def test_load_case_properties_rejects_unknown_keys(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"case": "x", "surprise": 1}))
    with pytest.raises(UserError, match="surprise"):
        load_case_properties(tmp_path / "bad.json")


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_prediction_goes_back_to_the_raw_geometry(rng, transpose):
    data, seg = _case(rng, shape=(12, 30, 28))
    seg[:] = 0
    seg[3:10, 5:25, 4:22] = 1
    data[0, 1:11, 2:28, 1:27] = rng.normal(loc=5, size=(10, 26, 26))
    plans = _plans(transpose=transpose, fullres=(1.5, 0.7, 0.7))
    _, out_seg, props = preprocess_case(data, seg, (3.0, 1.0, 1.0), plans, "3d_fullres")
    onehot = np.stack([out_seg[0] <= 0, out_seg[0] == 1, out_seg[0] == 2]).astype(np.float32)
    back = resample_to_original(onehot, props, plans, "3d_fullres")
    assert back.shape == (3,) + props.shape_after_crop
    probs = restore_original_geometry(back, props, plans, fill=(1.0, 0.0, 0.0))
    assert probs.shape == (3, 12, 30, 28)
    restored = probs.argmax(0)
    assert restored[0, 0, 0] == 0 and probs[0, 0, 0, 0] == 1.0  # outside the crop: background
    dice = 2 * np.sum((restored == 1) & (seg == 1)) / (np.sum(restored == 1) + np.sum(seg == 1))
    assert dice > 0.95


def test_the_plan_resampling_orders_are_used(rng):
    """resampling_order_seg and resampling_order_probabilities of the plan reach the resampling."""
    data, seg = _case(rng, shape=(12, 30, 28))
    plans = _plans(fullres=(1.5, 0.7, 0.7))
    config = replace(plans.configurations["3d_fullres"], resampling_order_seg=0,
                     resampling_order_probabilities=0)
    nearest = replace(plans, configurations={"3d_fullres": config})
    spacing = (3.0, 1.0, 1.0)
    _, linear_seg, props = preprocess_case(data, seg, spacing, plans, "3d_fullres")
    _, nearest_seg, _ = preprocess_case(data, seg, spacing, nearest, "3d_fullres")
    crop = crop_to_nonzero(data.copy(), seg[None])
    assert np.array_equal(nearest_seg, resample_seg(crop.seg, props.shape, spacing, props.spacing, 0))
    assert not np.array_equal(nearest_seg, linear_seg)
    probs = rng.random((3, *props.shape)).astype(np.float32)
    back = resample_to_original(probs, props, nearest, "3d_fullres")
    np.testing.assert_array_equal(back, resample_image(probs, props.shape_after_crop, props.spacing,
                                                       spacing, order=0))
    assert not np.array_equal(back, resample_to_original(probs, props, plans, "3d_fullres"))


@pytest.mark.parametrize("field, value", [("resampling_order_seg", 6), ("resampling_order_data", -1),
                                          ("resampling_order_z", 1)])
def test_unsupported_resampling_orders_are_refused(field, value):
    with pytest.raises(UserError, match="resampling_order"):
        _config((1.0, 1.0, 1.0), "x", **{field: value})


def test_restore_original_geometry_inverts_crop_and_transpose(rng):
    data, seg = _case(rng)
    plans = _plans(transpose=(1, 2, 0), fullres=(1.0, 1.0, 1.0))
    _, out_seg, props = preprocess_case(data, seg, (1.0, 1.0, 1.0), plans, "3d_fullres")
    assert out_seg.shape[1:] == (9, 11, 7)
    restored = restore_original_geometry(np.maximum(out_seg[0], 0), props, plans, fill=0)
    assert np.array_equal(restored, seg)


# ---------------------------------------------------------------------------------------------
# the command on a tiny NIfTI dataset


def _write_dataset(raw: Path, n_cases: int, rng) -> None:
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i in range(n_cases):
        data, seg = _case(rng)
        affine = np.diag([1.0, 1.0, 2.0, 1.0])  # NIfTI (x, y, z) → spacing (z, y, x) = (2, 1, 1)
        write_image(raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz", data[0], affine)
        write_seg(raw / "labelsTr" / f"case_{i:03d}.nii.gz", seg, affine)
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": n_cases, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_preprocess_command_end_to_end(tmp_path, rng, capsys):
    raw, work = tmp_path / "raw", tmp_path / "work"
    _write_dataset(raw, 3, rng)
    save_plans(_plans(raw=raw.resolve(), fullres=(1.5, 0.8, 0.8)), work / "plans.json")
    assert preprocess_main([str(work), "--workers", "2"]) == 0
    folders = sorted(p.name for p in (work / "preprocessed").iterdir() if p.is_dir())
    assert folders == ["nnlite_2d", "nnlite_3d_fullres"]  # the cascade reuses 3d_fullres
    records = sorted(p.name for p in (work / "preprocessed").iterdir() if p.is_file())
    assert records == ["nnlite_2d.json", "nnlite_3d_fullres.json"]  # beside each folder
    for folder in folders:
        for i in range(3):
            data_path, seg_path, json_path = case_files(work / "preprocessed" / folder, f"case_{i:03d}")
            props = load_case_properties(json_path)
            assert np.load(data_path, mmap_mode="r").shape[1:] == props.shape
            assert np.load(seg_path).dtype == np.int8
    # a second run skips everything; --overwrite redoes it
    data_path = work / "preprocessed" / "nnlite_2d" / "case_000.npy"
    expected = np.load(data_path)
    np.save(data_path, np.zeros(1, np.float32))  # a marker: only a rewrite can remove it
    assert preprocess_main([str(work), "--configs", "2d"]) == 0
    assert np.load(data_path).shape == (1,)
    assert preprocess_main([str(work), "--configs", "2d", "--overwrite", "--workers", "1"]) == 0
    np.testing.assert_array_equal(np.load(data_path), expected)


@pytest.mark.slow
def test_preprocess_command_reports_a_broken_case_and_keeps_the_others(tmp_path, rng):
    from nnlite.common.cli import run

    raw, work = tmp_path / "raw", tmp_path / "work"
    _write_dataset(raw, 3, rng)
    broken = raw / "imagesTr" / "case_001_0000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated gzip
    save_plans(_plans(raw=raw.resolve()), work / "plans.json")
    assert run(preprocess_main, [str(work), "--configs", "3d_fullres", "--workers", "2"]) == 2
    folder = work / "preprocessed" / "nnlite_3d_fullres"
    assert (folder / "case_000.json").is_file() and (folder / "case_002.json").is_file()
    assert not (folder / "case_001.json").exists()


def test_unknown_configuration_and_missing_raw_path_are_user_errors(tmp_path, capsys):
    from nnlite.common.cli import run

    save_plans(_plans(), tmp_path / "plans.json")
    assert run(preprocess_main, [str(tmp_path)]) == 2
    assert "raw_path" in capsys.readouterr().err
    save_plans(_plans(raw=tmp_path), tmp_path / "plans.json")
    assert run(preprocess_main, [str(tmp_path), "--configs", "3d_huge", "--raw", str(tmp_path)]) == 2
