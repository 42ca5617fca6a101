"""Overlap metrics of label maps: Dice, IoU, PPV (and TP/FP/FN) per case and label, and their means.

Everything is computed from per-case confusion counts (TP, FP, FN per label), so post-processing can
score candidate label maps without writing them. The layout of `summary.json` is fixed by
docs/contract.md:

    {"labels": [1, 2],
     "mean": {"1": {"dice", "iou", "ppv"}, ...},
     "foreground_mean": {"dice", "iou", "ppv"},
     "per_case": [{"case": name, "metrics": {"1": {"dice", "iou", "ppv", "tp", "fp", "fn"}, ...}}]}

Empty rules (as the reference, evaluation/evaluate_predictions.py): reference and prediction both
empty → Dice and IoU are NaN (`null` in JSON) and left out of the label's mean; only the reference
empty → Dice 0; nothing predicted → PPV NaN. `foreground_mean` is the plain mean over labels of
`mean[label]` (so it is NaN when a label's mean is NaN, as in the reference). With an ignore label,
voxels the reference marks with it (unannotated) count nowhere, whatever was predicted there.

Strict inputs: a label map holds integers (float storage is fine, 0.5 is not); a predicted value
that is neither background nor a scored label is an error naming the case and the value; a case
with two label maps (`<case>.nii` and `<case>.nii.gz`, say) is ambiguous; a prediction whose affine (spacing,
origin, direction) differs from its reference's is scored with a warning naming the case.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnlite.common.layout import PLANS_FILE
from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.data.dataset import AFFINE_ATOL
from nnlite.data.image_io import file_ending, read_image
from nnlite.data.regions import in_region
from nnlite.plans import RAW_PATH_KEY, Plans, Region

log = logging.getLogger(__name__)

MEAN_METRICS = ("dice", "iou", "ppv")  # averaged over cases; tp/fp/fn stay per case


@dataclass(frozen=True)
class Counts:
    """Confusion counts of one label in one case."""

    tp: int
    fp: int
    fn: int


def label_counts(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int],
                 ignore_label: int | None = None) -> dict[int, Counts]:
    """TP/FP/FN per label of two integer label maps of the same shape; reference voxels with
    `ignore_label` are left out."""
    annotated = None if ignore_label is None else ref != ignore_label
    counts = {}
    for label in labels:
        in_pred = pred == label
        if annotated is not None:
            in_pred &= annotated
        in_ref = ref == label
        tp = int(np.count_nonzero(in_pred & in_ref))
        counts[int(label)] = Counts(tp, int(np.count_nonzero(in_pred)) - tp,
                                    int(np.count_nonzero(in_ref)) - tp)
    return counts


def region_counts(pred: np.ndarray, ref: np.ndarray, regions: Sequence[Region],
                  ignore_label: int | None = None) -> dict[str, Counts]:
    """TP/FP/FN per region (keyed by its name) of two integer label maps: a region's mask is the
    union of its labels on each side; reference voxels with `ignore_label` are left out."""
    annotated = None if ignore_label is None else ref != ignore_label
    counts = {}
    for region in regions:
        in_pred = in_region(pred, region.labels)
        if annotated is not None:
            in_pred &= annotated
        in_ref = in_region(ref, region.labels)
        tp = int(np.count_nonzero(in_pred & in_ref))
        counts[region.name] = Counts(tp, int(np.count_nonzero(in_pred)) - tp,
                                     int(np.count_nonzero(in_ref)) - tp)
    return counts


def metrics_from_counts(counts: Counts) -> dict[str, float | int]:
    """Dice, IoU, PPV (NaN by the empty rules above) plus the raw counts."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    union = tp + fp + fn
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
        "iou": tp / union if union else math.nan,
        "ppv": tp / (tp + fp) if tp + fp else math.nan,
        "tp": tp, "fp": fp, "fn": fn,
    }


def summarize(case_counts: dict[str, dict], labels: Sequence[int | str]) -> dict:
    """Build the summary.json dict from per-case counts (cases in the given order); `labels` are
    label values, or region names for a region dataset."""
    per_case = []
    for case, counts in case_counts.items():
        metrics = {str(label): metrics_from_counts(counts.get(label, Counts(0, 0, 0)))
                   for label in labels}
        per_case.append({"case": case, "metrics": metrics})
    mean = {}
    for label in labels:
        mean[str(label)] = {
            metric: _nanmean([entry["metrics"][str(label)][metric] for entry in per_case])
            for metric in MEAN_METRICS
        }
    foreground = {
        metric: (float(np.mean([mean[str(label)][metric] for label in labels])) if labels
                 else math.nan)
        for metric in MEAN_METRICS
    }
    return {"labels": [label if isinstance(label, str) else int(label) for label in labels], "mean": mean,
            "foreground_mean": foreground, "per_case": per_case}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map of any supported format as an int (Z, Y, X) array and its RAS affine (both
    sides of a comparison are read alike); non-integers are refused."""
    try:
        image = read_image(path)
    except UserError:
        raise
    except Exception as error:  # the readers raise many types for damaged files
        raise UserError(path, f"unreadable label map ({type(error).__name__}: {error})") from None
    voxels = image.array
    fractional = voxels[voxels != np.round(voxels)]
    if fractional.size:
        raise UserError(path, f"holds non-integer values (e.g. {float(fractional.flat[0]):g}): not a "
                        "label map")
    return voxels.astype(np.int64), np.asarray(image.affine)


def read_seg(path: Path) -> np.ndarray:
    """A label map as an int array in NIfTI voxel order (both sides of a comparison use the same)."""
    return read_label_map(path)[0]


def case_name(path: Path) -> str | None:
    """`case` for `case.nii.gz`, `case.mha`, … (any ending of data/image_io's table); None for
    other files."""
    ending = file_ending(path)
    return path.name[: -len(ending)] if ending else None


def list_segs(folder: str | Path) -> dict[str, Path]:
    """Case name → label-map file of a folder (sorted by case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(folder, "folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path)
        if name is not None and path.is_file():
            if name in found:
                raise UserError(folder, f"case '{name}' has two files ({found[name].name}, {path.name}); "
                                "keep one")
            found[name] = path
    return found


def matched_cases(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction, reference) for every prediction of pred_dir; see `match_cases`."""
    return match_cases(list_segs(pred_dir), list_segs(ref_dir), pred_dir, ref_dir)


def match_cases(preds: dict[str, Path], refs: dict[str, Path], pred_where: str | Path,
                ref_where: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair predictions with references; a prediction without reference is an error.

    References without a prediction are left out (as the reference's `chill` mode), so a fold's
    validation folder can be scored against the whole labelsTr.
    """
    if not preds:
        raise UserError(pred_where, "holds no predictions (<case>.nii.gz)")
    missing = [case for case in preds if case not in refs]
    if missing:
        raise UserError(missing[0], f"has a prediction in {pred_where} but no reference in {ref_where}")
    if len(refs) > len(preds):
        log.info("evaluating %d of %d reference cases (the predicted ones)", len(preds), len(refs))
    return [(case, preds[case], refs[case]) for case in preds]


def read_pair(case: str, pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference of a case: same shape, else an error; another affine warns."""
    (pred, pred_affine), (ref, ref_affine) = read_label_map(pred_path), read_label_map(ref_path)
    if pred.shape != ref.shape:
        raise UserError(case, f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if not np.allclose(pred_affine, ref_affine, atol=AFFINE_ATOL):
        log.warning("warning: %s: the prediction's affine (spacing, origin or direction) differs from "
                    "the reference's; scored voxel by voxel", case)
    return pred, ref


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, labels: Sequence[int] | None = None,
                    ignore_label: int | None = None) -> dict:
    """Score every `<case>.nii.gz` of pred_dir against ref_dir; returns the summary.json dict.

    labels: the labels to score; default every nonzero value found in the reference files.
    ignore_label: reference voxels with this value are unannotated and count nowhere.
    A predicted value outside background and the labels is a UserError naming the case.
    """
    not_scored = {0, ignore_label}
    values: dict[str, dict[int, Counts]] = {}
    predicted: dict[str, set[int]] = {}
    found: set[int] = set()
    for case, pred_path, ref_path in matched_cases(pred_dir, ref_dir):
        pred, ref = read_pair(case, pred_path, ref_path)
        present = set(np.unique(ref).tolist())
        found |= present
        predicted[case] = set(np.unique(pred).tolist())
        if labels is not None:
            check_predicted_values(case, predicted[case], labels)
        wanted = labels if labels is not None else present | predicted[case]
        values[case] = label_counts(pred, ref, [v for v in wanted if v not in not_scored], ignore_label)
    if labels is None:
        labels = sorted(v for v in found if v not in not_scored)
        for case, values_of_case in predicted.items():
            check_predicted_values(case, values_of_case, labels, "the references")
    return summarize(values, list(labels))


def evaluate_regions(pred_dir: str | Path, ref_dir: str | Path, regions: Sequence[Region],
                     ignore_label: int | None = None) -> dict:
    """Score every prediction of pred_dir per region (summary keys: the region names); a predicted
    value that is in no region is a UserError naming the case."""
    counts = {case: checked_region_counts(case, *read_pair(case, pred_path, ref_path), regions, ignore_label)
              for case, pred_path, ref_path in matched_cases(pred_dir, ref_dir)}
    return summarize(counts, [region.name for region in regions])


def checked_region_counts(case: str, pred: np.ndarray, ref: np.ndarray, regions: Sequence[Region],
                          ignore_label: int | None = None) -> dict[str, Counts]:
    """`region_counts` of one case after checking every predicted value lies in some region."""
    values = sorted({v for region in regions for v in region.labels})
    check_predicted_values(case, set(np.unique(pred).tolist()), values, "the regions' labels")
    return region_counts(pred, ref, regions, ignore_label)


def check_predicted_values(case: str, predicted: set[int], labels: Sequence[int],
                           source: str = "the labels scored") -> None:
    """Every predicted value is background or one of `labels`."""
    unknown = sorted(predicted - {0, *labels})
    if unknown:
        raise UserError(case, f"the prediction holds label {unknown[0]}, which is not among {source} "
                        f"({', '.join(map(str, labels)) or 'none'})")


def reference_labels(plans: Plans) -> Path:
    """labelsTr of the raw dataset the plans were made from (plans.extra["raw_path"])."""
    raw = plans.extra.get(RAW_PATH_KEY)
    if not raw:
        raise UserError(PLANS_FILE, f"extra.{RAW_PATH_KEY} is missing: no reference labels to score "
                        "against (re-run nnlite.plan)")
    folder = Path(raw) / "labelsTr"
    if not folder.is_dir():
        raise UserError(folder, "reference labels not found")
    return folder


def evaluate_for_plans(pred_dir: str | Path, plans: Plans) -> dict:
    """Score pred_dir against the plans' raw labels: the foreground labels (or regions), annotated
    voxels only."""
    if plans.regions:
        return evaluate_regions(pred_dir, reference_labels(plans), plans.regions, plans.ignore_label)
    return evaluate_folder(pred_dir, reference_labels(plans), plans.foreground_labels, plans.ignore_label)


def json_ready(value):
    """NaN → None (JSON null), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    return value


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write summary.json atomically with NaN as null (strict JSON)."""
    return write_json_atomic(path, json_ready(summary))


def format_table(summary: dict) -> str:
    """A short text table: mean Dice/IoU/PPV per label and the foreground mean."""
    width = max([10, *(len(str(label)) for label in summary["labels"])])
    lines = [f"{'label':>{width}} {'dice':>8} {'iou':>8} {'ppv':>8}"]
    rows = [(label, summary["mean"][label]) for label in map(str, summary["labels"])]
    rows.append(("foreground", summary["foreground_mean"]))
    for name, values in rows:
        lines.append(f"{name:>{width}} " + " ".join(_fmt(values[m]) for m in MEAN_METRICS))
    lines.append(f"{len(summary['per_case'])} cases")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'nan':>8}" if value is None or math.isnan(value) else f"{value:8.4f}"
