"""Case-level classification scores, written with numpy: summary.json["classification"].

For true classes t (N,) in 0..K-1 and predicted probabilities p (N, K), the predicted class is
argmax p. Reported: accuracy; balanced accuracy (mean sensitivity over the classes that occur);
per class sensitivity TP/(TP+FN) and specificity TN/(TN+FP) (one class against the rest); the
confusion matrix (rows true, columns predicted); ROC AUC of p[:, 1] for K = 2, the macro mean of
the one-vs-rest AUCs for K > 2 (classes that do not occur are left out); and percentile
bootstrap 95 % intervals of AUC and balanced accuracy (cases resampled with replacement,
resamples that lack a class are skipped for the AUC).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import json_ready, read_json_checked
from nnlite.data.case_classes import CLASSES_FILE, CLASSES_KEY, parse_class_names, read_classes_csv
from nnlite.inference.case_classification import CLASSIFICATION_FILE, read_classification, write_classification
from nnlite.planning.class_head import read_work_classes
from nnlite.plans import Plans

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same predictions always give the same interval
CONFIDENCE = 0.95


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores for a boolean `positive` (N,): the Mann-Whitney U / (n_pos · n_neg), ties
    counted one half; NaN when one side is empty."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2
            start = end
    return ranks


def roc_auc(true: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of probs[:, 1] (K = 2) or the macro one-vs-rest AUC (K > 2); NaN if undefined."""
    true = np.asarray(true)
    if probs.shape[1] == 2:
        return binary_auc(true == 1, probs[:, 1])
    aucs = [binary_auc(true == k, probs[:, k]) for k in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates (from (0, 0) to (1, 1)) at every distinct threshold."""
    positive = np.asarray(positive, bool)
    thresholds = np.unique(scores)[::-1]
    fpr = [0.0] + [float(((scores >= t) & ~positive).sum() / max(1, (~positive).sum())) for t in thresholds]
    tpr = [0.0] + [float(((scores >= t) & positive).sum() / max(1, positive.sum())) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(K, K) int64 counts: rows the true class, columns the predicted one."""
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (np.asarray(true), np.asarray(predicted)), 1)
    return matrix


def sensitivity_specificity(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class (K,) sensitivity and specificity of a confusion matrix (NaN where undefined)."""
    tp = np.diag(matrix).astype(float)
    fn = matrix.sum(1) - tp
    fp = matrix.sum(0) - tp
    tn = matrix.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def balanced_accuracy(true: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Mean sensitivity over the classes that occur in `true`."""
    sensitivity, _ = sensitivity_specificity(confusion_matrix(true, predicted, k))
    return float(np.nanmean(sensitivity))


def bootstrap_interval(metric: Callable[[np.ndarray], float], n: int,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                       ) -> tuple[float, float] | None:
    """Percentile 95 % interval of metric(indices) over resampled case indices; None if every
    resample was undefined (NaN)."""
    rng = np.random.default_rng(seed)
    values = [metric(rng.integers(0, n, n)) for _ in range(resamples)]
    values = np.array([v for v in values if not np.isnan(v)])
    if not len(values):
        return None
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def classification_summary(true: dict[str, int], probs: dict[str, np.ndarray],
                           names: Sequence[str]) -> dict:
    """Scores of the cases in `probs` (each must have a true class) as summary.json's block."""
    cases = sorted(probs)
    t = np.array([true[c] for c in cases])
    p = np.stack([probs[c] for c in cases])
    k = len(names)
    predicted = p.argmax(1)
    matrix = confusion_matrix(t, predicted, k)
    sensitivity, specificity = sensitivity_specificity(matrix)
    auc_ci = bootstrap_interval(lambda idx: roc_auc(t[idx], p[idx]), len(cases))
    bacc_ci = bootstrap_interval(lambda idx: balanced_accuracy(t[idx], predicted[idx], k), len(cases))
    return {
        "classes": list(names),
        "num_cases": len(cases),
        "accuracy": float((predicted == t).mean()),
        "balanced_accuracy": balanced_accuracy(t, predicted, k),
        "balanced_accuracy_ci95": bacc_ci,
        "auc": json_ready(roc_auc(t, p)),
        "auc_ci95": auc_ci,
        "per_class": {name: {"sensitivity": json_ready(sensitivity[i]),
                             "specificity": json_ready(specificity[i])} for i, name in enumerate(names)},
        "confusion_matrix": matrix.tolist(),
        "per_case": {c: {"true": names[t[i]], "predicted": names[predicted[i]],
                         "probabilities": [float(x) for x in p[i]]} for i, c in enumerate(cases)},
    }


def score_class_rows(work: Path, plans: Plans, folder: Path, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write folder/classification.csv for `rows` ({case: (K,) probabilities}) and score them
    against WORK/classes.csv: the `classification` block of folder/summary.json."""
    write_classification(folder, rows, plans.case_classes)
    scores = classification_summary(read_work_classes(work, plans).of_case, rows, plans.case_classes)
    log.info("%s: classification AUC %s, balanced accuracy %.3f on %d cases", Path(folder).name,
             "n/a" if scores["auc"] is None else f"{scores['auc']:.3f}", scores["balanced_accuracy"],
             scores["num_cases"])
    return scores


def score_prediction_folder(pred_dir: Path, dataset_json: Path | None) -> dict | None:
    """`evaluate`'s classification block: PRED_DIR/classification.csv against the classes of
    `dataset_json` (its `classes` + the classes.csv beside it); None when either is absent."""
    predicted = Path(pred_dir) / CLASSIFICATION_FILE
    if dataset_json is None or not predicted.is_file():
        return None
    meta = read_json_checked(dataset_json)
    if not isinstance(meta, dict) or CLASSES_KEY not in meta:
        return None
    names = parse_class_names(Path(dataset_json), meta[CLASSES_KEY])
    true = read_classes_csv(Path(dataset_json).parent / CLASSES_FILE, names)
    probs = read_classification(predicted, names)
    unknown = sorted(set(probs) - set(true))
    if unknown:
        raise UserError(predicted, f"case '{unknown[0]}' has no class in "
                        f"{Path(dataset_json).parent / CLASSES_FILE}")
    return classification_summary(true, probs, names)
