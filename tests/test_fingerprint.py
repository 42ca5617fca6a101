"""Fingerprint: one read pass, crop, seeded foreground sampling, nnU-Net's statistics and file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nnlite.planning.fingerprint as fingerprint_module
from nnlite.common.errors import UserError
from nnlite.common.schema import to_jsonable
from nnlite.data.dataset import load_dataset
from nnlite.data.image_io import write_image
from nnlite.planning.fingerprint import extract_fingerprint, fingerprint_from_nnunet, sample_foreground

SPACING = (3.0, 0.8, 0.8)  # (z, y, x)
SHAPE = (10, 16, 12)
BODY = (slice(2, 9), slice(3, 14), slice(1, 11))  # nonzero region: cropping keeps exactly this
FOREGROUND = (slice(4, 7), slice(5, 10), slice(3, 8))


def write_case(raw: Path, name: str, rng: np.random.Generator, nan: bool = False, empty: bool = False) -> None:
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    seg = np.zeros(SHAPE, np.uint8)
    if not empty:
        seg[FOREGROUND] = 1
    for channel, offset in enumerate((100.0, -500.0)):
        image = np.zeros(SHAPE, np.float32)
        image[BODY] = rng.uniform(1, 50, size=image[BODY].shape) + offset
        image[seg > 0] = rng.uniform(100, 200, size=int((seg > 0).sum())) + offset
        if nan and channel == 1:
            image[5, 5, 5] = np.nan
        write_image(raw / "imagesTr" / f"{name}_{channel:04d}.nii.gz", image, affine)
    write_image(raw / "labelsTr" / f"{name}.nii.gz", seg, affine)


def make_raw(tmp_path: Path, n: int = 3, **bad) -> Path:
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for i in range(n):
        write_case(raw, f"case_{i:03d}", rng, **(bad if i == n - 1 else {}))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "CT"}, "labels": {"background": 0, "tumor": 1},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return raw


@pytest.fixture
def few_samples(monkeypatch):
    """1e8 samples in total would be ~400 MB per channel; the rule (total // n_cases) is unchanged."""
    monkeypatch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 3000)


def test_fingerprint_records_crop_spacing_and_statistics(tmp_path, few_samples):
    fp = extract_fingerprint(load_dataset(make_raw(tmp_path)), workers=1)
    body_shape = tuple(s.stop - s.start for s in BODY)
    assert [c.case for c in fp.cases] == ["case_000", "case_001", "case_002"]
    for case in fp.cases:
        assert np.allclose(case.spacing, SPACING) and case.shape_before_crop == SHAPE and case.shape_after_crop == body_shape
    assert np.isclose(fp.median_relative_size_after_crop, np.prod(body_shape) / np.prod(SHAPE))
    ch0, ch1 = fp.intensity_per_channel["0"], fp.intensity_per_channel["1"]
    # only foreground voxels (100-200 above the channel offset) are sampled, never body background
    assert 200 <= ch0.min <= ch0.percentile_00_5 <= ch0.median <= ch0.percentile_99_5 <= ch0.max <= 300
    assert -400 <= ch1.min and ch1.max <= -300 and ch0.std > 0
    assert fp.channel_names == {"0": "T1", "1": "CT"} and fp.labels == {"background": 0, "tumor": 1}


def test_fingerprint_is_deterministic_across_runs_and_workers(tmp_path, few_samples):
    dataset = load_dataset(make_raw(tmp_path))
    one = to_jsonable(extract_fingerprint(dataset, workers=1))
    assert to_jsonable(extract_fingerprint(dataset, workers=2)) == one
    assert to_jsonable(extract_fingerprint(dataset, workers=1)) == one


def test_sampling_is_seeded_and_uses_foreground_only():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 6, 7, 8)).astype(np.float32)
    seg = np.full((1, 6, 7, 8), -1, np.int16)
    seg[0, 1:5, 1:5, 1:5] = 0
    seg[0, 2:4, 2:4, 2:4] = 2
    first, second = np.empty((2, 500), np.float32), np.empty((2, 500), np.float32)
    drawn = sample_foreground(data, seg, first)
    sample_foreground(data, seg, second)
    assert np.array_equal(first, second)
    for channel, (samples, seen) in enumerate(zip(first, drawn)):
        assert set(samples.tolist()) <= set(data[channel][seg[0] > 0].tolist())
        # the values and counts describe exactly the samples written
        assert np.array_equal(np.sort(samples), np.sort(np.repeat(seen.values, seen.counts)))
    untouched = np.full((2, 500), 7.0, np.float32)
    assert sample_foreground(data, np.zeros_like(seg), untouched) == [None, None]
    assert np.all(untouched == 7.0)


def test_sampling_draws_what_nnunets_random_choice_draws():
    """nnU-Net: one RandomState(1234) per case, `rs.choice(pixels, n, replace=True)` per channel."""
    rng = np.random.default_rng(2)
    for size in (1, 3, 77, 70_000):
        data = rng.normal(size=(3, size, 1, 1)).astype(np.float32)
        seg = np.ones((1, size, 1, 1), np.int16)
        ours = np.empty((3, 1000), np.float32)
        sample_foreground(data, seg, ours)
        rs = np.random.RandomState(1234)
        expected = [rs.choice(channel[seg[0] > 0], 1000, replace=True) for channel in data]
        assert np.array_equal(ours, np.stack(expected)), size


def test_case_without_foreground_contributes_nothing(tmp_path, few_samples):
    fp = extract_fingerprint(load_dataset(make_raw(tmp_path, empty=True)), workers=1)
    assert 200 <= fp.intensity_per_channel["0"].min


def test_integrity_error_names_the_file(tmp_path, few_samples):
    dataset = load_dataset(make_raw(tmp_path, nan=True))
    for workers in (1, 2):
        with pytest.raises(UserError) as error:
            extract_fingerprint(dataset, workers=workers)
        assert "case_002_0001" in error.value.where and "NaN" in error.value.problem


def test_nnunet_fingerprint_import_and_errors():
    stats = {"mean": 1, "std": 2, "median": 1, "min": 0, "max": 3, "percentile_00_5": 0, "percentile_99_5": 3}
    data = {"spacings": [[1, 2, 3], [1, 2, 4]], "shapes_after_crop": [[10, 20, 30], [11, 21, 31]],
            "foreground_intensity_properties_per_channel": {"0": stats},
            "median_relative_size_after_cropping": 0.6}
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}
    fp = fingerprint_from_nnunet(data, meta)
    assert fp.cases[1].spacing == (1.0, 2.0, 4.0) and fp.cases[1].shape_after_crop == (11, 21, 31)
    assert fp.median_relative_size_after_crop == 0.6 and fp.intensity_per_channel["0"].std == 2.0
    with pytest.raises(UserError, match="shapes_after_crop"):
        fingerprint_from_nnunet({k: v for k, v in data.items() if k != "shapes_after_crop"}, meta)
    with pytest.raises(UserError, match="labels"):
        fingerprint_from_nnunet(data, {"channel_names": {"0": "CT"}, "labels": {"background": 0, "r": [1, 2]}})


@pytest.mark.slow
def test_real_hippocampus_matches_nnunet(hippocampus_raw):
    # nnunetv2 2.8.1's dataset_fingerprint.json for these 220 cases (nnUNetv2_extract_fingerprint -d 4)
    fp = extract_fingerprint(load_dataset(hippocampus_raw), workers=2)
    stats = fp.intensity_per_channel["0"]
    assert (stats.mean, stats.std, stats.median) == (21606.681640625, 59787.15234375, 360.1993408203125)
    assert (stats.min, stats.max) == (0.0, 486420.21875)
    assert (stats.percentile_00_5, stats.percentile_99_5) == (28.0, 278030.90625)
    assert fp.median_relative_size_after_crop == 1.0 and len(fp.cases) == 220
    assert fp.cases[0].spacing == (1.0, 1.0, 1.0) and fp.cases[0].shape_after_crop == (35, 51, 35)
