"""`evaluate` is strict: the labels it scores, the label maps it reads and where it writes.

Labels come from --labels (foreground only), --dataset-json or the references; a predicted value
outside them is an error naming the case and the value; non-integer maps and ambiguous case files
are refused; another affine warns; the summary never lands on a folder or inside REF_DIR.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnlite.common.cli import run
from nnlite.common.errors import UserError
from nnlite.evaluate import main as evaluate_main
from nnlite.evaluation.metrics import evaluate_folder

REF = np.array([[[0, 1, 1], [0, 2, 0]], [[0, 0, 1], [2, 2, 0]]], np.uint8)


def write(folder: Path, case: str, seg: np.ndarray, ending: str = ".nii.gz", spacing: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case}{ending}"
    nib.save(nib.Nifti1Image(seg, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def folders(tmp_path: Path, pred: np.ndarray = REF) -> tuple[Path, Path]:
    write(tmp_path / "ref", "c1", REF)
    write(tmp_path / "pred", "c1", pred)
    return tmp_path / "pred", tmp_path / "ref"


def evaluate(*args: str | Path, capsys) -> tuple[int, list[str]]:
    """Run the command as the console script does: exit code and stderr lines."""
    code = run(evaluate_main, [str(a) for a in args])
    return code, capsys.readouterr().err.splitlines()


def test_a_predicted_label_that_no_reference_holds_is_an_error(tmp_path):
    pred, ref = folders(tmp_path, pred=np.where(REF == 2, 5, REF).astype(np.uint8))
    with pytest.raises(UserError, match="^c1: the prediction holds label 5, which is not among the references"):
        evaluate_folder(pred, ref)


@pytest.mark.parametrize("labels, problem", [(["0", "1"], "0 is not a foreground label"),
                                             (["-1"], "-1 is not a foreground label")])
def test_labels_must_be_foreground(tmp_path, capsys, labels, problem):
    pred, ref = folders(tmp_path)
    code, err = evaluate(pred, ref, "--labels", *labels, capsys=capsys)
    assert code == 2 and err == [f"error: --labels: {problem} (background is 0; labels are positive)"]
    assert not (pred / "summary.json").exists()


def test_a_label_no_reference_holds_is_warned_about(tmp_path, capsys, caplog):
    pred, ref = folders(tmp_path, pred=np.zeros_like(REF))
    with caplog.at_level(logging.WARNING):
        code, _ = evaluate(pred, ref, "--labels", "1", "2", "7", capsys=capsys)
    assert code == 0 and "label 7 occurs in no reference" in caplog.text


def test_dataset_json_gives_the_labels_and_the_ignore_label(tmp_path, capsys):
    pred, ref = folders(tmp_path, pred=np.where(REF == 2, 0, REF).astype(np.uint8))
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 4}}))
    code, _ = evaluate(pred, ref, "--dataset-json", dataset_json, capsys=capsys)
    summary = json.loads((pred / "summary.json").read_text())
    assert code == 0 and summary["labels"] == [1, 2, 3]  # 3 is declared, though no reference holds it
    assert summary["mean"]["2"]["dice"] == 0.0


def test_non_integer_label_maps_are_refused_but_float_storage_is_fine(tmp_path):
    pred, ref = folders(tmp_path, pred=REF.astype(np.float32))
    assert evaluate_folder(pred, ref)["mean"]["1"]["dice"] == 1.0
    write(pred, "c1", REF.astype(np.float32) * 0.5)
    with pytest.raises(UserError, match="c1.nii.gz: holds non-integer values \\(e.g. 0.5\\)"):
        evaluate_folder(pred, ref)


def test_an_affine_mismatch_is_a_warning_naming_the_case(tmp_path, caplog):
    pred, ref = folders(tmp_path)
    write(pred, "c1", REF, spacing=2.0)
    with caplog.at_level(logging.WARNING):
        assert evaluate_folder(pred, ref)["mean"]["1"]["dice"] == 1.0
    assert "warning: c1: the prediction's affine" in caplog.text


def test_two_files_of_one_case_are_ambiguous(tmp_path):
    pred, ref = folders(tmp_path)
    write(pred, "c1", np.zeros_like(REF), ending=".nii")
    with pytest.raises(UserError, match="case 'c1' has two files \\(c1.nii, c1.nii.gz\\)"):
        evaluate_folder(pred, ref)


def test_the_summary_never_lands_in_the_reference_folder(tmp_path, capsys):
    _, ref = folders(tmp_path)
    code, err = evaluate(ref, ref, capsys=capsys)
    assert code == 2 and len(err) == 1 and "would write into the reference folder" in err[0]
    code, err = evaluate(tmp_path / "pred", ref, "--output", ref / "summary.json", capsys=capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --output: would write into")
    assert sorted(p.name for p in ref.iterdir()) == ["c1.nii.gz"]


def test_output_onto_a_folder_is_one_error_line(tmp_path, capsys):
    pred, ref = folders(tmp_path)
    (tmp_path / "out").mkdir()
    code, err = evaluate(pred, ref, "--output", tmp_path / "out", capsys=capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --output:") and "is a folder" in err[0]
