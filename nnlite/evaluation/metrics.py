"""Overlap metrics of label maps: Dice, IoU, PPV (and TP/FP/FN) per case and scored class, and their means.

What is scored is one list of `ScoredClass` (nnU-Net's `labels_or_regions`, `Plans.scored`): a plain
label is the one-label set {label}, keyed by its value; a region is the union of its labels, keyed
by its name. Every count, check and mean below runs the same code for both.

Everything is computed from per-case confusion counts (TP, FP, FN per class), so post-processing can
score candidate label maps without writing them. The layout of `summary.json` (docs/cli.md,
"evaluate"):

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
from typing import Mapping, Sequence

import numpy as np

from nnlite.common.layout import MAP_SUFFIXES, PLANS_FILE
from nnlite.common.errors import UserError
from nnlite.common.files import json_ready, write_json_atomic
from nnlite.data.dataset import AFFINE_ATOL
from nnlite.data.image_io import file_ending, read_image
from nnlite.data.regions import in_region
from nnlite.common.labels import ScoredClass, label_classes
from nnlite.plans import RAW_PATH_KEY, Plans

log = logging.getLogger(__name__)

MEAN_METRICS = ("dice", "iou", "ppv")  # averaged over cases; tp/fp/fn stay per case


@dataclass(frozen=True)
class Counts:
    """Confusion counts of one scored class in one case."""

    tp: int
    fp: int
    fn: int


def scored_labels(scored: Sequence[ScoredClass]) -> list[int]:
    """Every label value some scored class is made of, sorted."""
    return sorted({label for cls in scored for label in cls.labels})


def are_regions(scored: Sequence[ScoredClass]) -> bool:
    """Regions are keyed by their names, plain labels by their values."""
    return any(isinstance(cls.key, str) for cls in scored)


def confusion_counts(pred: np.ndarray, ref: np.ndarray, scored: Sequence[ScoredClass],
                     ignore_label: int | None = None) -> dict[int | str, Counts]:
    """TP/FP/FN per scored class (keyed by its key) of two integer label maps of the same shape: a
    class's mask is the union of its labels on each side; reference voxels with `ignore_label` are
    left out."""
    annotated = None if ignore_label is None else ref != ignore_label
    counts = {}
    for cls in scored:
        in_pred = in_region(pred, cls.labels)
        if annotated is not None:
            in_pred &= annotated  # predicting an unannotated voxel is no false positive
        in_ref = in_region(ref, cls.labels)
        tp = int(np.count_nonzero(in_pred & in_ref))
        counts[cls.key] = Counts(tp, int(np.count_nonzero(in_pred)) - tp, int(np.count_nonzero(in_ref)) - tp)
    return counts


def checked_counts(case: str, pred: np.ndarray, ref: np.ndarray, scored: Sequence[ScoredClass],
                   ignore_label: int | None = None) -> dict[int | str, Counts]:
    """`confusion_counts` of one case after checking that every predicted value is scored."""
    check_predicted_values(case, set(np.unique(pred).tolist()), scored)
    return confusion_counts(pred, ref, scored, ignore_label)


def check_predicted_values(case: str, predicted: set[int], scored: Sequence[ScoredClass],
                           source: str | None = None) -> None:
    """Every predicted value is background or a label of some scored class."""
    labels = scored_labels(scored)
    unknown = sorted(predicted - {0, *labels})
    if unknown:
        source = source or ("the regions' labels" if are_regions(scored) else "the labels scored")
        raise UserError(case, f"the prediction holds label {unknown[0]}, which is not among {source} "
                        f"({', '.join(map(str, labels)) or 'none'})")


def metrics_from_counts(counts: Counts) -> dict[str, float | int]:
    """Dice, IoU, PPV (NaN by the empty rules above) plus the raw counts."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    union = tp + fp + fn
    return {"dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
            "iou": tp / union if union else math.nan,
            "ppv": tp / (tp + fp) if tp + fp else math.nan,
            "tp": tp, "fp": fp, "fn": fn}


def summarize(case_counts: dict[str, dict], labels: Sequence[int | str]) -> dict:
    """Build the summary.json dict from per-case counts (cases in the given order); `labels` are
    the keys of the scored classes (label values, or region names)."""
    per_case = []
    for case, counts in case_counts.items():
        metrics = {str(label): metrics_from_counts(counts.get(label, Counts(0, 0, 0))) for label in labels}
        per_case.append({"case": case, "metrics": metrics})
    mean, foreground = average_cases([entry["metrics"] for entry in per_case], [str(label) for label in labels],
                                     MEAN_METRICS)
    return {"labels": [label if isinstance(label, str) else int(label) for label in labels], "mean": mean,
            "foreground_mean": foreground, "per_case": per_case}


def average_cases(per_case: list[dict[str, dict]], keys: Sequence[str], metrics: Sequence[str]) -> tuple[dict, dict]:
    """Per key, each metric's mean over the cases that define it (NaN skipped); and per metric the
    plain mean of those over the keys (NaN when one key's mean is NaN, as in the reference)."""
    mean = {key: {metric: _nanmean([case[key][metric] for case in per_case]) for metric in metrics}
            for key in keys}
    foreground = {metric: float(np.mean([mean[key][metric] for key in keys])) if keys else math.nan
                  for metric in metrics}
    return mean, foreground


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


def list_segs(folder: str | Path) -> dict[str, Path]:
    """Case → label-map file of a folder, sorted by case (`case.nii.gz`, `case.mha`, …: image_io's endings)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(folder, "folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ending = file_ending(path)
        if ending and path.is_file():
            name = path.name[: -len(ending)]
            if name.endswith(MAP_SUFFIXES):  # predict --uncertainty's maps beside the label maps
                continue
            if name in found:
                raise UserError(folder, f"case '{name}' has two files ({found[name].name}, {path.name}); keep one")
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


@dataclass(frozen=True)
class CaseScore:
    """One scored case: its two files, TP/FP/FN per scored class and its annotated voxel count."""

    pred: Path
    ref: Path
    counts: dict[int | str, Counts]
    annotated: int  # reference voxels that are not the ignore label (nnU-Net's TN needs them)


def score_folder(pred_dir: str | Path, ref_dir: str | Path, scored: Sequence[ScoredClass] | None = None,
                 ignore_label: int | None = None) -> tuple[tuple[ScoredClass, ...], dict[str, CaseScore]]:
    """Count every `<case>.nii.gz` of pred_dir against ref_dir, each pair read once; returns the
    classes scored and each case's score.

    scored: the classes to score; default one per nonzero value found in the reference files.
    ignore_label: reference voxels with this value are unannotated and count nowhere.
    A predicted value that no scored class holds is a UserError naming the case.
    """
    not_scored = {0, ignore_label}
    cases: dict[str, CaseScore] = {}
    predicted: dict[str, set[int]] = {}
    found: set[int] = set()
    for case, pred_path, ref_path in matched_cases(pred_dir, ref_dir):
        pred, ref = read_pair(case, pred_path, ref_path)
        if scored is not None:
            counts = checked_counts(case, pred, ref, scored, ignore_label)
        else:  # the references decide once every case is read: meanwhile count what this case holds
            predicted[case], present = set(np.unique(pred).tolist()), set(np.unique(ref).tolist())
            found |= present
            counts = confusion_counts(pred, ref, label_classes((present | predicted[case]) - not_scored), ignore_label)
        cases[case] = CaseScore(pred_path, ref_path, counts, annotated_voxels(ref, ignore_label))
    if scored is None:
        scored = label_classes(sorted(found - not_scored))
        for case, values in predicted.items():
            check_predicted_values(case, values, scored, "the references")
    return tuple(scored), cases


def annotated_voxels(ref: np.ndarray, ignore_label: int | None) -> int:
    """Voxels of the reference that are scored: all of them, or all but the ignore label's."""
    return int(ref.size - (0 if ignore_label is None else np.count_nonzero(ref == ignore_label)))


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, scored: Sequence[ScoredClass] | None = None,
                    ignore_label: int | None = None) -> dict:
    """Score every prediction of pred_dir against ref_dir (`score_folder`); returns the summary.json
    dict, keyed by the scored classes' keys (label values, or region names)."""
    scored, cases = score_folder(pred_dir, ref_dir, scored, ignore_label)
    return summarize({case: score.counts for case, score in cases.items()}, [cls.key for cls in scored])


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


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write a summary (or any scores) atomically as strict JSON: NaN as null."""
    return write_json_atomic(path, json_ready(summary))


def format_table(summary: dict, names: Mapping[int, str] | None = None) -> str:
    """A short text table: mean Dice/IoU/PPV per label (named by `names`, dataset.json's) and the
    foreground mean."""
    mean = {display_name(label, names or {}): summary["mean"][str(label)] for label in summary["labels"]}
    width = max([10, *(len(row) for row in mean)])
    return format_means(mean, summary["foreground_mean"], MEAN_METRICS, len(summary["per_case"]), width)


def display_name(key: int | str, names: Mapping[int, str]) -> str:
    """A scored class as printed: a region's name; a plain label as `<name> (<value>)` when
    dataset.json names it, else its value."""
    return f"{names[key]} ({key})" if isinstance(key, int) and key in names else str(key)


def format_means(mean: dict[str, dict], foreground: dict, metrics: Sequence[str], cases: int,
                 width: int = 10) -> str:
    """A text table: one row of `metrics` per key of `mean`, then the foreground row."""
    lines = [f"{'label':>{width}} " + " ".join(f"{metric:>8}" for metric in metrics)]
    for name, values in [*mean.items(), ("foreground", foreground)]:
        lines.append(f"{name:>{width}} " + " ".join(_fmt(values[metric]) for metric in metrics))
    lines.append(f"{cases} cases")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'nan':>8}" if value is None or math.isnan(value) else f"{value:8.4f}"
