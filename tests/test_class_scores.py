"""Classification scores against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nnlite.evaluation.class_scores import (balanced_accuracy, binary_auc, bootstrap_interval,
                                            classification_summary, confusion_matrix, roc_auc, roc_curve,
                                            sensitivity_specificity)


def test_binary_auc_counts_pairs_and_half_ties():
    positive = np.array([True, True, False, False, False])
    scores = np.array([0.9, 0.4, 0.4, 0.2, 0.1])
    # positive-negative pairs: 0.9 beats all 3; 0.4 beats 0.2 and 0.1 and ties 0.4 → (3 + 2.5) / 6
    assert binary_auc(positive, scores) == pytest.approx(5.5 / 6)
    assert binary_auc(positive, -scores) == pytest.approx(0.5 / 6)
    assert np.isnan(binary_auc(np.array([True, True]), np.array([0.1, 0.2])))


def test_macro_one_vs_rest_auc_for_three_classes():
    true = np.array([0, 1, 2, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5], [0.4, 0.5, 0.1]])
    assert roc_auc(true, probs) == pytest.approx(1.0)  # every class ranks its cases first
    probs[3] = [0.1, 0.8, 0.1]
    # class 0: positives 0.8, 0.1 vs negatives 0.3, 0.2 → 2 of 4 pairs; class 1: positive 0.6 vs
    # 0.1, 0.3, 0.8 → 2 of 3; class 2: 0.5 vs 0.1, 0.1, 0.1 → 1
    expected = np.mean([2 / 4, 2 / 3, 1.0])
    assert roc_auc(true, probs) == pytest.approx(expected)


def test_confusion_sensitivity_specificity_and_balanced_accuracy():
    true = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0])
    matrix = confusion_matrix(true, pred, 2)
    assert matrix.tolist() == [[3, 1], [1, 1]]
    sensitivity, specificity = sensitivity_specificity(matrix)
    assert sensitivity.tolist() == [0.75, 0.5] and specificity.tolist() == [0.5, 0.75]
    assert balanced_accuracy(true, pred, 2) == pytest.approx(0.625)  # accuracy would be 4/6


def test_roc_curve_runs_from_origin_to_one():
    fpr, tpr = roc_curve(np.array([True, False, True, False]), np.array([0.9, 0.8, 0.3, 0.1]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]


def test_bootstrap_interval_contains_the_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(3)
    true = np.repeat([0, 1], 20)
    scores = true + rng.normal(0, 0.8, 40)
    point = binary_auc(true == 1, scores)
    low, high = bootstrap_interval(lambda idx: binary_auc(true[idx] == 1, scores[idx]), 40)
    assert low < point < high and 0 < high - low < 0.5
    assert bootstrap_interval(lambda idx: binary_auc(true[idx] == 1, scores[idx]), 40) == (low, high)


def test_summary_block():
    true = {"a": 0, "b": 1, "c": 1}
    probs = {"a": np.array([0.7, 0.3]), "b": np.array([0.2, 0.8]), "c": np.array([0.6, 0.4])}
    block = classification_summary(true, probs, ["benign", "malignant"])
    assert block["auc"] == pytest.approx(1.0) and block["accuracy"] == pytest.approx(2 / 3)
    assert block["balanced_accuracy"] == pytest.approx(0.75)
    assert block["confusion_matrix"] == [[1, 0], [1, 1]]
    assert block["per_class"]["malignant"] == {"sensitivity": 0.5, "specificity": 1.0}
    assert block["per_case"]["c"] == {"true": "malignant", "predicted": "benign", "probabilities": [0.6, 0.4]}
