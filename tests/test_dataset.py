"""nnlite.data.dataset and `python -m nnlite.check`: dataset.json parsing, case discovery, one generated
bad dataset per integrity error (with the exit-2 error contract), warnings, splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.check import main as check_main
from nnlite.common.cli import run
from nnlite.common.errors import UserError
from nnlite.data.dataset import check_case, check_dataset, load_dataset
from nnlite.planning.splits import make_splits

REPO = Path(__file__).resolve().parents[1]
SHAPE = (4, 6, 5)  # (z, y, x)
SPACING = (3.0, 0.8, 0.7)
PIXDIM_OFFSET = 76  # byte offset of pixdim[0] in a NIfTI-1 header


def write_nifti(path: Path, array: np.ndarray, spacing=SPACING, affine=None) -> Path:
    """Write a (Z, Y, X) array (or 2D/4D for bad inputs) with nibabel directly, not nnlite.data.image_io."""
    if affine is None:
        affine = np.diag([*reversed(spacing), 1.0])
    voxels = array.transpose(*reversed(range(min(array.ndim, 3))), *range(3, array.ndim))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(voxels), affine), str(path))
    return path


def make_raw(root: Path, n_cases: int = 2, n_channels: int = 2, seed: int = 0) -> Path:
    """A valid tiny dataset: labels 0/1/2, float images, anisotropic spacing."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        for c in range(n_channels):
            write_nifti(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz",
                        rng.uniform(1, 100, SHAPE).astype(np.float32))
        seg = np.zeros(SHAPE, np.uint8)
        seg[1:3, 2:4, 1:3] = 1
        seg[2, 4, 3] = 2
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", seg)
    meta = {"channel_names": {str(c): f"MR{c}" for c in range(n_channels)},
            "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n_cases,
            "file_ending": ".nii.gz", "name": "tiny", "licence": "CC0"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def image(raw: Path, case: int = 1, channel: int = 0) -> Path:
    return raw / "imagesTr" / f"case_{case:03d}_{channel:04d}.nii.gz"


def label(raw: Path, case: int = 1) -> Path:
    return raw / "labelsTr" / f"case_{case:03d}.nii.gz"


def edit_json(raw: Path, **changes) -> Path:
    meta = json.loads((raw / "dataset.json").read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (raw / "dataset.json").write_text(json.dumps(meta))
    return raw / "dataset.json"


def set_pixdim(path: Path, axis_xyz: int, value: float) -> Path:
    """Store a raw pixdim value (nibabel's save would recompute it from the affine)."""
    import gzip

    raw = bytearray(gzip.decompress(path.read_bytes()))
    offset = PIXDIM_OFFSET + 4 * (axis_xyz + 1)
    raw[offset : offset + 4] = np.float32(value).astype("<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def labelled(value, dtype=np.float32) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype)
    seg[1, 1, 1] = 1
    seg[2, 2, 2] = value
    return seg


def random_image(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(1).uniform(1, 100, shape).astype(np.float32)


# Each entry breaks a valid dataset in one way and returns (file the error must name, problem regex).
BREAKERS = {
    "missing label": lambda r: (label(r).unlink(), (label(r), "label file missing"))[1],
    "missing channel": lambda r: (image(r, 1, 1).unlink(), (image(r, 1, 1), "channel file missing"))[1],
    "extra channel": lambda r: (write_nifti(image(r, 1, 2), random_image()), (image(r, 1, 2), "not declared"))[1],
    "orphan label": lambda r: (write_nifti(label(r, 7), labelled(1)), (label(r, 7), "no image"))[1],
    "case count": lambda r: (edit_json(r, numTraining=3), "numTraining"),
    "file ending": lambda r: (write_nifti(r / "imagesTr" / "case_002_0000.nii", random_image()),
                              (r / "imagesTr" / "case_002_0000.nii", "file ending"))[1],
    "bad image name": lambda r: (write_nifti(r / "imagesTr" / "case_2.nii.gz", random_image()),
                                 (r / "imagesTr" / "case_2.nii.gz", "<case>_<CCCC>"))[1],
    "unreadable": lambda r: (image(r).write_bytes(b"\x00" * 50), (image(r), "unreadable"))[1],
    "truncated": lambda r: (image(r).write_bytes(image(r).read_bytes()[:300]), (image(r), "unreadable|truncated"))[1],
    "4D image": lambda r: (write_nifti(image(r), np.ones((*SHAPE, 2), np.float32)), (image(r), "2D or 3D"))[1],
    "channel shape": lambda r: (write_nifti(image(r, 1, 1), random_image((4, 6, 6))), (image(r, 1, 1), "shape"))[1],
    "channel spacing": lambda r: (write_nifti(image(r, 1, 1), random_image(), (2.0, 0.8, 0.7)),
                                  (image(r, 1, 1), "spacing"))[1],
    "label shape": lambda r: (write_nifti(label(r), np.zeros((4, 6, 6), np.uint8)), (label(r), "shape"))[1],
    "label spacing": lambda r: (write_nifti(label(r), labelled(1), (3.0, 0.8, 0.8)), (label(r), "spacing"))[1],
    "zero spacing": lambda r: (set_pixdim(image(r), 2, 0.0), (image(r), "positive and finite"))[1],
    "negative spacing": lambda r: (set_pixdim(image(r, 1, 1), 0, -0.7), (image(r, 1, 1), "positive"))[1],
    "nan spacing": lambda r: (set_pixdim(label(r), 1, float("nan")), (label(r), "finite"))[1],
    "nan voxels": lambda r: (write_nifti(image(r), np.where(random_image() > 50, np.nan, 1).astype(np.float32)),
                             (image(r), "NaN or infinite"))[1],
    "inf voxels": lambda r: (write_nifti(image(r, 1, 1), np.full(SHAPE, np.inf, np.float32)),
                             (image(r, 1, 1), "NaN or infinite"))[1],
    "label 255": lambda r: (write_nifti(label(r), labelled(255, np.uint8)), (label(r), r"\[255\].*not declared"))[1],
    "non-integer label": lambda r: (write_nifti(label(r), labelled(0.5)), (label(r), "integers"))[1],
    "nan label": lambda r: (write_nifti(label(r), labelled(np.nan)), (label(r), "NaN"))[1],
    "labels not consecutive": lambda r: (edit_json(r, labels={"background": 0, "a": 1, "b": 3}), "consecutive"),
    "background not 0": lambda r: (edit_json(r, labels={"background": 1, "a": 0, "b": 2}), "background"),
    "region label without order": lambda r: (edit_json(r, labels={"background": 0, "a": [1, 2], "b": 2}),
                                            "key 'regions_class_order': missing"),
    "vtk file ending": lambda r: (edit_json(r, file_ending=".vtk"), r"'\.vtk'.*not supported.*\.nrrd"),
    "unknown reader": lambda r: (edit_json(r, overwrite_image_reader_writer="NibabelIOWithReorient"),
                                 r"does not train with the reader 'NibabelIOWithReorient'.*NibabelIO, SimpleITKIO"),
    "reader for another format": lambda r: (edit_json(r, overwrite_image_reader_writer="Tiff3DIO"),
                                            r"'Tiff3DIO' cannot read '\.nii\.gz'"),
    "missing key": lambda r: (edit_json(r, labels=None), "key 'labels'"),
    "bad channel keys": lambda r: (edit_json(r, channel_names={"0": "a", "2": "b"}), "key 'channel_names'"),
    "bad numTraining": lambda r: (edit_json(r, numTraining="2"), "key 'numTraining'"),
    "invalid json": lambda r: ((r / "dataset.json").write_text("{oops"), (r / "dataset.json", "invalid JSON"))[1],
    "no cases": lambda r: ([p.unlink() for p in r.rglob("*.nii.gz")], edit_json(r, numTraining=0),
                           (r / "imagesTr", "no training cases"))[2],
    "no dataset.json": lambda r: ((r / "dataset.json").unlink(), (r / "dataset.json", "not found"))[1],
}


def break_dataset(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    raw = make_raw(tmp_path / "raw")
    expected = BREAKERS[name](raw)
    if isinstance(expected, str):  # a dataset.json problem: the error names the file and the key
        expected = (raw / "dataset.json", expected)
    return raw, expected[0], expected[1]


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*"))


def test_valid_dataset_loads_and_checks(tmp_path):
    raw = make_raw(tmp_path / "raw")
    dataset = load_dataset(raw)
    assert [c.name for c in dataset.cases] == ["case_000", "case_001"]
    assert dataset.cases[1].images == [image(raw, 1, 0), image(raw, 1, 1)]
    assert dataset.cases[1].label == label(raw)
    assert dataset.extra == {"name": "tiny", "licence": "CC0"}
    assert dataset.labels == {"background": 0, "a": 1, "b": 2}
    checked = check_case(dataset, dataset.cases[0])
    assert checked.data.shape == (2, *SHAPE) and checked.data.dtype == np.float32
    assert checked.seg.dtype == np.int16 and set(np.unique(checked.seg)) == {0, 1, 2}
    assert checked.spacing == pytest.approx(SPACING)
    assert checked.warnings == []
    assert check_dataset(dataset, workers=2).num_cases == 2


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_each_integrity_error_is_reported_by_file(tmp_path, capsys, name):
    raw, where, problem = break_dataset(tmp_path, name)
    with pytest.raises(UserError, match=problem) as info:
        check_dataset(load_dataset(raw), workers=1)
    assert info.value.where == str(where)
    before = listing(tmp_path)
    assert run(check_main, [str(raw), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {where}: ")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", ["label 255", "zero spacing", "vtk file ending", "missing channel",
                                  "nan voxels"])
def test_check_command_error_contract(tmp_path, name):
    raw, where, _ = break_dataset(tmp_path, name)
    before = listing(tmp_path)
    result = subprocess.run([sys.executable, "-m", "nnlite.check", str(raw)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}: ")
    assert listing(tmp_path) == before


def test_check_command_ok(tmp_path):
    raw = make_raw(tmp_path / "raw")
    result = subprocess.run([sys.executable, "-m", "nnlite.check", str(raw)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 2 cases")


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as info:
        check_main([])
    assert info.value.code == 2


def test_warnings_do_not_fail(tmp_path):
    raw = make_raw(tmp_path / "raw", n_cases=3)
    write_nifti(label(raw, 0), np.zeros(SHAPE, np.uint8))
    write_nifti(image(raw, 1, 1), np.full(SHAPE, 7.0, np.float32))
    shifted = np.diag([*reversed(SPACING), 1.0])
    shifted[:3, 3] = [5.0, 0, 0]
    write_nifti(label(raw, 2), labelled(1, np.uint8), affine=shifted)
    report = check_dataset(load_dataset(raw), workers=2)
    assert len(report.warnings) == 3
    assert any(str(label(raw, 0)) in w and "all background" in w for w in report.warnings)
    assert any(str(image(raw, 1, 1)) in w and "constant" in w for w in report.warnings)
    assert any(str(label(raw, 2)) in w and "affine" in w for w in report.warnings)


def test_uint8_and_float_images_mix(tmp_path):
    raw = make_raw(tmp_path / "raw")
    write_nifti(image(raw, 1, 0), (random_image()).astype(np.uint8))
    checked = check_case(load_dataset(raw), load_dataset(raw).cases[1])
    assert checked.data.dtype == np.float32


def test_modality_key_and_dataset_key(tmp_path):
    raw = make_raw(tmp_path / "raw")
    meta = json.loads((raw / "dataset.json").read_text())
    meta["modality"] = meta.pop("channel_names")
    meta["dataset"] = {"x": {"images": ["imagesTr/case_001_0000.nii.gz", str(image(raw, 1, 1))],
                             "label": "labelsTr/case_001.nii.gz"}}
    meta["numTraining"] = 1
    (raw / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(raw)
    assert dataset.channel_names == {"0": "MR0", "1": "MR1"}
    assert [c.name for c in dataset.cases] == ["x"]
    assert check_case(dataset, dataset.cases[0]).data.shape == (2, *SHAPE)


def test_case_names_with_underscores_and_digits(tmp_path):
    raw = make_raw(tmp_path / "raw", n_cases=1, n_channels=1)
    for suffix in (".nii.gz",):
        write_nifti(raw / "imagesTr" / f"BC_12_0001_0000{suffix}", random_image())
        write_nifti(raw / "labelsTr" / f"BC_12_0001{suffix}", labelled(1, np.uint8))
    edit_json(raw, numTraining=2)
    assert [c.name for c in load_dataset(raw).cases] == ["BC_12_0001", "case_000"]


def test_hippocampus_passes(hippocampus_raw):
    dataset = load_dataset(hippocampus_raw)
    report = check_dataset(dataset, workers=2)
    assert report.num_cases == dataset.num_training == 220
    assert report.warnings == []


# KFold(5, shuffle=True, random_state=12345).split(sorted names), recorded with scikit-learn 1.9.1.
SKLEARN_SPLITS_7 = [["c003", "c006"], ["c000", "c004"], ["c001"], ["c005"], ["c002"]]


def test_splits_match_sklearn():
    names = [f"c{i:03d}" for i in range(7)]
    splits = make_splits(list(reversed(names)))
    assert [s["val"] for s in splits] == SKLEARN_SPLITS_7
    for split in splits:
        assert split["train"] == [n for n in names if n not in split["val"]]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(5, 60), seed=st.integers(0, 2**31 - 1))
def test_splits_partition_the_cases(n, seed):
    names = [f"case_{i}" for i in range(n)]
    splits = make_splits(names, seed=seed)
    vals = [v for s in splits for v in s["val"]]
    assert sorted(vals) == sorted(names)
    assert [len(s["val"]) for s in splits] == sorted((len(s["val"]) for s in splits), reverse=True)
    assert max(len(s["val"]) for s in splits) - min(len(s["val"]) for s in splits) <= 1
    assert all(set(s["train"]).isdisjoint(s["val"]) and len(s["train"]) + len(s["val"]) == n
               for s in splits)
    assert make_splits(names, seed=seed) == splits


def test_too_few_cases_for_splits():
    with pytest.raises(UserError):
        make_splits(["a", "b"])


def test_a_declared_label_that_no_case_holds_is_a_warning(tmp_path):
    raw = make_raw(tmp_path / "raw", n_cases=2)
    for case in range(2):
        seg = np.zeros(SHAPE, np.uint8)
        seg[1:3, 2:4, 1:3] = 1
        write_nifti(label(raw, case), seg)  # label 2 ("b") nowhere
    report = check_dataset(load_dataset(raw))
    assert report.warnings == ["dataset.json: label 'b' (2) is declared but occurs in no case"]
