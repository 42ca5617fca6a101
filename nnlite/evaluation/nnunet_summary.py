"""summary.json in nnU-Net v2's layout (`evaluate --format nnunet`), so scripts written for nnU-Net keep working.

    {"foreground_mean": {"Dice": …, "IoU": …, "PPV": …, "FN": …, "FP": …, "TN": …, "TP": …, "n_pred": …, "n_ref": …},
     "mean": {"1": {same keys}, "2": {…}},
     "metric_per_case": [{"metrics": {"1": {…}, …}, "prediction_file": "…", "reference_file": "…"}]}

As in nnU-Net (evaluation/evaluate_predictions.py): per case and label TP, FP, FN and TN count
annotated voxels (reference voxels with the ignore label count nowhere), n_pred = TP + FP,
n_ref = TP + FN; Dice and IoU are NaN (null) when the label is absent from both; `mean` is the
NaN-skipping mean over cases, `foreground_mean` the plain mean over the labels' means (NaN if one
is NaN). PPV = TP / (TP + FP) is nnlite's addition (NaN when nothing is predicted). The counts,
checks and formulas are nnlite's own (`metrics.score_folder`); this module only names and arranges them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnlite.evaluation.metrics import Counts, average_cases, format_means, metrics_from_counts, score_folder
from nnlite.common.labels import ScoredClass

NNUNET_METRICS = ("Dice", "IoU", "PPV", "FN", "FP", "TN", "TP", "n_pred", "n_ref")


def case_metrics(counts: Counts, annotated: int) -> dict[str, float | int]:
    """nnU-Net's metric dict of one case and class: nnlite's metrics under nnU-Net's names, plus
    TN (annotated voxels in neither mask) and the mask sizes."""
    metrics = metrics_from_counts(counts)
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    return {"Dice": metrics["dice"], "IoU": metrics["iou"], "PPV": metrics["ppv"],
            "FN": fn, "FP": fp, "TN": annotated - (tp + fp + fn), "TP": tp, "n_pred": tp + fp, "n_ref": tp + fn}


def evaluate_folder_nnunet(pred_dir: str | Path, ref_dir: str | Path, scored: Sequence[ScoredClass] | None = None,
                           ignore_label: int | None = None) -> dict:
    """Score pred_dir against ref_dir (the counts and checks of nnlite's evaluate) into nnU-Net's
    layout; each class is keyed as nnU-Net keys it (`nnunet_key`)."""
    scored, cases = score_folder(pred_dir, ref_dir, scored, ignore_label)
    per_case = []
    for score in cases.values():
        metrics = {nnunet_key(cls): case_metrics(score.counts.get(cls.key, Counts(0, 0, 0)), score.annotated)
                   for cls in scored}
        per_case.append({"metrics": metrics, "prediction_file": str(score.pred), "reference_file": str(score.ref)})
    mean, foreground = average_cases([case["metrics"] for case in per_case], [nnunet_key(cls) for cls in scored],
                                     NNUNET_METRICS)
    return {"foreground_mean": foreground, "mean": mean, "metric_per_case": per_case}


def nnunet_key(cls: ScoredClass) -> str:
    """nnU-Net's summary key of a class (`label_or_region_to_key`: str() of it): a plain label "3"; a
    region its label tuple, "(1, 2, 3)" or "(3,)", or "3" when dataset.json writes it as a bare 3."""
    return cls.nnunet_key or str(cls.key)


def format_nnunet_table(summary: dict) -> str:
    """Mean Dice/IoU/PPV per label and the foreground mean, from the nnU-Net layout."""
    return format_means(summary["mean"], summary["foreground_mean"], ("Dice", "IoU", "PPV"),
                        len(summary["metric_per_case"]))
