"""nnlite.inference.dicom_seg through the case writer: a SEG for series that lack the headers
highdicom copies (Frame of Reference UID, slice thickness), and no file left for a failed case."""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest

from command_line import run_command
from inference_fixtures import save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.data.image_io import read_image
from nnlite.inference.outputs import write_case_outputs
from tests.dicom_fixtures import SeriesGeometry, write_series

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def label_map(shape=(5, 12, 10)) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    seg[1:3, 2:6, 2:5] = 1
    seg[3:5, 6:10, 5:9] = 2
    return seg


def frames_by_position(seg_file, sources) -> np.ndarray:
    """(Z, Y, X) segment numbers of a SEG, slices in the order of their position."""
    by_position = sorted(sources, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in by_position]
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(seg_file)).get_pixels_by_source_instance(
        uids, combine_segments=True)


@pytest.mark.parametrize("omit", [("FrameOfReferenceUID",), ("FrameOfReferenceUID", "SliceThickness")],
                         ids=["anonymised", "simpleitk"])
def test_series_without_frame_of_reference_gets_a_seg_with_a_new_one(tmp_path, omit, caplog):
    seg = label_map()
    sources = write_series(tmp_path / "in" / "p7_0000", seg.astype(np.int16) * 100, omit=omit)
    out = tmp_path / "out" / "p7.nii.gz"
    with caplog.at_level(logging.WARNING, logger="nnlite.inference.dicom_seg"):
        write_case_outputs(out, seg, SeriesGeometry().ras_affine(), dicom=(tmp_path / "in" / "p7_0000", LABELS))
    assert sorted(p.name for p in out.parent.iterdir()) == ["p7.dcm", "p7.nii.gz"]
    written = pydicom.dcmread(out.with_name("p7.dcm"))
    assert written.FrameOfReferenceUID and float(written.SharedFunctionalGroupsSequence[0]
                                                  .PixelMeasuresSequence[0].SliceThickness) == 2.0
    np.testing.assert_array_equal(frames_by_position(out.with_name("p7.dcm"), sources), seg)
    np.testing.assert_array_equal(read_image(out).array, seg)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert warning.startswith("p7: the DICOM series has no Frame of Reference UID") and "a new one" in warning
    assert ("slice thickness" in warning) == ("SliceThickness" in omit)
    assert all("FrameOfReferenceUID" not in pydicom.dcmread(p) for p in sources)  # inputs untouched


def test_a_seg_that_cannot_be_made_leaves_no_file_of_the_case(tmp_path):
    write_series(tmp_path / "in" / "p8_0000", label_map().astype(np.int16))
    out = tmp_path / "out" / "p8.nii.gz"
    probs = np.zeros((3, 4, 12, 10), dtype=np.float16)
    with pytest.raises(UserError, match="is not the series'"):  # a label map of another shape
        write_case_outputs(out, label_map((4, 12, 10)), np.eye(4), probabilities=probs,
                           dicom=(tmp_path / "in" / "p8_0000", LABELS))
    assert list(out.parent.iterdir()) == []  # no label map, no probabilities, no staging folder


def test_predict_dicom_seg_of_a_series_without_frame_of_reference(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2), folds=(0,))
    volume = np.random.default_rng(3).normal(100, 20, (9, 22, 18)).astype(np.int16)
    write_series(tmp_path / "in" / "q1_0000", volume, omit=("FrameOfReferenceUID",))
    result = run_command("predict", work, tmp_path / "in", tmp_path / "out", "--device", "cpu", "--dicom-seg")
    assert result.returncode == 0, result.stderr
    assert "q1: the DICOM series has no Frame of Reference UID" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q1.dcm", "q1.nii.gz"]


def test_predict_reports_a_seg_failure_as_bad_input_with_no_label_map(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2), folds=(0,))
    volume = np.random.default_rng(3).normal(100, 20, (9, 22, 18)).astype(np.int16)
    sources = write_series(tmp_path / "in" / "q2_0000", volume)
    for i, path in enumerate(sources):  # slices of two frames of reference: no SEG can span them
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = f"1.2.3.{i % 2}"
        ds.save_as(path)
    result = run_command("predict", work, tmp_path / "in", tmp_path / "out", "--device", "cpu", "--dicom-seg")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]  # a failed case: logged, then its `error:` line
    assert last.startswith("error: q2: ") and "q2_0000: no DICOM-SEG can be made" in last
    assert not any(p.name.startswith("q2") for p in (tmp_path / "out").iterdir())
