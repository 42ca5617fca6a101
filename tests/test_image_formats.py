"""The reader/writer table: NRRD/MHA/NIfTI through SimpleITK, PNG, TIFF; same conventions, same plans.

Files are written here by SimpleITK, nibabel, PIL and tifffile directly (not by nnlite), so a
reader that gets an axis, a spacing or a direction wrong cannot agree with them by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image as PILImage

import nnlite.planning.fingerprint as fingerprint_module
from command_line import assert_one_line_error, run_command
from nnlite.common.errors import UserError
from nnlite.common.schema import to_jsonable
from nnlite.data.dataset import check_case, check_dataset, load_dataset
from nnlite.data.image_io import (FORMAT_BY_ENDING, SPACING_2D_FACTOR, read_case, read_header,
                                  read_image, write_image, write_seg)
from nnlite.planning.fingerprint import extract_fingerprint
from nnlite.planning.planner import plan_experiment

ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
# an oblique NIfTI affine: rotated about z, anisotropic, shifted (x, y, z order, RAS)
ANGLE = 0.3
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])
AFFINE = np.eye(4)
AFFINE[:3, :3] = ROTATION @ np.diag([0.75, 0.5, 2.5])
AFFINE[:3, 3] = [10.0, -20.0, 30.0]


def itk_image(array_zyx: np.ndarray, affine: np.ndarray = AFFINE) -> sitk.Image:
    """A SimpleITK image with the geometry of a RAS affine, converted by hand (LPS = flip x, y)."""
    image = sitk.GetImageFromArray(array_zyx)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


@pytest.fixture
def few_samples(monkeypatch):
    """Fewer foreground samples per case (the rule, total // n_cases, is unchanged)."""
    monkeypatch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 3000)


def volume(rng: np.random.Generator, shape=(6, 9, 7)) -> np.ndarray:
    return (rng.normal(size=shape) * 100).astype(np.float32)


@pytest.mark.parametrize("ending", ITK_ENDINGS)
def test_simpleitk_file_reads_like_its_nifti_twin(tmp_path, rng, ending):
    array = volume(rng)  # (z, y, x)
    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), AFFINE), str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(itk_image(array), str(tmp_path / f"a{ending}"))
    nifti, other = read_image(tmp_path / "a.nii.gz"), read_image(tmp_path / f"a{ending}")
    np.testing.assert_array_equal(other.array, nifti.array)
    assert other.spacing == pytest.approx(nifti.spacing, rel=1e-7) == (2.5, 0.5, 0.75)
    np.testing.assert_allclose(other.affine, nifti.affine, atol=1e-6)
    np.testing.assert_allclose(read_header(tmp_path / f"a{ending}")[1], nifti.affine, atol=1e-6)
    assert read_header(tmp_path / f"a{ending}")[0] == pytest.approx((2.5, 0.5, 0.75))


@pytest.mark.parametrize("ending", [*ITK_ENDINGS, ".nii.gz", ".nii"])
def test_label_map_round_trip_keeps_array_spacing_origin_direction(tmp_path, rng, ending):
    seg = rng.integers(0, 3, size=(5, 8, 6)).astype(np.int16)
    written = write_seg(tmp_path / f"seg{ending}", seg, AFFINE)
    back = sitk.ReadImage(str(written))  # read by SimpleITK itself, not by nnlite
    expected = itk_image(seg)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), seg)
    np.testing.assert_allclose(back.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), expected.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), expected.GetDirection(), atol=1e-6)
    assert sitk.GetArrayFromImage(back).dtype == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name or "staging" in p.name) == []


def test_nifti_through_simpleitk_on_request_matches_nibabel(tmp_path, rng):
    array = volume(rng)
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), AFFINE), str(path))
    by_nibabel, by_itk = read_case([path]), read_case([path], reader="SimpleITKIO")
    np.testing.assert_array_equal(by_itk.data, by_nibabel.data)
    assert by_itk.spacing == pytest.approx(by_nibabel.spacing, rel=1e-6)
    np.testing.assert_allclose(by_itk.affine, by_nibabel.affine, atol=1e-5)
    with pytest.raises(UserError, match="Tiff3DIO reads .tif, .tiff only"):
        read_case([path], reader="Tiff3DIO")


def test_every_table_ending_has_a_reader_that_writes_what_it_reads(tmp_path, rng):
    seg = rng.integers(0, 4, size=(1, 8, 6)).astype(np.uint8)
    for ending in FORMAT_BY_ENDING:
        if ending in (".jpg", ".jpeg", ".bmp"):  # labels of natural images are PNG (lossless)
            continue
        path = write_seg(tmp_path / f"s{ending}", seg, np.diag([0.5, 0.75, 1.0, 1.0]))
        np.testing.assert_array_equal(read_image(path).array, seg, err_msg=ending)


def test_rgb_png_is_three_channels_of_one_slice(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(10, 12, 3)).astype(np.uint8)  # (y, x, colour)
    PILImage.fromarray(rgb).save(tmp_path / "c_0000.png")
    case = read_case([tmp_path / "c_0000.png"])
    assert case.data.shape == (3, 1, 10, 12)
    np.testing.assert_array_equal(case.data[:, 0], rgb.transpose(2, 0, 1))
    assert case.spacing == (SPACING_2D_FACTOR, 1.0, 1.0)
    with pytest.raises(UserError, match="3 channels, expected one"):
        read_image(tmp_path / "c_0000.png")


def test_grey_png_and_jpeg_read_as_one_channel(tmp_path, rng):
    grey = rng.integers(0, 256, size=(10, 12)).astype(np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "g.png")
    PILImage.fromarray(grey).save(tmp_path / "g.jpg")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").array, grey[None])
    assert read_image(tmp_path / "g.jpg").array.shape == (1, 10, 12)


@pytest.mark.parametrize("ending", [".png", ".jpg", ".tif"])
def test_truncated_picture_is_a_user_error(tmp_path, rng, ending):
    grey = rng.integers(0, 256, size=(64, 64)).astype(np.uint8)
    path = tmp_path / f"g{ending}"
    if ending == ".tif":
        tifffile.imwrite(path, np.stack([grey] * 4), photometric="minisblack")
    else:
        PILImage.fromarray(grey).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated|unreadable") as info:
        read_image(path)
    assert info.value.where == str(path)


def test_tiff_spacing_comes_from_the_sidecar(tmp_path, rng):
    stack = volume(rng)
    tifffile.imwrite(tmp_path / "c_0000.tif", stack)
    assert read_image(tmp_path / "c_0000.tif").spacing == (1.0, 1.0, 1.0)  # no sidecar: 1 mm
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [3.0, 0.5, 0.25]}))
    image = read_image(tmp_path / "c_0000.tif")
    np.testing.assert_array_equal(image.array, stack)
    assert image.spacing == (3.0, 0.5, 0.25)
    np.testing.assert_allclose(image.affine, np.diag([0.25, 0.5, 3.0, 1.0]))
    written = write_seg(tmp_path / "out" / "c.tif", (stack > 0).astype(np.uint8), image.affine)
    assert json.loads((tmp_path / "out" / "c.json").read_text()) == {"spacing": [3.0, 0.5, 0.25]}
    assert read_image(written).spacing == (3.0, 0.5, 0.25)


def test_2d_tiff_gets_the_dummy_slice_axis(tmp_path, rng):
    tifffile.imwrite(tmp_path / "p.tif", volume(rng, (9, 7)))
    (tmp_path / "p.json").write_text(json.dumps({"spacing": [0.5, 0.25]}))
    image = read_image(tmp_path / "p.tif")
    assert image.array.shape == (1, 9, 7) and image.spacing == (SPACING_2D_FACTOR * 0.5, 0.5, 0.25)


# ---------------------------------------------------------------------------------------------
# datasets in every format: same checks, same fingerprint, same plan

SPACING = (2.0, 0.75, 0.5)  # (z, y, x), exact in every format's header
SHAPE = (12, 20, 16)


def write_any(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    """Write a (Z, Y, X) array with the library of its format (not nnlite's writers)."""
    ending = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    if ending in (".nii.gz", ".nii"):
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.diag([*spacing[::-1], 1.0])), str(path))
    elif ending == ".tif":
        tifffile.imwrite(path, array)
        stem = path.name[: -len(ending)]
        case = stem[:-5] if path.parent.name == "imagesTr" else stem
        (path.parent / f"{case}.json").write_text(json.dumps({"spacing": list(spacing)}))
    else:
        sitk.WriteImage(itk_image(array, np.diag([*spacing[::-1], 1.0])), str(path))


def make_raw(root: Path, ending: str, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        seg = np.zeros(SHAPE, np.uint8)
        seg[3:8, 5:12, 4 + i : 10 + i] = 1
        image = rng.normal(100, 10, SHAPE).astype(np.float32) + 50 * seg
        write_any(root / "imagesTr" / f"case_{i}_0000{ending}", image)
        write_any(root / "labelsTr" / f"case_{i}{ending}", seg)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": n, "file_ending": ending}))
    return root


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".tif"])
def test_dataset_in_each_format_fingerprints_and_plans_like_nifti(tmp_path, ending, few_samples):
    nifti = extract_fingerprint(load_dataset(make_raw(tmp_path / "nii", ".nii.gz")))
    other = extract_fingerprint(load_dataset(make_raw(tmp_path / "other", ending)))
    assert to_jsonable(other) == to_jsonable(nifti)
    assert to_jsonable(plan_experiment(other)) == to_jsonable(plan_experiment(nifti))


def test_png_dataset_plans_a_2d_configuration(tmp_path, few_samples):
    rng = np.random.default_rng(0)
    root = tmp_path / "png"
    for i in range(3):
        seg = np.zeros((64, 48), np.uint8)
        seg[10 + i : 30, 8:20] = 1
        rgb = np.clip(rng.normal(100, 10, (64, 48, 3)) + 80 * seg[..., None], 0, 255).astype(np.uint8)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        PILImage.fromarray(rgb).save(root / "imagesTr" / f"img_{i}_0000.png")
        PILImage.fromarray(seg).save(root / "labelsTr" / f"img_{i}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "tool": 1},
        "numTraining": 3, "file_ending": ".png"}))
    dataset = load_dataset(root)
    assert dataset.cases[0].images == [root / "imagesTr" / "img_0_0000.png"]
    assert check_case(dataset, dataset.cases[0]).data.shape == (3, 1, 64, 48)
    plans = plan_experiment(extract_fingerprint(dataset))
    assert "2d" in plans.configurations and plans.configurations["2d"].patch_size == (64, 48)


# ---------------------------------------------------------------------------------------------
# `check`: the same integrity guarantees for every format

CHECKED = (".nrrd", ".mha", ".mhd", ".tif")


def first_image(raw: Path, ending: str) -> Path:
    return raw / "imagesTr" / f"case_0_0000{ending}"


@pytest.mark.parametrize("ending", CHECKED)
def test_check_reports_a_truncated_file(tmp_path, ending):
    raw = make_raw(tmp_path / "raw", ending)
    path = first_image(raw, ending)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="unreadable|truncated") as info:
        check_dataset(load_dataset(raw))
    assert info.value.where == str(path)


def test_check_command_names_a_truncated_metaimage_in_one_line(tmp_path):
    raw = make_raw(tmp_path / "raw", ".mha")
    path = first_image(raw, ".mha")
    path.write_bytes(path.read_bytes()[:-10])
    result = run_command("check", raw, "--workers", "1")
    assert_one_line_error(result, str(path), "truncated")


@pytest.mark.parametrize("ending", CHECKED)
def test_check_reports_nan_voxels(tmp_path, ending):
    raw = make_raw(tmp_path / "raw", ending)
    image = np.full(SHAPE, np.nan, np.float32)
    write_any(first_image(raw, ending), image)
    with pytest.raises(UserError, match="NaN") as info:
        check_dataset(load_dataset(raw))
    assert info.value.where == str(first_image(raw, ending))


@pytest.mark.parametrize("ending", CHECKED)
def test_check_reports_label_shape_and_spacing(tmp_path, ending):
    raw = make_raw(tmp_path / "raw", ending)
    label = raw / "labelsTr" / f"case_1{ending}"
    write_any(label, np.zeros((12, 20, 15), np.uint8))
    with pytest.raises(UserError, match="label shape") as info:
        check_dataset(load_dataset(raw))
    assert info.value.where == str(label)
    write_any(label, np.zeros(SHAPE, np.uint8), spacing=(3.0, 0.75, 0.5))
    with pytest.raises(UserError, match="label spacing"):
        check_dataset(load_dataset(raw))


@pytest.mark.parametrize("ending", (".nrrd", ".mha", ".nii.gz"))
def test_check_warns_when_image_and_label_orientation_differ(tmp_path, ending):
    raw = make_raw(tmp_path / "raw", ending)
    label = raw / "labelsTr" / f"case_0{ending}"
    flipped = np.diag([-SPACING[2], SPACING[1], SPACING[0], 1.0])  # x axis mirrored
    seg = read_image(label).array
    if ending == ".nii.gz":
        nib.save(nib.Nifti1Image(seg.astype(np.uint8).transpose(2, 1, 0), flipped), str(label))
    else:
        sitk.WriteImage(itk_image(seg.astype(np.uint8), flipped), str(label))
    dataset = load_dataset(raw)
    assert any("affine (origin/direction) differs" in w for w in check_case(dataset, dataset.cases[0]).warnings)
    assert check_case(dataset, dataset.cases[1]).warnings == []


def test_check_reports_zero_spacing_in_an_nrrd_header(tmp_path):
    raw = make_raw(tmp_path / "raw", ".nrrd")
    path = first_image(raw, ".nrrd")
    text = path.read_bytes()
    header, _, body = text.partition(b"\n\n")
    header = header.replace(b"(0,0,2)", b"(0,0,0)")
    path.write_bytes(header + b"\n\n" + body)
    with pytest.raises(UserError) as info:
        check_dataset(load_dataset(raw))
    assert info.value.where == str(path)


def test_rgb_png_with_undeclared_channels_is_an_error(tmp_path):
    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "imagesTr" / "a_0000.png")
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labelsTr" / "a.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "grey"}, "labels": {"background": 0, "x": 1}, "numTraining": 1,
        "file_ending": ".png"}))
    dataset = load_dataset(root)
    with pytest.raises(UserError, match="holds 3 channels, dataset.json declares 1"):
        check_case(dataset, dataset.cases[0])


def test_hidden_staging_files_never_stay_behind(tmp_path, rng):
    write_seg(tmp_path / "s.mhd", rng.integers(0, 2, (3, 4, 5)), np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mhd", "s.zraw"]


@pytest.mark.slow
def test_hippocampus_cases_as_nrrd_plan_exactly_like_their_nifti_twins(tmp_path, hippocampus_raw):
    """12 real cases converted by SimpleITK to .nrrd: same fingerprint, same spacing, patch, batch."""
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in (hippocampus_raw / "imagesTr").glob("*_0000.nii.gz"))[:12]
    meta = json.loads((hippocampus_raw / "dataset.json").read_text())
    nifti, nrrd = tmp_path / "nii", tmp_path / "nrrd"
    listing = {}
    for name in names:
        image, label = hippocampus_raw / "imagesTr" / f"{name}_0000.nii.gz", hippocampus_raw / "labelsTr" / f"{name}.nii.gz"
        listing[name] = {"images": [str(image)], "label": str(label)}
        for source, target in ((image, nrrd / "imagesTr" / f"{name}_0000.nrrd"), (label, nrrd / "labelsTr" / f"{name}.nrrd")):
            target.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.ReadImage(str(source)), str(target), useCompression=True)
    nifti.mkdir()
    (nifti / "dataset.json").write_text(json.dumps({**meta, "numTraining": 12, "dataset": listing}))
    (nrrd / "dataset.json").write_text(json.dumps({**meta, "numTraining": 12, "file_ending": ".nrrd"}))
    fingerprints = [extract_fingerprint(load_dataset(raw)) for raw in (nifti, nrrd)]
    assert to_jsonable(fingerprints[1]) == to_jsonable(fingerprints[0])
    plans = [plan_experiment(fp) for fp in fingerprints]
    assert to_jsonable(plans[1]) == to_jsonable(plans[0])
