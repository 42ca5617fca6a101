"""Uploads and --inputs cases (viewing/uploads.py): limits, clear messages, no path escapes."""

from __future__ import annotations

import gzip
import io
import zipfile

import nibabel as nib
import numpy as np
import pytest

from app_fixtures import CHANNELS, SPACING_AFFINE, inputs_folder
from nnlite.common.errors import UserError
from nnlite.data.image_io import read_case, write_image
from nnlite.viewing.uploads import (Upload, case_name, confined, copy_input_case, file_ending,
                                    input_cases, new_folder, stage_upload)


def nifti_bytes(tmp_path, name: str, shape=(4, 6, 5)) -> bytes:
    path = tmp_path / "made" / name
    path.parent.mkdir(exist_ok=True)
    if len(shape) == 3:
        write_image(path, np.ones(shape, dtype=np.float32), SPACING_AFFINE)
    else:  # nibabel directly: nnlite writes only 3D images
        nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), SPACING_AFFINE), str(path))
    return path.read_bytes()


def test_a_case_is_staged_under_names_the_app_makes(tmp_path):
    files = [Upload("../../etc/scan_0001.nii.gz", nifti_bytes(tmp_path, "b.nii.gz")),
             Upload("../../etc/scan_0000.nii.gz", nifti_bytes(tmp_path, "a.nii.gz"))]
    folder = new_folder(tmp_path / "outputs")
    case, paths = stage_upload(files, folder, CHANNELS)
    assert case == "scan"
    assert [p.name for p in paths] == ["scan_0000.nii.gz", "scan_0001.nii.gz"]
    assert all(p.parent == folder.resolve() for p in paths)
    assert read_case(paths).data.shape == (2, 4, 6, 5)


@pytest.mark.parametrize("files, message", [
    ([], "no files"),
    ([Upload("a_0000.nii.gz", b"x")], r"1 file\(s\) for a model with 2 channel\(s\) \(T1, T2\)"),
    ([Upload("series.zip", b"PK"), Upload("b.nii.gz", b"x")], "a zip of DICOM series comes alone"),
    ([Upload("a_0000.nii.gz", b"x" * 2**20), Upload("a_0001.nii.gz", b"x" * 2**20)],
     "over the limit of 1 MB"),
])
def test_bad_uploads_are_one_clear_message_before_anything_is_written(tmp_path, files, message):
    with pytest.raises(UserError, match=message) as caught:
        stage_upload(files, tmp_path, CHANNELS, max_mb=1)
    assert caught.value.where == "upload"
    assert not list(tmp_path.iterdir())


def test_unreadable_or_wrong_shapes_name_the_uploaded_file(tmp_path):
    good = nifti_bytes(tmp_path, "a.nii.gz")
    with pytest.raises(UserError, match="unreadable") as caught:
        stage_upload([Upload("x_0000.nii.gz", good), Upload("broken.nii.gz", gzip.compress(b"junk"))],
                     new_folder(tmp_path / "o"), CHANNELS)
    assert caught.value.where == "upload 'broken.nii.gz'"
    with pytest.raises(UserError, match="differs from channel 0"):
        other = nifti_bytes(tmp_path, "c.nii.gz", (4, 6, 6))
        stage_upload([Upload("x_0000.nii.gz", good), Upload("x_0001.nii.gz", other)],
                     new_folder(tmp_path / "o"), CHANNELS)
    four_d = nifti_bytes(tmp_path, "d.nii.gz", (2, 4, 6, 5))
    with pytest.raises(UserError, match="2D or 3D"):
        stage_upload([Upload("x_0000.nii.gz", four_d), Upload("x_0001.nii.gz", four_d)],
                     new_folder(tmp_path / "o"), CHANNELS)


def test_names_and_endings_are_reduced_to_safe_characters():
    assert file_ending("dir/case_0000.NII.GZ") == ".nii.gz"
    assert file_ending("scan.v2.nrrd") == ".v2.nrrd"
    assert case_name("demo_001_0000.nii.gz") == "demo_001"
    assert case_name("../../x y;rm.nii") == "x_y_rm"
    assert case_name("....nii.gz") == "upload"
    with pytest.raises(UserError, match="no file ending"):
        file_ending("README")


def test_confined_refuses_paths_outside_the_root_also_through_links(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert confined(root, root / "a" / ".." / "b") == (root / "b").resolve()
    for path in (root / ".." / "x", root / "link" / "x", tmp_path / "elsewhere"):
        with pytest.raises(UserError, match="outside"):
            confined(root, path)


def test_inputs_cases_are_listed_and_copied_by_name_only(tmp_path):
    inputs = inputs_folder(tmp_path, cases=2)
    assert input_cases(inputs) == ["new_0", "new_1"] and input_cases(None) == []
    target = tmp_path / "staged"
    target.mkdir()
    copies = copy_input_case(inputs, "new_1", target)
    assert [p.name for p in copies] == ["new_1_0000.nii.gz", "new_1_0001.nii.gz"]
    with pytest.raises(UserError, match="is not a case of"):
        copy_input_case(inputs, "../raw/case_a", target)


def dicom_zip(tmp_path, folders: dict[str, int], shape=(4, 6, 5)) -> bytes:
    """A zip of DICOM series: folder name (or "" for bare files) → seed of its volume."""
    from dicom_fixtures import write_series

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, seed in folders.items():
            volume = np.random.default_rng(seed).integers(0, 500, shape).astype(np.int16)
            for path in write_series(tmp_path / "series" / (name or "bare"), volume, seed=seed):
                archive.write(path, f"{name}/{path.name}" if name else path.name)
    return buffer.getvalue()


def test_a_zip_of_dicom_series_becomes_one_series_folder_per_channel(tmp_path):
    data = dicom_zip(tmp_path, {"2_t2": 1, "1_t1": 0})
    case, paths = stage_upload([Upload("patient 7.zip", data)], new_folder(tmp_path / "o"), CHANNELS)
    assert case == "patient_7" and [p.name for p in paths] == ["patient_7_0000", "patient_7_0001"]
    assert all(p.is_dir() and len(list(p.iterdir())) == 4 for p in paths)
    staged = read_case(paths).data
    assert staged.shape == (2, 4, 6, 5)
    first = np.random.default_rng(0).integers(0, 500, (4, 6, 5))  # folder "1_t1": channel 0
    assert np.allclose(np.sort(staged[0].ravel()), np.sort(first.ravel()))


def test_bad_dicom_zips_are_one_message(tmp_path):
    with pytest.raises(UserError, match=r"holds 1 series folder\(s\) for a model with 2 channel"):
        stage_upload([Upload("a.zip", dicom_zip(tmp_path, {"": 0}))], new_folder(tmp_path / "o"), CHANNELS)
    with pytest.raises(UserError, match="not a zip file"):
        stage_upload([Upload("a.zip", b"PK no zip")], new_folder(tmp_path / "o"), CHANNELS)
    with pytest.raises(UserError, match="unpacks to more than 1 MB"):
        big = io.BytesIO()
        with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("a/x.dcm", b"0" * 2**21)
            archive.writestr("b/x.dcm", b"0")
        stage_upload([Upload("a.zip", big.getvalue())], new_folder(tmp_path / "o"), CHANNELS, max_mb=1)


def test_zip_member_paths_never_reach_the_file_system(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escaped/x.dcm", b"junk")
        archive.writestr("b/y.dcm", b"junk")
    folder = new_folder(tmp_path / "o")
    with pytest.raises(UserError, match="upload 'a.zip'"):  # unreadable series, after staging
        stage_upload([Upload("a.zip", buffer.getvalue())], folder, CHANNELS)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "o" / "escaped").exists()
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.dcm")) == ["a_0000/00000.dcm",
                                                                               "a_0001/00000.dcm"]
