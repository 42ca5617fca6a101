"""nnlite.data.dicom_series: slices sorted by position, geometry from the headers, broken series named."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnlite.common.errors import UserError
from nnlite.data.image_io import read_case, read_image
from tests.dicom_fixtures import SeriesGeometry, write_nifti_twin, write_series

OBLIQUE = SeriesGeometry(spacing=(2.5, 0.75, 0.5), origin=(10.0, -20.0, 35.0),
                         row=(np.cos(0.4), np.sin(0.4), 0.0), column=(0.0, 0.0, -1.0))


def blob_volume(rng: np.random.Generator, shape=(7, 12, 10)) -> np.ndarray:
    return rng.integers(-200, 1000, size=shape).astype(np.int16)


@pytest.mark.parametrize("geometry", [SeriesGeometry(), OBLIQUE], ids=["axial", "oblique"])
def test_series_with_shuffled_names_reads_back_the_volume_and_geometry(tmp_path, rng, geometry):
    volume = blob_volume(rng)
    write_series(tmp_path / "case_0000", volume, geometry, seed=3)
    image = read_image(tmp_path / "case_0000")
    np.testing.assert_array_equal(image.array, volume)
    assert image.spacing == pytest.approx(geometry.spacing)
    np.testing.assert_allclose(image.affine, geometry.ras_affine(), atol=1e-6)


def test_series_reads_like_simpleitk_and_like_its_nifti_twin(tmp_path, rng):
    volume = blob_volume(rng)
    write_series(tmp_path / "s", volume, OBLIQUE, seed=5)
    ours = read_image(tmp_path / "s")
    reader = sitk.ImageSeriesReader()  # GDCM sorts the slices by position too
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    theirs = reader.Execute()
    np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(theirs))
    assert ours.spacing == pytest.approx(tuple(reversed(theirs.GetSpacing())))
    twin = read_image(write_nifti_twin(tmp_path / "twin.nii.gz", volume, OBLIQUE))
    np.testing.assert_array_equal(ours.array, twin.array)
    assert ours.spacing == pytest.approx(twin.spacing, rel=1e-6)
    np.testing.assert_allclose(ours.affine, twin.affine, atol=1e-5)


def test_rescale_slope_and_intercept_are_applied(tmp_path, rng):
    volume = blob_volume(rng)
    write_series(tmp_path / "s", volume, slope=2.0, intercept=-1024.0)
    np.testing.assert_array_equal(read_image(tmp_path / "s").array, volume * 2.0 - 1024.0)


def test_dicom_channels_stack_with_files(tmp_path, rng):
    volume = blob_volume(rng)
    write_series(tmp_path / "c_0000", volume)
    write_nifti_twin(tmp_path / "c_0001.nii.gz", volume + 1)
    case = read_case([tmp_path / "c_0000", tmp_path / "c_0001.nii.gz"])
    assert case.data.shape == (2, *volume.shape)
    np.testing.assert_array_equal(case.data[1] - case.data[0], 1)


def test_missing_slice_is_an_error_naming_the_folder(tmp_path, rng):
    write_series(tmp_path / "s", blob_volume(rng), skip=(3,))
    with pytest.raises(UserError, match="evenly spaced.*missing") as info:
        read_image(tmp_path / "s")
    assert info.value.where == str(tmp_path / "s")


def test_inconsistent_spacing_is_an_error(tmp_path, rng):
    volume = blob_volume(rng)
    write_series(tmp_path / "s", volume[:4], SeriesGeometry(spacing=(2.0, 0.75, 0.5)), seed=1)
    shifted = SeriesGeometry(spacing=(3.0, 0.75, 0.5), origin=(-40.0, -30.0, 12.0 + 4 * 2.0))
    paths = write_series(tmp_path / "other", volume[:3], shifted, seed=2)
    import pydicom

    series = pydicom.dcmread(next((tmp_path / "s").iterdir())).SeriesInstanceUID
    for i, path in enumerate(paths):  # the same series continued with wider gaps
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series
        ds.save_as(tmp_path / "s" / f"extra{i}")
    with pytest.raises(UserError, match="evenly spaced") as info:
        read_image(tmp_path / "s")
    assert info.value.where == str(tmp_path / "s")


def test_mixed_series_is_an_error(tmp_path, rng):
    write_series(tmp_path / "s", blob_volume(rng)[:3], seed=1)
    for path in write_series(tmp_path / "other", blob_volume(rng)[:3], seed=2):
        path.rename(tmp_path / "s" / f"x{path.name}")
    with pytest.raises(UserError, match="holds 2 DICOM series") as info:
        read_image(tmp_path / "s")
    assert info.value.where == str(tmp_path / "s")


def test_non_dicom_file_and_empty_folder(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no DICOM files"):
        read_image(tmp_path / "empty")
    write_series(tmp_path / "s", blob_volume(rng)[:3])
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    with pytest.raises(UserError, match="not a readable DICOM file") as info:
        read_image(tmp_path / "s")
    assert info.value.where == str(tmp_path / "s" / "notes.txt")
