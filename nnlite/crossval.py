"""Cross-validation results: the validation folders of every fold merged into one.

Fold k of `WORK/splits.json` validates the cases of its "val" list, with a model that never saw
them. Merging takes, from each `results/<config>/fold_<k>/validation/`, exactly the cases of that
fold's "val" list (a stray file of another case is ignored, so a case is never scored with a
model that trained on it), and fails when a case is validated by two folds or a fold has not
validated one of its cases. The result, `results/<config>/crossval/`, holds every training case's
label map (and its `.npz` probabilities when the folds saved them, for ensembling) and a
`summary.json` scored against the raw labels, as the reference's
`crossval_results_folds_0_1_2_3_4/`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from nnlite.errors import UserError
from nnlite.evaluation import evaluate_for_plans, write_summary
from nnlite.export import npz_path_for
from nnlite.files import read_json, staged_dir
from nnlite.plans import load_plans

log = logging.getLogger(__name__)

CROSSVAL_DIR = "crossval"
SUMMARY_FILE = "summary.json"
SPLITS_FILE = "splits.json"
SEG_ENDING = ".nii.gz"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")  # the reference's 5-fold cross-validation


def load_cv_splits(work: Path) -> list[dict[str, list[str]]]:
    """WORK/splits.json: a list of {"train": [...], "val": [...]} (written by plan or train)."""
    path = Path(work) / SPLITS_FILE
    if not path.is_file():
        raise UserError(path, "not found: plan and train the folds first")
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "val" in s for s in splits):
        raise UserError(path, "expected a list of {\"train\": [...], \"val\": [...]} folds")
    return splits


def validation_dir(work: Path, config_name: str, fold: int | str) -> Path:
    return Path(work) / "results" / config_name / f"fold_{fold}" / "validation"


def fold_sources(work: Path, config_name: str,
                 splits: list[dict[str, list[str]]] | None = None) -> dict[str, tuple[int, Path]]:
    """Case → (fold, its validation label map) over every fold of splits.json.

    Only the fold whose "val" list holds a case may provide its prediction; a case in two "val"
    lists or a missing prediction is a UserError naming it.
    """
    work = Path(work)
    splits = load_cv_splits(work) if splits is None else splits
    found: dict[str, tuple[int, Path]] = {}
    for fold, split in enumerate(splits):
        folder = validation_dir(work, config_name, fold)
        for case in split["val"]:
            if case in found:
                raise UserError(case, f"predicted twice: folds {found[case][0]} and {fold} of "
                                f"{work / SPLITS_FILE} both validate it")
            path = folder / f"{case}{SEG_ENDING}"
            if not path.is_file():
                raise UserError(path, f"missing: fold {fold} of {config_name} has not validated "
                                f"case '{case}' (python -m nnlite.train {work} --config "
                                f"{config_name} --fold {fold})")
            found[case] = (fold, path)
    return found


def crossval_dir(work: Path, config_name: str) -> Path:
    return Path(work) / "results" / config_name / CROSSVAL_DIR


def merge_crossval(work: str | Path, config_name: str) -> dict[str, Any]:
    """(Re)build results/<config>/crossval/ from the folds; returns its summary (also on disk)."""
    work = Path(work)
    plans = load_plans(work / "plans.json")
    sources = fold_sources(work, config_name)
    target = crossval_dir(work, config_name)
    if target.exists():
        shutil.rmtree(target)  # rebuilt from the folds every time: it never goes stale
    with staged_dir(target) as staging:
        for case, (_, path) in sorted(sources.items()):
            _link_or_copy(path, staging / path.name)
            if npz_path_for(path).is_file():
                _link_or_copy(npz_path_for(path), npz_path_for(staging / path.name))
        summary = evaluate_for_plans(staging, plans)
        summary["folds"] = {case: fold for case, (fold, _) in sorted(sources.items())}
        write_summary(summary, staging / SUMMARY_FILE)
    log.info("%s cross-validation: foreground Dice %.4f on %d cases (%s)", config_name,
             summary["foreground_mean"]["dice"], len(sources), target / SUMMARY_FILE)
    return summary


def has_probabilities(work: Path, config_name: str) -> bool:
    """Does results/<config>/crossval/ hold a `.npz` for every label map?"""
    folder = crossval_dir(work, config_name)
    segs = sorted(folder.glob(f"*{SEG_ENDING}"))
    return bool(segs) and all(npz_path_for(path).is_file() for path in segs)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of large probability files) where the file system allows one."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def cv_folds(work: Path, default: Sequence[str] = DEFAULT_FOLDS) -> list[str]:
    """The folds `train --fold cv` runs: every fold of WORK/splits.json (a user's file may hold
    any number), or the default five when the file is not written yet."""
    path = Path(work) / SPLITS_FILE
    return [str(k) for k in range(len(load_cv_splits(work)))] if path.is_file() else list(default)
