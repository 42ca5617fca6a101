"""summary.json in nnU-Net v2's layout (`evaluate --format nnunet`), so scripts written for nnU-Net keep working.

    {"foreground_mean": {"Dice": …, "IoU": …, "PPV": …, "FN": …, "FP": …, "TN": …, "TP": …, "n_pred": …, "n_ref": …},
     "mean": {"1": {same keys}, "2": {…}},
     "metric_per_case": [{"metrics": {"1": {…}, …}, "prediction_file": "…", "reference_file": "…"}]}

As in nnU-Net (evaluation/evaluate_predictions.py): per case and label TP, FP, FN and TN count
annotated voxels (reference voxels with the ignore label count nowhere), n_pred = TP + FP,
n_ref = TP + FN; Dice and IoU are NaN (null) when the label is absent from both; `mean` is the
NaN-skipping mean over cases, `foreground_mean` the plain mean over the labels' means (NaN if one
is NaN). PPV = TP / (TP + FP) is nnlite's addition (NaN when nothing is predicted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.evaluation.metrics import evaluate_folder, evaluate_regions, matched_cases, read_seg
from nnlite.plans import Region

NNUNET_METRICS = ("Dice", "IoU", "PPV", "FN", "FP", "TN", "TP", "n_pred", "n_ref")


def annotated_voxels(ref_path: Path, ignore_label: int | None) -> int:
    """Voxels of the reference that are scored: all of them, or all but the ignore label's."""
    ref = read_seg(ref_path)
    return int(ref.size - (0 if ignore_label is None else np.count_nonzero(ref == ignore_label)))


def case_metrics(counts: dict, n_voxels: int) -> dict[str, float | int]:
    """nnU-Net's metric dict of one case and label from nnlite's per-case metrics (tp, fp, fn)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    union = tp + fp + fn
    return {"Dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
            "IoU": tp / union if union else math.nan,
            "PPV": tp / (tp + fp) if tp + fp else math.nan,
            "FN": fn, "FP": fp, "TN": n_voxels - union, "TP": tp, "n_pred": tp + fp, "n_ref": tp + fn}


def evaluate_folder_nnunet(pred_dir: str | Path, ref_dir: str | Path, labels: Sequence[int] | None = None,
                           ignore_label: int | None = None, regions: Sequence[Region] = ()) -> dict:
    """Score pred_dir against ref_dir (same checks as nnlite's evaluate) into nnU-Net's layout;
    regions are keyed as nnU-Net keys them ("(1, 2, 3)", or "3" for a one-label region)."""
    if regions:
        summary = evaluate_regions(pred_dir, ref_dir, regions, ignore_label)
        summary = _keyed_like_nnunet(summary, {r.name: region_key(r) for r in regions})
    else:
        summary = evaluate_folder(pred_dir, ref_dir, labels, ignore_label)
    files = {case: (pred, ref) for case, pred, ref in matched_cases(pred_dir, ref_dir)}
    per_case = []
    for entry in summary["per_case"]:
        pred_path, ref_path = files[entry["case"]]
        n_voxels = annotated_voxels(ref_path, ignore_label)
        metrics = {label: case_metrics(counts, n_voxels) for label, counts in entry["metrics"].items()}
        per_case.append({"metrics": metrics, "prediction_file": str(pred_path), "reference_file": str(ref_path)})
    keys = [str(label) for label in summary["labels"]]
    mean = {key: {metric: _nanmean([case["metrics"][key][metric] for case in per_case])
                  for metric in NNUNET_METRICS} for key in keys}
    foreground = {metric: float(np.mean([mean[key][metric] for key in keys])) if keys else math.nan
                  for metric in NNUNET_METRICS}
    return {"foreground_mean": foreground, "mean": mean, "metric_per_case": per_case}


def region_key(region: Region) -> str:
    """nnU-Net's summary key of a region: str() of its label tuple, or of its one label."""
    return str(region.labels[0]) if len(region.labels) == 1 else str(tuple(region.labels))


def _keyed_like_nnunet(summary: dict, keys: dict[str, str]) -> dict:
    """nnlite's region summary with the region names replaced by nnU-Net's keys."""
    per_case = [{**entry, "metrics": {keys[name]: counts for name, counts in entry["metrics"].items()}}
                for entry in summary["per_case"]]
    return {**summary, "labels": [keys[name] for name in summary["labels"]], "per_case": per_case}


def _nanmean(values: list[float]) -> float:
    kept = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def format_nnunet_table(summary: dict) -> str:
    """Mean Dice/IoU/PPV per label and the foreground mean, from the nnU-Net layout."""
    lines = [f"{'label':>10} {'Dice':>8} {'IoU':>8} {'PPV':>8}"]
    rows = [*summary["mean"].items(), ("foreground", summary["foreground_mean"])]
    for name, values in rows:
        lines.append(f"{name:>10} " + " ".join(_fmt(values[m]) for m in ("Dice", "IoU", "PPV")))
    lines.append(f"{len(summary['metric_per_case'])} cases")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{'nan':>8}" if value is None or math.isnan(value) else f"{value:8.4f}"
