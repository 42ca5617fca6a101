"""`nnlite evaluate PRED REF` finds the raw dataset's dataset.json beside REF_DIR (a region dataset
is only recognisable through it), says which one it used, and prints labels by their names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnlite.data.image_io import write_seg
from nnlite.evaluate import main as evaluate_main

BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
REF = np.array([[[1, 1, 2, 2], [3, 3, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]], np.uint8)


def raw_dataset(tmp_path: Path, labels: dict, pred: np.ndarray, **extra) -> tuple[Path, Path]:
    """RAW/dataset.json + RAW/labelsTr/case_a.nii.gz (REF), and PRED/case_a.nii.gz."""
    raw = tmp_path / "raw"
    write_seg(raw / "labelsTr" / "case_a.nii.gz", REF, np.eye(4))
    (raw / "dataset.json").write_text(json.dumps({"labels": labels, **extra}))
    write_seg(tmp_path / "pred" / "case_a.nii.gz", pred, np.eye(4))
    return tmp_path / "pred", raw / "labelsTr"


def test_regions_of_the_raw_dataset_are_scored_without_dataset_json_flag(tmp_path, capsys):
    pred = REF.copy()
    pred[0, 1, :2] = 2  # enhancing (3) painted as core (2): whole and core right, enhancing missed
    pred_dir, ref_dir = raw_dataset(tmp_path, BRATS_LABELS, pred, regions_class_order=[1, 2, 3])
    assert evaluate_main([str(pred_dir), str(ref_dir)]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["labels"] == ["whole tumor", "tumor core", "enhancing tumor"]
    assert [summary["mean"][k]["dice"] for k in summary["labels"]] == [1.0, 1.0, 0.0]
    out = capsys.readouterr().out
    assert f"dataset.json: {tmp_path / 'raw' / 'dataset.json'} (beside REF_DIR" in out


def test_plain_labels_of_the_raw_dataset_are_scored_and_printed_by_name(tmp_path, capsys):
    labels = {"background": 0, "liver": 1, "tumour": 2, "vessel": 3, "cyst": 4}
    pred_dir, ref_dir = raw_dataset(tmp_path, labels, REF)
    assert evaluate_main([str(pred_dir), str(ref_dir)]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["labels"] == [1, 2, 3, 4]  # the declared labels, also one no reference holds
    rows = {line.split(")")[0] + ")" for line in capsys.readouterr().out.splitlines() if ")" in line}
    assert {"liver (1)", "tumour (2)", "vessel (3)", "cyst (4)"} <= {row.strip() for row in rows}


def test_without_a_dataset_json_the_reference_values_are_plain_labels_and_it_says_so(tmp_path, capsys):
    pred_dir, ref_dir = raw_dataset(tmp_path, {}, REF)
    (tmp_path / "raw" / "dataset.json").unlink()
    assert evaluate_main([str(pred_dir), str(ref_dir)]) == 0
    assert json.loads((pred_dir / "summary.json").read_text())["labels"] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "dataset.json: none at" in out and "a region dataset needs --dataset-json" in out


@pytest.mark.parametrize("flag", ["--labels", "--dataset-json"])
def test_an_explicit_choice_wins_over_the_dataset_json_beside_ref(tmp_path, flag):
    pred_dir, ref_dir = raw_dataset(tmp_path, BRATS_LABELS, REF, regions_class_order=[1, 2, 3])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3}}))
    values = ["1", "2", "3"] if flag == "--labels" else [str(plain)]
    assert evaluate_main([str(pred_dir), str(ref_dir), flag, *values]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["labels"] == [1, 2, 3]  # not the regions of the dataset.json beside REF_DIR
