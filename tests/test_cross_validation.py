"""Merging fold validations into one cross-validation result, and probability ensembles of them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference_fixtures import tiny_plans
from nnlite.common.layout import crossval_folder, ensemble_folder
from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.data.case_classes import format_classes_csv
from nnlite.evaluation.class_scores import classification_summary
from nnlite.evaluation.selection import _candidate
from nnlite.inference.case_classification import read_classification, write_classification
from nnlite.planning.splits import make_splits
from nnlite.data.image_io import read_image, write_seg
from nnlite.evaluation.cross_validation import has_probabilities, merge_crossval
from nnlite.evaluation.ensembles import ensemble_crossval, ensemble_name
from nnlite.inference.outputs import average_probabilities, seg_from_probabilities
from nnlite.inference.saved_probabilities import load_probabilities, write_probabilities
from nnlite.plans import load_plans, save_plans
from nnlite.training.folds import cv_folds

SHAPE = (6, 9, 8)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
CASES = [f"case_{i}" for i in range(7)]


def random_probs(rng: np.random.Generator) -> np.ndarray:
    """float16 (3, *SHAPE) softmax-like probabilities, as validation saves them."""
    logits = rng.normal(0, 2, (3, *SHAPE))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return probs.astype(np.float16)


def write_fold_results(work: Path, config: str, splits: list[dict], seed: int,
                       decoys: bool = True) -> dict[str, np.ndarray]:
    """Validation label maps + npz for each fold's val cases (and decoys for its training cases);
    returns case → the probabilities its validating fold wrote."""
    rng = np.random.default_rng(seed)
    written = {}
    for fold, split in enumerate(splits):
        folder = work / "results" / config / f"fold_{fold}" / "validation"
        for case in split["val"]:
            probs = random_probs(rng)
            write_seg(folder / f"{case}.nii.gz", seg_from_probabilities(probs), AFFINE)
            write_probabilities(folder / f"{case}.npz", probs)
            written[case] = probs
        for case in split["train"] if decoys else []:
            write_seg(folder / f"{case}.nii.gz", np.full(SHAPE, 2, np.uint8), AFFINE)
    return written


@pytest.fixture
def work(tmp_path, rng) -> Path:
    raw = tmp_path / "raw"
    for case in CASES:
        write_seg(raw / "labelsTr" / f"{case}.nii.gz", rng.integers(0, 3, SHAPE).astype(np.uint8), AFFINE)
    work = tmp_path / "work"
    save_plans(tiny_plans(labels=2, raw_path=str(raw)), work / "plans.json")
    write_json_atomic(work / "splits.json", make_splits(CASES, n_folds=3))
    return work


def hand_foreground_dice(probs: dict[str, np.ndarray], labels_dir: Path, labels: tuple[int, ...]) -> float:
    """Mean over labels of the mean over cases of 2TP / (2TP + FP + FN), written out with numpy."""
    per_label = []
    for label in labels:
        dices = []
        for case, p in probs.items():
            pred = p.astype(np.float32).argmax(0) == label
            ref = read_image(labels_dir / f"{case}.nii.gz").array == label
            tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
            dices.append(2 * tp / (2 * tp + fp + fn))
        per_label.append(np.mean(dices))
    return float(np.mean(per_label))


def splits_of(work: Path) -> list[dict]:
    return json.loads((work / "splits.json").read_text())


def test_merge_takes_each_case_from_its_validating_fold_only(work):
    splits = splits_of(work)
    written = write_fold_results(work, "3d_fullres", splits, seed=1)
    summary = merge_crossval(work, "3d_fullres")
    merged = crossval_folder(work, "3d_fullres")
    assert sorted(p.name for p in merged.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    for case, probs in written.items():
        np.testing.assert_array_equal(read_image(merged / f"{case}.nii.gz").array,
                                      seg_from_probabilities(probs))
        np.testing.assert_array_equal(load_probabilities(merged / f"{case}.npz"), probs)
        assert summary["folds"][case] == next(k for k, s in enumerate(splits) if case in s["val"])
    expected = hand_foreground_dice(written, work.parent / "raw" / "labelsTr", labels=(1, 2))
    assert summary["foreground_mean"]["dice"] == pytest.approx(expected)
    on_disk = json.loads((merged / "summary.json").read_text())
    assert on_disk["foreground_mean"]["dice"] == pytest.approx(expected)
    assert has_probabilities(work, "3d_fullres")


def test_merge_is_rebuilt_from_the_folds(work):
    write_fold_results(work, "3d_fullres", splits_of(work), seed=1)
    merge_crossval(work, "3d_fullres")
    (crossval_folder(work, "3d_fullres") / "stale.nii.gz").write_bytes(b"")
    merge_crossval(work, "3d_fullres")
    assert not (crossval_folder(work, "3d_fullres") / "stale.nii.gz").exists()


def test_a_case_validated_by_two_folds_is_an_error(work):
    splits = splits_of(work)
    splits[1]["val"].append(splits[0]["val"][0])
    write_json_atomic(work / "splits.json", splits)
    write_fold_results(work, "3d_fullres", splits, seed=1, decoys=False)
    with pytest.raises(UserError, match="predicted twice"):
        merge_crossval(work, "3d_fullres")


def test_a_fold_that_did_not_validate_its_case_is_an_error(work):
    splits = splits_of(work)
    write_fold_results(work, "3d_fullres", splits, seed=1, decoys=False)
    case = splits[2]["val"][0]
    (work / "results" / "3d_fullres" / "fold_2" / "validation" / f"{case}.nii.gz").unlink()
    with pytest.raises(UserError, match="fold 2"):
        merge_crossval(work, "3d_fullres")


def test_average_and_argmax():
    a = np.array([[0.6, 0.2], [0.4, 0.8]], np.float16)
    b = np.array([[0.2, 0.2], [0.8, 0.8]], np.float16)
    mean = average_probabilities([a, b])
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, (a.astype(np.float32) + b) / 2)
    np.testing.assert_array_equal(seg_from_probabilities(mean), [1, 1])
    with pytest.raises(UserError):
        average_probabilities([a, a[:, :1]])


def test_ensemble_of_two_configurations_averages_their_probabilities(work):
    splits = splits_of(work)
    first = write_fold_results(work, "3d_fullres", splits, seed=1)
    second = write_fold_results(work, "2d", splits, seed=2)
    merge_crossval(work, "3d_fullres")
    merge_crossval(work, "2d")
    summary = ensemble_crossval(work, ["3d_fullres", "2d"])
    folder = ensemble_folder(work, ensemble_name(["3d_fullres", "2d"]))
    assert folder.name == "3d_fullres+2d"
    for case in CASES:
        expected = np.argmax(first[case].astype(np.float32) + second[case].astype(np.float32), axis=0)
        np.testing.assert_array_equal(read_image(folder / f"{case}.nii.gz").array, expected)
    assert summary["members"] == ["3d_fullres", "2d"] and len(summary["per_case"]) == len(CASES)
    assert (folder / "summary.json").is_file()


def test_ensembling_needs_the_probabilities(work):
    splits = splits_of(work)
    write_fold_results(work, "3d_fullres", splits, seed=1)
    write_fold_results(work, "2d", splits, seed=2)
    (work / "results" / "2d" / "fold_0" / "validation" / f"{splits[0]['val'][0]}.npz").unlink()
    merge_crossval(work, "3d_fullres")
    merge_crossval(work, "2d")
    assert not has_probabilities(work, "2d")
    with pytest.raises(UserError, match="probabilities"):
        ensemble_crossval(work, ["3d_fullres", "2d"])


def test_cv_runs_every_fold_of_the_splits_file(work, tmp_path):
    assert cv_folds(work) == ["0", "1", "2"]  # the fixture's user-made 3-fold splits.json
    assert cv_folds(tmp_path / "no_splits_yet") == ["0", "1", "2", "3", "4"]


CLASS_NAMES = ("benign", "malignant")


def write_fold_classes(work: Path, config: str, splits: list[dict], seed: int) -> dict[str, np.ndarray]:
    """Each fold's validation/classification.csv (rows for its training cases too, as decoys);
    returns case → the probabilities its validating fold wrote, as read back."""
    rng = np.random.default_rng(seed)
    written = {}
    for fold, split in enumerate(splits):
        folder = work / "results" / config / f"fold_{fold}" / "validation"
        rows = {case: rng.dirichlet([1.0, 1.0]) for case in split["val"] + split["train"]}
        table = read_classification(write_classification(folder, rows, CLASS_NAMES), CLASS_NAMES)
        written.update({case: table[case] for case in split["val"]})
    return written


def test_crossval_ensemble_and_best_carry_the_classification(work):
    save_plans(replace(load_plans(work / "plans.json"), case_classes=CLASS_NAMES), work / "plans.json")
    true = {case: i % 2 for i, case in enumerate(CASES)}
    (work / "classes.csv").write_text(format_classes_csv({c: CLASS_NAMES[k] for c, k in true.items()}))
    splits = splits_of(work)
    for config, seed in (("3d_fullres", 1), ("2d", 2)):
        write_fold_results(work, config, splits, seed=seed)
    first = write_fold_classes(work, "3d_fullres", splits, seed=3)
    second = write_fold_classes(work, "2d", splits, seed=4)
    summary = merge_crossval(work, "3d_fullres")
    merge_crossval(work, "2d")
    assert summary["classification"] == classification_summary(true, first, CLASS_NAMES)
    merged = read_classification(crossval_folder(work, "3d_fullres") / "classification.csv", CLASS_NAMES)
    assert sorted(merged) == CASES and all(np.allclose(merged[c], first[c], atol=1e-6) for c in CASES)
    ensemble = ensemble_crossval(work, ["3d_fullres", "2d"])
    mean = {case: (first[case] + second[case]) / 2 for case in CASES}
    assert ensemble["classification"]["auc"] == pytest.approx(classification_summary(true, mean, CLASS_NAMES)["auc"])
    candidate = _candidate(["3d_fullres"], summary, crossval_folder(work, "3d_fullres"))
    assert candidate["classification"]["auc"] == summary["classification"]["auc"]
