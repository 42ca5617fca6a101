"""predict across formats: any supported input, label maps in the input's format and geometry,
DICOM series folders in, DICOM-SEG out (`--dicom-seg`)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from command_line import assert_one_line_error, run_command
from inference_fixtures import rgb_picture_model, save_random_model, tiny_plans
from nnlite.data.image_io import read_image
from nnlite.inference.options import PredictOptions
from nnlite.inference.predictor import predict_folder
from nnlite.predict import main as predict_main
from tests.dicom_fixtures import SeriesGeometry, write_nifti_twin, write_series

OBLIQUE = SeriesGeometry(spacing=(2.0, 0.75, 0.5), origin=(10.0, -20.0, 35.0),
                         row=(np.cos(0.4), np.sin(0.4), 0.0), column=(-np.sin(0.4), np.cos(0.4), 0.0))


def blobs(rng: np.random.Generator, shape=(9, 22, 18)) -> np.ndarray:
    """An int16 volume (Z, Y, X) with two bright blobs on a noisy background."""
    volume = rng.normal(100, 20, shape)
    volume[2:5, 4:10, 3:9] += 400
    volume[5:8, 12:19, 9:16] += 250
    return volume.astype(np.int16)


@pytest.fixture
def trained(tmp_path) -> Path:
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2), folds=(0,))
    return work


def itk_file(path: Path, volume: np.ndarray, geometry: SeriesGeometry) -> Path:
    """Write with SimpleITK itself (LPS geometry straight from the DICOM-style description)."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(np.stack([geometry.row, geometry.column, geometry.normal], axis=1).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


def test_mha_inputs_predict_into_mha_with_their_geometry(tmp_path, trained, rng):
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume = blobs(rng)
    itk_file(inputs / "a_0000.mha", volume, OBLIQUE)
    write_nifti_twin(inputs / "b_0000.nii.gz", volume, OBLIQUE)  # the same image as NIfTI
    itk_file(inputs / "c_0000.nrrd", blobs(rng, (7, 20, 16)), SeriesGeometry())
    report = predict_folder(trained, inputs, tmp_path / "out", PredictOptions(device="cpu"))
    assert sorted(report.predicted) == ["a", "b", "c"] and not report.failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mha", "b.nii.gz", "c.nrrd"]
    source, seg = sitk.ReadImage(str(inputs / "a_0000.mha")), sitk.ReadImage(str(tmp_path / "out" / "a.mha"))
    assert seg.GetSize() == source.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), source.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the NIfTI twin of the same image predicts the same labels
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "b.nii.gz").array, labels)
    assert sitk.ReadImage(str(tmp_path / "out" / "c.nrrd")).GetSize() == (16, 20, 7)


def test_dicom_series_predicts_the_labels_of_its_nifti_twin(tmp_path, trained, rng):
    dicom_in, nifti_in = tmp_path / "dicom", tmp_path / "nifti"
    volume = blobs(rng)
    write_series(dicom_in / "p1_0000", volume, OBLIQUE, seed=7)
    write_nifti_twin(nifti_in.mkdir() or nifti_in / "p1_0000.nii.gz", volume, OBLIQUE)
    options = PredictOptions(device="cpu")
    assert predict_folder(trained, dicom_in, tmp_path / "out_dicom", options).predicted == ["p1"]
    assert predict_folder(trained, nifti_in, tmp_path / "out_nifti", options).predicted == ["p1"]
    from_dicom = read_image(tmp_path / "out_dicom" / "p1.nii.gz")
    from_nifti = read_image(tmp_path / "out_nifti" / "p1.nii.gz")
    assert (from_dicom.array == from_nifti.array).mean() >= 0.999
    assert len(np.unique(from_nifti.array)) > 1  # a real label map, not one constant
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-5)


def test_dicom_seg_references_the_source_series_and_holds_the_labels(tmp_path, trained, rng):
    inputs = tmp_path / "in"
    volume = blobs(rng)
    sources = write_series(inputs / "p1_0000", volume, OBLIQUE, seed=11)
    out = tmp_path / "out"
    assert predict_main([str(trained), str(inputs), str(out), "--device", "cpu", "--dicom-seg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p1.dcm", "p1.nii.gz"]
    seg = pydicom.dcmread(out / "p1.dcm")
    source_series = pydicom.dcmread(sources[0]).SeriesInstanceUID
    assert seg.Modality == "SEG"
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [source_series]
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in sources}
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "l1"), (2, "l2")]
    assert int(seg.NumberOfFrames) == 2 * len(volume)
    label_map = read_image(out / "p1.nii.gz").array.astype(np.uint8)  # (Z, Y, X), slices by position
    by_position = sorted(sources, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient @ OBLIQUE.normal))
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in by_position]
    frames = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        uids, combine_segments=True)  # (Z, Y, X) of segment numbers
    np.testing.assert_array_equal(frames, label_map)


def test_dicom_seg_needs_dicom_inputs(tmp_path, trained, rng):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_nifti_twin(inputs / "a_0000.nii.gz", blobs(rng))
    result = run_command("predict", trained, inputs, tmp_path / "out", "--device", "cpu", "--dicom-seg")
    assert_one_line_error(result, "--dicom-seg: only for DICOM series inputs", "case a is a_0000.nii.gz")
    assert not (tmp_path / "out").exists()


def test_channel_given_twice_is_an_error(tmp_path, trained, rng):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_nifti_twin(inputs / "a_0000.nii.gz", blobs(rng))
    itk_file(inputs / "a_0000.mha", blobs(rng), SeriesGeometry())
    with pytest.raises(Exception, match="also given as"):
        predict_folder(trained, inputs, tmp_path / "out", PredictOptions(device="cpu"))


def test_png_dataset_predicts_png_label_maps(tmp_path, rng, monkeypatch):
    _, raw, pictures = rgb_picture_model(tmp_path, rng, monkeypatch)
    (raw / "imagesTs").mkdir()
    for i, rgb in enumerate(pictures):
        PILImage.fromarray(rgb).save(raw / "imagesTs" / f"test_{i}_0000.jpg")
    report = predict_folder(tmp_path / "work", raw / "imagesTs", tmp_path / "out",
                            PredictOptions(config="2d", device="cpu"))
    assert sorted(report.predicted) == ["test_0", "test_1", "test_2"] and not report.failed
    with PILImage.open(tmp_path / "out" / "test_0.png") as written:
        assert written.format == "PNG" and written.size == (32, 40) and written.mode == "L"
        assert set(np.unique(np.asarray(written))) <= {0, 1}
