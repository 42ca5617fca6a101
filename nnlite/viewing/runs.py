"""What the Results page shows, read from WORK: scored validations, curves, per-case tables, cases.

A *source* is one folder of scored validation predictions: a trained fold's `validation/`, a
configuration's cross-validation `crossval/`, or the winner of `results/best.json`. Cases are
ranked by their mean foreground Dice (the mean over labels of each label's Dice, NaN labels left
out), worst first; a case whose every label is NaN (nothing to find and nothing predicted) is
perfect and goes last. When the validation scored each case's uncertainty (summary.json
`per_case[i].uncertainty.score`, docs/uncertainty.md) the table has a `quality score` column and
can be ordered by it instead, least trustworthy (highest score) first (`sort_rows`). Images and
reference labels come from the raw dataset recorded in plans.json (`extra.raw_path`), read-only;
predictions and uncertainty maps (`<case>_uncertainty.nii.gz`, in the source folder or its
`uncertainty/`) from the source folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnlite.common.layout import (CROSSVAL_DIR, SUMMARY_FILE, UNCERTAINTY_DIR, UNCERTAINTY_SUFFIX, VALIDATION_DIR,
                                  best_file, crossval_folder, fold_folders_of, plans_file, results_root)
from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.data.dataset import load_dataset
from nnlite.data.image_io import read_case, read_image
from nnlite.plans import RAW_PATH_KEY, Plans, load_plans
from nnlite.training.progress import METRICS_FILE, read_metrics
from nnlite.viewing.uploads import confined

CROSSVAL = CROSSVAL_DIR  # the "fold" of a configuration's merged cross-validation
BEST = "best"
CURVES = ("train_loss", "val_loss", "mean_pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time")
TABLE_METRICS = ("dice", "iou", "ppv")
SCORE_COLUMN = "quality score"  # the case's uncertainty score (higher = less trustworthy)
BY_DICE, BY_SCORE = "mean Dice, worst first", "quality score, least trustworthy first"


@dataclass(frozen=True)
class Source:
    """One folder of scored validation predictions (`<case>.nii.gz` + summary.json)."""

    config: str  # a configuration, or an ensemble's name for best.json's ensemble winner
    fold: str  # "0", "1", …, "all", CROSSVAL or BEST
    folder: Path
    training: Path | None = None  # the fold folder with metrics.jsonl (folds only)

    @property
    def label(self) -> str:
        if self.fold == BEST:
            return f"best ({self.config})"
        return f"{self.config} · {'cross-validation' if self.fold == CROSSVAL else 'fold ' + self.fold}"


@dataclass
class CaseVolumes:
    """A validation case for the viewer: data (C, Z, Y, X), spacing (z, y, x), label maps (Z, Y, X)."""

    data: np.ndarray
    spacing: tuple[float, ...]
    ref: np.ndarray | None
    pred: np.ndarray
    uncertainty: np.ndarray | None = None  # (Z, Y, X) in [0, 1]: the normalised entropy map, when written


def find_sources(work: Path) -> list[Source]:
    """Every scored validation under WORK/results: best first, then per configuration its folds
    (in number order) and its cross-validation."""
    sources = [s for s in [best_source(work)] if s is not None]
    for config_dir in sorted(p for p in results_root(work).glob("*") if p.is_dir()):
        for fold, folder in fold_folders_of(work, config_dir.name):
            if (folder / VALIDATION_DIR / SUMMARY_FILE).is_file():
                sources.append(Source(config_dir.name, fold, folder / VALIDATION_DIR, folder))
        if (crossval_folder(work, config_dir.name) / SUMMARY_FILE).is_file():
            sources.append(Source(config_dir.name, CROSSVAL, crossval_folder(work, config_dir.name)))
    return sources


def best_source(work: Path) -> Source | None:
    """best.json's winner as a source (its cross-validation folder), when it is there."""
    path = best_file(Path(work))
    if not path.is_file():
        return None
    winner = read_json(path).get("winner", {})
    folder = Path(str(winner.get("crossval", "")))
    if not (folder / SUMMARY_FILE).is_file():
        return None
    return Source(str(winner.get("name", "+".join(winner.get("configurations", [])))), BEST, folder)


def most_recent(sources: list[Source]) -> Source | None:
    """The trained fold whose validation was scored last (what the page opens on)."""
    folds = [s for s in sources if s.training is not None]
    if not folds:
        return sources[0] if sources else None
    return max(folds, key=lambda s: (s.folder / SUMMARY_FILE).stat().st_mtime)


def read_curves(source: Source) -> dict[str, list[float]]:
    """The progress curves of a fold from metrics.jsonl: `epoch` (1-based) and every name of
    CURVES (null → NaN); empty for sources without training."""
    if source.training is None or not (source.training / METRICS_FILE).is_file():
        return {}
    records = read_metrics(source.training)
    curves = {"epoch": [float(r["epoch"] + 1) for r in records]}
    for name in CURVES:
        curves[name] = [math.nan if r.get(name) is None else float(r[name]) for r in records]
    return curves


def case_mean_dice(entry: dict[str, Any]) -> float:
    """Mean over labels of a per_case entry's Dice, NaN labels left out (NaN when all are)."""
    values = [m["dice"] for m in entry["metrics"].values() if m.get("dice") is not None and not math.isnan(m["dice"])]
    return sum(values) / len(values) if values else math.nan


def case_table(summary: dict[str, Any], label_names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per case, worst mean foreground Dice first: case, (fold), mean Dice, then Dice,
    IoU and PPV per label (columns named `dice <label>`), then the true and predicted case class
    when the summary has a classification block (a network with a classification head)."""
    names = label_names or {}
    classes = summary.get("classification", {}).get("per_case", {})
    rows = []
    for entry in summary["per_case"]:
        row: dict[str, Any] = {"case": entry["case"]}
        if "folds" in summary:
            row["fold"] = str(summary["folds"].get(entry["case"], ""))
        row["mean dice"] = case_mean_dice(entry)
        if "score" in entry.get("uncertainty", {}):
            row[SCORE_COLUMN] = math.nan if entry["uncertainty"]["score"] is None else float(entry["uncertainty"]["score"])
        for label, values in entry["metrics"].items():
            for metric in TABLE_METRICS:
                value = values.get(metric)
                row[f"{metric} {names.get(label, label)}"] = math.nan if value is None else float(value)
        if entry["case"] in classes:
            row["true class"] = classes[entry["case"]]["true"]
            row["predicted class"] = classes[entry["case"]]["predicted"]
        rows.append(row)
    return sort_rows(rows, BY_DICE)


def has_scores(rows: list[dict[str, Any]]) -> bool:
    """Does the table carry a quality score for at least one case?"""
    return any(SCORE_COLUMN in row for row in rows)


def sort_rows(rows: list[dict[str, Any]], order: str = BY_DICE) -> list[dict[str, Any]]:
    """The table in `order`: BY_DICE (as `case_table`: worst mean Dice first) or BY_SCORE (highest
    quality score first: the cases to review first; cases without a score last, then by name)."""
    if order == BY_DICE:
        return sorted(rows, key=lambda r: (math.isnan(r["mean dice"]), r["mean dice"], r["case"]))
    if order != BY_SCORE:
        raise ValueError(f"unknown order {order!r}")

    def score(row: dict[str, Any]) -> float:
        value = row.get(SCORE_COLUMN, math.nan)
        return -math.inf if math.isnan(value) else value

    return sorted(rows, key=lambda r: (-score(r), r["case"]))


def read_summary(source: Source) -> dict[str, Any]:
    return read_json(source.folder / SUMMARY_FILE)


def label_names(plans: Plans) -> dict[str, str]:
    """Label value (as summary.json writes it) → its name in dataset.json."""
    return {str(value): name for name, value in plans.labels.items()}


def raw_folder(work: Path) -> Path:
    """The raw dataset WORK was planned from (plans.json `extra.raw_path`)."""
    raw = load_plans(plans_file(work)).extra.get(RAW_PATH_KEY)
    if not raw or not (Path(raw) / "dataset.json").is_file():
        raise UserError(plans_file(work), f"the raw dataset it records ({raw or 'none'}) is not "
                        "found: the viewer needs its images and reference labels")
    return Path(raw)


def load_case_volumes(work: Path, source: Source, case: str) -> CaseVolumes:
    """A validation case's channels and reference (from RAW) and prediction (from the source)."""
    pred_path = confined(source.folder, source.folder / f"{case}.nii.gz")
    if not pred_path.is_file():
        raise UserError(pred_path, "prediction not found")
    dataset = load_dataset(raw_folder(work))
    files = next((c for c in dataset.cases if c.name == case), None)
    if files is None:
        raise UserError(case, f"is not a case of the raw dataset {dataset.root}")
    raw = read_case(files.images)
    ref = None if files.label is None else np.rint(read_image(files.label).array).astype(np.int16)
    pred = np.rint(read_image(pred_path).array).astype(np.int16)
    if pred.shape != raw.data.shape[1:]:
        raise UserError(pred_path, f"shape {pred.shape} differs from the image's {raw.data.shape[1:]}")
    return CaseVolumes(raw.data, raw.spacing, ref, pred, read_uncertainty(source.folder, case, pred.shape))


def uncertainty_path(folder: Path, case: str) -> Path | None:
    """The case's uncertainty map in a source folder: `uncertainty/<case>_uncertainty.nii.gz` (the
    final validation's) or `<case>_uncertainty.nii.gz` beside the label map (predict --uncertainty);
    None when neither exists."""
    name = f"{case}{UNCERTAINTY_SUFFIX}.nii.gz"
    for path in (folder / UNCERTAINTY_DIR / name, folder / name):
        if confined(folder, path).is_file():
            return path
    return None


def read_uncertainty(folder: Path, case: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The case's uncertainty map (Z, Y, X) float32 in [0, 1]; None when not written (another
    shape than the label map's is a UserError)."""
    path = uncertainty_path(folder, case)
    if path is None:
        return None
    values = np.asarray(read_image(path).array, dtype=np.float32)
    if values.shape != shape:
        raise UserError(path, f"shape {values.shape} differs from the label map's {shape}")
    return np.clip(values, 0.0, 1.0)
