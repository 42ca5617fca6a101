"""What the Results page reads (viewing/runs.py) and the Predict page's models (viewing/models.py),
on a hand-made WORK whose validation Dice is known per case."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from app_fixtures import CASES, EXPECTED_DICE, handmade_work, inputs_folder, reference
from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.viewing.models import ModelChoice, model_choices, predict_case
from nnlite.viewing.runs import (BEST, CROSSVAL, Source, case_mean_dice, case_table, find_sources,
                                 load_case_volumes, most_recent, read_curves, read_summary)
from nnlite.viewing.uploads import copy_input_case


@pytest.fixture
def work(tmp_path):
    return handmade_work(tmp_path)


def test_sources_list_folds_crossval_and_best(work):
    fold1 = work / "results" / CONFIG / "fold_1" / "validation"
    crossval = work / "results" / CONFIG / "crossval"
    for folder in (fold1, crossval):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text((work / "results" / CONFIG / "fold_0" / "validation" /
                                              "summary.json").read_text())
    (work / "results" / "best.json").write_text(json.dumps(
        {"winner": {"name": CONFIG, "configurations": [CONFIG], "crossval": str(crossval)}}))
    sources = find_sources(work)
    assert [(s.config, s.fold) for s in sources] == [(CONFIG, BEST), (CONFIG, "0"), (CONFIG, "1"),
                                                     (CONFIG, CROSSVAL)]
    assert [s.label for s in sources][-1] == f"{CONFIG} · cross-validation"
    os.utime(fold1 / "summary.json", (1, 1))  # fold 1 scored long ago: fold 0 is the most recent
    assert most_recent(sources).fold == "0"
    os.utime(fold1 / "summary.json")
    assert most_recent(sources).fold == "1"


def test_the_worst_case_has_the_lowest_mean_foreground_dice(work):
    source = most_recent(find_sources(work))
    rows = case_table(read_summary(source), {"1": "lesion"})
    assert [r["case"] for r in rows] == sorted(CASES, key=EXPECTED_DICE.get)
    assert case_table(read_summary(source))[0]["case"] == "case_c"
    for row in rows:
        assert row["mean dice"] == pytest.approx(EXPECTED_DICE[row["case"]])
        assert row["dice lesion"] == pytest.approx(EXPECTED_DICE[row["case"]])
    assert {"iou lesion", "ppv lesion"} <= set(rows[0])


def test_cases_with_nothing_to_find_go_last_and_nan_labels_are_left_out():
    summary = {"per_case": [
        {"case": "empty", "metrics": {"1": {"dice": None, "iou": None, "ppv": None}}},
        {"case": "half", "metrics": {"1": {"dice": 0.5}, "2": {"dice": None}}},
        {"case": "good", "metrics": {"1": {"dice": 0.9}, "2": {"dice": 0.7}}}]}
    assert [r["case"] for r in case_table(summary)] == ["half", "good", "empty"]
    assert case_mean_dice(summary["per_case"][1]) == 0.5
    assert math.isnan(case_mean_dice(summary["per_case"][0]))


def test_the_case_table_shows_true_and_predicted_classes():
    a_class = {"true": "benign", "predicted": "malignant", "probabilities": [0.2, 0.8]}
    summary = {"per_case": [{"case": "a", "metrics": {"1": {"dice": 0.5}}},
                            {"case": "b", "metrics": {"1": {"dice": 0.9}}}],
               "classification": {"per_case": {"a": a_class}}}
    rows = case_table(summary)
    assert (rows[0]["true class"], rows[0]["predicted class"]) == ("benign", "malignant")
    assert "true class" not in rows[1]


def test_curves_come_from_metrics_jsonl(work):
    curves = read_curves(most_recent(find_sources(work)))
    assert curves["epoch"] == [1.0, 2.0, 3.0]
    assert curves["train_loss"] == pytest.approx([1.0, 0.8, 0.6])
    assert set(curves) >= {"val_loss", "mean_pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time"}
    assert read_curves(Source(CONFIG, CROSSVAL, work)) == {}


def test_a_case_is_read_from_raw_and_the_source(work):
    source = most_recent(find_sources(work))
    volumes = load_case_volumes(work, source, "case_b")
    assert volumes.data.shape == (2, *reference().shape) and volumes.spacing == pytest.approx((2, 1, 1))
    assert np.array_equal(volumes.ref, reference())
    assert volumes.pred.sum() == 64 and not np.array_equal(volumes.pred, volumes.ref)


def test_a_case_name_cannot_leave_the_source_folder(work, tmp_path):
    source = most_recent(find_sources(work))
    (tmp_path / "outside.nii.gz").write_bytes(b"")
    with pytest.raises(UserError, match="outside"):
        load_case_volumes(work, source, "../../../../../outside")


def test_model_choices_name_best_and_the_finished_folds(work):
    save_random_model(work, tiny_plans(channels=2, labels=1), folds=(1,))
    labels = [c.label for c in model_choices(work)]
    assert labels == [f"{CONFIG}, folds 0 1", f"{CONFIG}, fold 0", f"{CONFIG}, fold 1"]
    (work / "results" / "best.json").write_text("{}")
    assert model_choices(work)[0] == ModelChoice("best.json (the cross-validated winner)")


def test_predict_case_writes_a_label_map_in_the_case_geometry(work, tmp_path):
    inputs = inputs_folder(tmp_path / "in")
    staged = tmp_path / "staged"
    staged.mkdir()
    copy_input_case(inputs, "new_0", staged)
    seen = []
    result = predict_case(work, model_choices(work)[0], staged, tmp_path / "out", "new_0",
                          progress=lambda fraction, text: seen.append(fraction), device="cpu")
    assert result.seg_path == tmp_path / "out" / "new_0.nii.gz" and result.seg_path.is_file()
    assert result.pred.shape == reference().shape and result.data.shape == (2, *reference().shape)
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_a_failed_prediction_is_one_user_error(work, tmp_path):
    staged = tmp_path / "staged"
    inputs = inputs_folder(tmp_path / "in")
    staged.mkdir()
    copy_input_case(inputs, "new_0", staged)
    (staged / "new_0_0001.nii.gz").unlink()  # one channel for a two-channel model
    with pytest.raises(UserError, match="channel"):
        predict_case(work, model_choices(work)[0], staged, tmp_path / "out", "new_0", device="cpu")


def test_a_dicom_upload_is_predicted_with_its_dicom_seg(work, tmp_path):
    from test_uploads import dicom_zip
    from nnlite.viewing.uploads import Upload, new_folder, stage_upload

    folder = new_folder(tmp_path / "o")
    (folder / "input").mkdir()
    data = dicom_zip(tmp_path, {"a": 0, "b": 1}, shape=(6, 16, 16))
    case, _ = stage_upload([Upload("pat.zip", data)], folder / "input", ["ch0", "ch1"])
    result = predict_case(work, model_choices(work)[0], folder / "input", folder / "prediction", case,
                          device="cpu")
    assert result.seg_path.name == "pat.nii.gz" and result.pred.shape == (6, 16, 16)
    assert result.dicom_seg is not None and result.dicom_seg.read_bytes()[128:132] == b"DICM"


def test_ordered_by_quality_score_the_least_trustworthy_case_comes_first_and_unscored_ones_last(tmp_path):
    from app_fixtures import SCORES, UNSURE
    from nnlite.viewing.runs import BY_DICE, BY_SCORE, SCORE_COLUMN, has_scores, sort_rows

    work = handmade_work(tmp_path, scored=True)
    source = most_recent(find_sources(work))
    rows = case_table(read_summary(source))
    assert has_scores(rows) and {r["case"]: r[SCORE_COLUMN] for r in rows} == SCORES
    assert [r["case"] for r in sort_rows(rows, BY_SCORE)] == ["case_a", "case_c", "case_b"]
    assert [r["case"] for r in sort_rows(rows, BY_DICE)] == ["case_c", "case_b", "case_a"]
    unscored = [{"case": "z", "mean dice": 0.5}, {"case": "y", "mean dice": 0.1, SCORE_COLUMN: math.nan}]
    assert [r["case"] for r in sort_rows(rows + unscored, BY_SCORE)][-2:] == ["y", "z"]
    plain = handmade_work(tmp_path / "plain")
    plain_source = most_recent(find_sources(plain))
    assert not has_scores(case_table(read_summary(plain_source)))
    assert load_case_volumes(plain, plain_source, "case_b").uncertainty is None
    volumes = load_case_volumes(work, source, "case_b")
    expected = np.zeros_like(volumes.uncertainty)
    expected[UNSURE] = 1.0
    np.testing.assert_array_equal(volumes.uncertainty, expected)


def test_the_review_hint_flags_cases_from_the_documented_score_on():
    from nnlite.viewing.models import REVIEW_SCORE, review_hint

    review, text = review_hint(REVIEW_SCORE + 0.1)
    assert review and text.startswith("Review this case first") and "0.70" in text
    review, text = review_hint(REVIEW_SCORE - 0.1)
    assert not review and "Review" not in text
    assert review_hint(REVIEW_SCORE)[0]
