"""`python -m nnlite.convert`: the BreastDM converter on a generated .npy tree (voxel by voxel) and
the synthetic demo dataset (deterministic bytes, valid raw layout, DCE-like content)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnlite.common.cli import run
from nnlite.common.errors import UserError
from nnlite.convert import main as convert_main
from nnlite.data.breastdm import IMAGE_FILES, convert_breastdm
from nnlite.data.dataset import check_dataset, load_dataset
from nnlite.data.demo_dataset import generate_demo_dataset, make_demo_case

REPO = Path(__file__).resolve().parents[1]


def save_patient(images_dir: Path, mask_path: Path, images: list[np.ndarray], mask: np.ndarray,
                 skip: str | None = None) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IMAGE_FILES, images):
        if name != skip:
            np.save(images_dir / name, array)
    np.save(mask_path, mask)


def padded_patient(rng: np.random.Generator, slice_axis: int, mask_value: int = 255):
    """3 images + mask with 5 slices along `slice_axis`, slices 0 and 4 blank (padding)."""
    images = [rng.integers(1, 500, size=(5, 7, 9)).astype(np.int16) for _ in range(3)]
    mask = np.zeros((5, 7, 9), np.uint8)
    mask[1:3, 2:5, 3:6] = mask_value
    for image in images:
        image[[0, 4]] = 0
    return [np.moveaxis(a, 0, slice_axis) for a in images], np.moveaxis(mask, 0, slice_axis)


@pytest.fixture
def flat_tree(tmp_path):
    """P01: slice axis 0, P02: slice axis 2 and a 128 in its mask, P03: VIBRANT+C2.npy missing."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    sources = {}
    for name, axis, value in (("P01", 0, 255), ("P02", 2, 128), ("P03", 1, 255)):
        images, mask = padded_patient(rng, axis, value)
        if name == "P02":
            mask.flat[np.flatnonzero(mask)[0]] = 255  # both 255 and 128 occur
        skip = "VIBRANT+C2.npy" if name == "P03" else None
        save_patient(src / "images" / name, src / "labels" / name / "SUB2.npy", images, mask, skip)
        sources[name] = (images, mask, axis)
    return src, sources


def read(path: Path) -> np.ndarray:
    """A NIfTI file as a (Z, Y, X) array (read with nibabel directly)."""
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def test_breastdm_flat_layout_voxel_by_voxel(tmp_path, flat_tree):
    src, sources = flat_tree
    raw = tmp_path / "raw"
    report = convert_breastdm(src, raw, spacing=(3.0, 0.7, 0.6))
    assert report.converted == {"BC_001": "P01", "BC_002": "P02"}
    assert list(report.skipped) == ["P03"] and "VIBRANT+C2.npy" in report.skipped["P03"]
    assert report.blank_slices_removed == 4
    assert any("128" in w for w in report.warnings)
    for case, patient in report.converted.items():
        images, mask, axis = sources[patient]
        for channel in range(3):
            expected = np.moveaxis(images[channel], axis, 0)[1:4]
            written = raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz"
            np.testing.assert_array_equal(read(written), expected)
            assert nib.load(str(written)).header.get_zooms() == pytest.approx((0.6, 0.7, 3.0))
        expected_mask = (np.moveaxis(mask, axis, 0)[1:4] > 0).astype(np.uint8)
        np.testing.assert_array_equal(read(raw / "labelsTr" / f"{case}.nii.gz"), expected_mask)
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "VIBRANT", "1": "VIBRANT_C2", "2": "SUB2"}
    assert meta["labels"] == {"background": 0, "tumor": 1}
    assert meta["numTraining"] == 2
    assert meta["case_metadata"]["BC_002"] == {"patient": "P02", "class": None}
    assert meta["spacing_mm"] == [3.0, 0.7, 0.6]
    assert check_dataset(load_dataset(raw)).num_cases == 2


def test_breastdm_class_layout_and_keep_blank(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    for cls, patient in (("Benign", "b1"), ("Malignant", "m1"), ("Malignant", "m2")):
        images, mask = padded_patient(rng, 0)
        save_patient(src / "images" / cls / patient, src / "labels" / cls / patient / "SUB2.npy",
                     images, mask)
    report = convert_breastdm(src, tmp_path / "raw", keep_blank=True)
    assert report.blank_slices_removed == 0
    assert any("no --spacing" in w for w in report.warnings)
    meta = json.loads((tmp_path / "raw" / "dataset.json").read_text())
    assert {c: m["class"] for c, m in meta["case_metadata"].items()} == {
        "BC_001": "Benign", "BC_002": "Malignant", "BC_003": "Malignant"}
    assert meta["case_metadata"]["BC_003"]["patient"] == "m2"
    assert meta["classes"] == ["Benign", "Malignant"]  # case classes for the classification head
    assert (tmp_path / "raw" / "classes.csv").read_text().splitlines() == [
        "case,class", "BC_001,Benign", "BC_002,Malignant", "BC_003,Malignant"]
    assert read(tmp_path / "raw" / "labelsTr" / "BC_001.nii.gz").shape == (5, 7, 9)
    assert load_dataset(tmp_path / "raw").num_training == 3


def test_breastdm_slice_axis_override(tmp_path, flat_tree):
    src, sources = flat_tree
    report = convert_breastdm(src, tmp_path / "raw", slice_axis=1, keep_blank=True)
    images, _, axis = sources["P01"]
    assert axis == 0
    np.testing.assert_array_equal(read(tmp_path / "raw" / "imagesTr" / "BC_001_0002.nii.gz"),
                                  np.moveaxis(images[2], 1, 0))
    assert len(report.converted) == 2


def test_breastdm_blank_slice_with_annotation_is_kept(tmp_path):
    images, mask = padded_patient(np.random.default_rng(2), 0)
    mask[4, 0, 0] = 255
    save_patient(tmp_path / "src" / "images" / "p", tmp_path / "src" / "labels" / "p" / "SUB2.npy",
                 images, mask)
    report = convert_breastdm(tmp_path / "src", tmp_path / "raw")
    assert report.blank_slices_removed == 1
    assert read(tmp_path / "raw" / "labelsTr" / "BC_001.nii.gz").shape == (4, 7, 9)


def test_breastdm_cli_reports_and_errors(tmp_path, flat_tree, capsys):
    src, _ = flat_tree
    assert run(convert_main, ["breastdm", str(src), str(tmp_path / "raw"),
                              "--spacing", "2", "0.7", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "converted 2" in out and "skipped 1" in out and "removed 4 blank slices" in out
    assert "P03" in out
    assert run(convert_main, ["breastdm", str(src), str(tmp_path / "raw")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'raw'}: already exists")
    assert run(convert_main, ["breastdm", str(tmp_path / "nothing"), str(tmp_path / "raw2")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nothing' / 'images'}:")
    assert not (tmp_path / "raw2").exists() and not (tmp_path / "raw2.tmp").exists()


def test_breastdm_nothing_convertible_writes_nothing(tmp_path):
    images, mask = padded_patient(np.random.default_rng(3), 0)
    save_patient(tmp_path / "src" / "images" / "p", tmp_path / "src" / "labels" / "p" / "SUB2.npy",
                 images, mask[:, :3])
    with pytest.raises(UserError, match="no patient could be converted"):
        convert_breastdm(tmp_path / "src", tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.tmp").exists()


def test_breastdm_ambiguous_slice_axis_is_skipped(tmp_path):
    cube = [np.ones((4, 4, 4), np.float32)] * 3
    save_patient(tmp_path / "src" / "images" / "p", tmp_path / "src" / "labels" / "p" / "SUB2.npy",
                 cube, np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(UserError, match="slice-axis"):
        convert_breastdm(tmp_path / "src", tmp_path / "raw")


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(tmp_path):
    first = hashes(generate_demo_dataset(tmp_path / "a", n_cases=3, seed=7))
    second = hashes(generate_demo_dataset(tmp_path / "b", n_cases=3, seed=7))
    other = hashes(generate_demo_dataset(tmp_path / "c", n_cases=3, seed=8))
    assert len(first) == 3 * 4 + 2  # + dataset.json and classes.csv (the case classes)
    assert first == second
    assert first["imagesTr/demo_001_0000.nii.gz"] != other["imagesTr/demo_001_0000.nii.gz"]
    gz_header = (tmp_path / "a" / "imagesTr" / "demo_001_0000.nii.gz").read_bytes()[:10]
    assert gz_header[4:8] == b"\0\0\0\0"  # no timestamp: equal bytes do not depend on the clock


def test_demo_dataset_is_valid_and_dce_like(tmp_path):
    raw = generate_demo_dataset(tmp_path / "demo", n_cases=4, seed=0)
    dataset = load_dataset(raw)
    assert dataset.channel_names == {"0": "VIBRANT", "1": "VIBRANT_C2", "2": "SUB2"}
    assert dataset.labels == {"background": 0, "tumor": 1}
    report = check_dataset(dataset)
    assert report.num_cases == 4 and report.warnings == []
    spacings = [nib.load(str(c.label)).header.get_zooms() for c in dataset.cases]
    assert all(z / x > 2.5 for x, _, z in spacings)  # anisotropic: planner and resampling have work
    assert len({round(float(s[2]), 3) for s in spacings}) == 4  # spacing varies per case


def test_demo_case_content():
    for index in range(6):
        case = make_demo_case(np.random.default_rng([0, index]))
        pre, post, sub = case.images
        body = pre > 0
        assert 0.2 < body.mean() < 0.95  # body on zero background
        assert np.all(pre[~body] == 0) and np.all(post[~body] == 0)
        np.testing.assert_allclose(sub, post - pre, atol=1e-3)
        lesion = case.seg > 0
        assert 200 < lesion.sum() < 0.05 * lesion.size
        # lesions enhance, but so do other things: thresholding the subtraction at the lesion's
        # median also selects many non-lesion voxels (vessels)
        threshold = np.median(sub[lesion])
        assert np.mean(sub[lesion]) > 3 * np.mean(sub[body & ~lesion])
        assert np.count_nonzero((sub > threshold) & ~lesion) > 0.1 * np.count_nonzero(lesion)


def test_demo_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nnlite.convert", "demo", str(tmp_path / "d"),
                             "--cases", "2", "--seed", "3"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["numTraining"] == 2
    again = subprocess.run([sys.executable, "-m", "nnlite.convert", "demo", str(tmp_path / "d")],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [f"error: {tmp_path / 'd'}: already exists and is not empty"]


def test_converter_warnings_go_to_stderr(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images, mask = padded_patient(rng, 0)
    save_patient(tmp_path / "src" / "images" / "P1", tmp_path / "src" / "labels" / "P1" / "SUB2.npy",
                 images, mask)
    assert run(convert_main, ["breastdm", str(tmp_path / "src"), str(tmp_path / "raw")]) == 0
    out, err = capsys.readouterr()
    assert "warning:" not in out
    assert any(line.startswith("warning: no --spacing given") for line in err.splitlines())


@pytest.mark.parametrize("regions, voxel_sum, label_sum", [(False, 21432725.13449861, 1243),
                                                           (True, 21211255.636796232, 1811)])
def test_cases_without_a_class_are_drawn_as_before_the_classes(regions, voxel_sum, label_sum):
    """A case drawn without class signs (a one-case demo, the region variant) is the case nnlite
    drew before the demo had classes: the sums were recorded with that code (commit 38e713d)."""
    from nnlite.data.demo_dataset import make_demo_case

    case = make_demo_case(np.random.default_rng([0, 1]), regions)
    assert case.images.shape == (3, 16, 103, 104)
    assert float(case.images.astype(np.float64).sum()) == pytest.approx(voxel_sum, rel=1e-9)
    assert int(case.seg.astype(np.int64).sum()) == label_sum
