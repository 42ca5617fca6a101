"""`evaluate --format nnunet`: summary.json in nnU-Net v2's layout, values by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnlite.evaluate import main as evaluate_main
from nnlite.evaluation.metrics import label_classes
from nnlite.evaluation.nnunet_summary import evaluate_folder_nnunet
from tests.test_metrics import _folders, _write


def test_nnunet_layout_and_hand_computed_values(tmp_path):
    pred, ref = _folders(tmp_path)
    output = tmp_path / "summary.json"
    assert evaluate_main([str(pred), str(ref), "--output", str(output), "--format", "nnunet"]) == 0
    text = output.read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert set(summary) == {"foreground_mean", "mean", "metric_per_case"}
    assert set(summary["mean"]) == {"1", "2"}
    first = summary["metric_per_case"][0]
    assert set(first) == {"metrics", "prediction_file", "reference_file"}
    assert first["prediction_file"].endswith("a.nii.gz") and "ref" in first["reference_file"]
    a1 = first["metrics"]["1"]
    assert set(a1) == {"Dice", "IoU", "PPV", "FN", "FP", "TN", "TP", "n_pred", "n_ref"}
    assert (a1["TP"], a1["FP"], a1["FN"], a1["TN"], a1["n_pred"], a1["n_ref"]) == (4, 1, 0, 19, 5, 4)
    assert a1["Dice"] == pytest.approx(8 / 9) and a1["IoU"] == pytest.approx(4 / 5) and a1["PPV"] == pytest.approx(4 / 5)
    b2 = summary["metric_per_case"][1]["metrics"]["2"]
    assert b2["Dice"] is None and b2["TN"] == 24
    assert summary["mean"]["2"]["Dice"] == pytest.approx(1.0)
    assert summary["mean"]["2"]["TN"] == pytest.approx((23 + 24) / 2)
    mean1 = (8 / 9 + 0) / 2
    assert summary["foreground_mean"]["Dice"] == pytest.approx((mean1 + 1.0) / 2)


def test_nnlite_layout_stays_the_default(tmp_path):
    pred, ref = _folders(tmp_path)
    assert evaluate_main([str(pred), str(ref), "--output", str(tmp_path / "s.json")]) == 0
    assert "per_case" in json.loads((tmp_path / "s.json").read_text())


def test_ignore_label_voxels_are_not_true_negatives(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    r = np.zeros((2, 2, 2), np.uint8)
    r[0] = 9  # unannotated
    r[1, 0, 0] = 1
    p = np.zeros_like(r)
    p[1, 0, 0] = 1
    p[0, 0, 0] = 1  # predicted in unannotated voxels: counts nowhere
    _write(pred, "a", p)
    _write(ref, "a", r)
    summary = evaluate_folder_nnunet(pred, ref, label_classes([1]), ignore_label=9)
    metrics = summary["metric_per_case"][0]["metrics"]["1"]
    assert (metrics["TP"], metrics["FP"], metrics["TN"]) == (1, 0, 3)


def test_region_keys_are_python_tuple_reprs(tmp_path):
    """nnU-Net keys a region by str() of it as its LabelManager holds it
    (evaluate_predictions.label_or_region_to_key): a list becomes a tuple, "(1, 2)" and, for a
    one-label list, "(2,)"; a region written as a bare integer stays "2", as does a plain label."""
    from nnlite.common.labels import Region, scored_classes
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    r = np.zeros((2, 2, 2), np.uint8)
    r[0, 0, 0], r[1, 1, 1] = 1, 2
    _write(pred, "a", r)
    _write(ref, "a", r)
    regions = scored_classes({}, (Region("both", (1, 2), 1), Region("second", (2,), 2)))
    summary = evaluate_folder_nnunet(pred, ref, regions)
    assert list(summary["mean"]) == ["(1, 2)", "(2,)"]
    bare = scored_classes({}, (Region("both", (1, 2), 1), Region("second", (2,), 2, scalar=True)))
    assert list(evaluate_folder_nnunet(pred, ref, bare)["mean"]) == ["(1, 2)", "2"]
    assert list(summary["metric_per_case"][0]["metrics"]) == ["(1, 2)", "(2,)"]
    assert summary["mean"]["(1, 2)"]["TP"] == 2 and summary["mean"]["(2,)"]["TP"] == 1
    assert list(evaluate_folder_nnunet(pred, ref, label_classes([1, 2]))["mean"]) == ["1", "2"]
