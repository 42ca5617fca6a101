"""Metrics against hand-computed cases, every empty/NaN rule of the contract, the folder command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.data.image_io import write_seg
from nnlite.evaluate import main as evaluate_main
from nnlite.evaluation.metrics import (Counts, confusion_counts, evaluate_folder, label_classes, metrics_from_counts,
                                       read_label_map, summarize)

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def test_hand_computed_counts_and_metrics():
    ref = np.array([[[1, 1, 1, 0, 2, 2]]])
    pred = np.array([[[1, 1, 0, 1, 2, 0]]])
    counts = confusion_counts(pred, ref, label_classes([1, 2]))
    assert counts[1] == Counts(tp=2, fp=1, fn=1)
    assert counts[2] == Counts(tp=1, fp=0, fn=1)
    m1 = metrics_from_counts(counts[1])
    assert m1["dice"] == pytest.approx(4 / 6)
    assert m1["iou"] == pytest.approx(2 / 4)
    assert m1["ppv"] == pytest.approx(2 / 3)
    m2 = metrics_from_counts(counts[2])
    assert (m2["dice"], m2["iou"], m2["ppv"]) == pytest.approx((2 / 3, 1 / 2, 1.0))


def test_both_empty_is_nan_and_left_out_of_the_mean():
    both_empty = metrics_from_counts(Counts(0, 0, 0))
    assert math.isnan(both_empty["dice"]) and math.isnan(both_empty["iou"])
    assert math.isnan(both_empty["ppv"])
    summary = summarize({"a": {1: Counts(3, 1, 0)}, "b": {1: Counts(0, 0, 0)}}, [1])
    assert summary["mean"]["1"]["dice"] == pytest.approx(6 / 7)  # case b does not count
    assert summary["mean"]["1"]["iou"] == pytest.approx(3 / 4)


def test_only_reference_empty_gives_dice_zero():
    m = metrics_from_counts(Counts(tp=0, fp=5, fn=0))
    assert m["dice"] == 0 and m["iou"] == 0 and m["ppv"] == 0


def test_nothing_predicted_gives_ppv_nan_but_dice_zero():
    m = metrics_from_counts(Counts(tp=0, fp=0, fn=4))
    assert m["dice"] == 0 and m["iou"] == 0 and math.isnan(m["ppv"])


def test_foreground_mean_is_mean_of_label_means():
    counts = {"a": {1: Counts(1, 0, 0), 2: Counts(1, 1, 0)},
              "b": {1: Counts(1, 0, 1), 2: Counts(0, 0, 0)}}
    summary = summarize(counts, [1, 2])
    mean1 = (1.0 + 2 / 3) / 2
    mean2 = 2 / 3  # case b both empty → left out
    assert summary["mean"]["1"]["dice"] == pytest.approx(mean1)
    assert summary["mean"]["2"]["dice"] == pytest.approx(mean2)
    assert summary["foreground_mean"]["dice"] == pytest.approx((mean1 + mean2) / 2)


def _write(folder: Path, case: str, seg: np.ndarray) -> None:
    write_seg(folder / f"{case}.nii.gz", seg, AFFINE)


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    ref_a = np.zeros((2, 3, 4), np.uint8)
    ref_a[0, :2, :2] = 1
    ref_a[1, 0, 0] = 2
    pred_a = ref_a.copy()
    pred_a[1, 2, 3] = 1  # one false positive of label 1
    ref_b = np.zeros((2, 3, 4), np.uint8)  # label 2 absent in both for case b, label 1 only predicted
    pred_b = ref_b.copy()
    pred_b[0, 0, 0] = 1
    for case, p, r in (("a", pred_a, ref_a), ("b", pred_b, ref_b)):
        _write(pred, case, p)
        _write(ref, case, r)
    _write(ref, "c", ref_b)  # a reference without prediction is left out
    return pred, ref


def test_evaluate_folder_summary_layout_and_null(tmp_path):
    pred, ref = _folders(tmp_path)
    output = tmp_path / "summary.json"
    assert evaluate_main([str(pred), str(ref), "--output", str(output)]) == 0
    text = output.read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert set(summary) == {"labels", "mean", "foreground_mean", "per_case"}
    assert summary["labels"] == [1, 2]
    assert [c["case"] for c in summary["per_case"]] == ["a", "b"]
    a1 = summary["per_case"][0]["metrics"]["1"]
    assert (a1["tp"], a1["fp"], a1["fn"]) == (4, 1, 0)
    assert a1["dice"] == pytest.approx(8 / 9)
    b2 = summary["per_case"][1]["metrics"]["2"]
    assert b2["dice"] is None and b2["iou"] is None and b2["ppv"] is None
    assert summary["per_case"][1]["metrics"]["1"]["dice"] == 0
    assert summary["mean"]["2"]["dice"] == pytest.approx(1.0)
    assert summary["mean"]["1"]["dice"] == pytest.approx((8 / 9 + 0) / 2)


@pytest.mark.parametrize("pred_ending, ref_ending", [(".mha", ".nrrd"), (".nii.gz", ".mha")])
def test_label_maps_of_other_formats_score_like_nifti(tmp_path, pred_ending, ref_ending):
    pred, ref = _folders(tmp_path / "nifti")
    expected = evaluate_folder(pred, ref)
    for folder, ending in ((pred, pred_ending), (ref, ref_ending)):
        for path in sorted(folder.glob("*.nii.gz")):
            case = path.name[: -len(".nii.gz")]
            write_seg(tmp_path / ending / folder.name / f"{case}{ending}", read_label_map(path)[0], AFFINE)
    assert evaluate_folder(tmp_path / pred_ending / "pred", tmp_path / ref_ending / "ref") == expected


def test_explicit_labels_are_used(tmp_path):
    pred, ref = _folders(tmp_path)
    summary = evaluate_folder(pred, ref, label_classes([1, 2, 3]))
    assert summary["labels"] == [1, 2, 3] and set(summary["mean"]) == {"1", "2", "3"}


def test_a_predicted_label_outside_the_scored_ones_is_an_error(tmp_path):
    pred, ref = _folders(tmp_path)
    with pytest.raises(UserError, match="^a: the prediction holds label 1, which is not among"):
        evaluate_folder(pred, ref, label_classes([2]))


def test_ignore_label_voxels_count_nowhere(tmp_path):
    """Reference value 3 = unannotated: predictions there are neither FP nor TP, and 3 is no label."""
    ref = np.array([[[1, 1, 3, 3], [0, 2, 3, 0]]], np.uint8)
    pred = np.array([[[1, 0, 1, 2], [1, 2, 2, 0]]], np.uint8)
    counts = confusion_counts(pred, ref, label_classes([1, 2]), ignore_label=3)
    assert counts == {1: Counts(1, 1, 1), 2: Counts(1, 0, 0)}
    assert confusion_counts(pred, ref, label_classes([1, 2]))[2] == Counts(1, 2, 0)  # without: the two at 3 are FP
    _write(tmp_path / "pred", "a", pred)
    _write(tmp_path / "ref", "a", ref)
    output = tmp_path / "summary.json"
    assert evaluate_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--ignore-label", "3",
                          "--output", str(output)]) == 0
    summary = json.loads(output.read_text())
    assert summary["labels"] == [1, 2] and summary["mean"]["2"]["dice"] == 1.0


def test_prediction_without_reference_names_the_case(tmp_path):
    pred, ref = _folders(tmp_path)
    _write(pred, "orphan", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(UserError, match="orphan"):
        evaluate_folder(pred, ref)


def test_shape_mismatch_names_the_case(tmp_path):
    pred, ref = _folders(tmp_path)
    _write(pred, "a", np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(UserError, match="^a: .*shape"):
        evaluate_folder(pred, ref)


def test_cli_error_exit_code(tmp_path, capsys):
    from nnlite.common.cli import run

    assert run(evaluate_main, [str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error:")
