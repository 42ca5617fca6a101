"""Cross-validation results: the validation folders of every fold merged into one.

Fold k of `WORK/splits.json` validates the cases of its "val" list, with a model that never saw
them. Merging takes, from each `results/<config>/fold_<k>/validation/`, exactly the cases of that
fold's "val" list (a stray file of another case is ignored, so a case is never scored with a
model that trained on it), and fails when a case is validated by two folds or a fold has not
validated one of its cases. The result, `results/<config>/crossval/`, holds every training case's
label map (and its `.npz` probabilities when the folds saved them, for ensembling) and a
`summary.json` scored against the raw labels, as the reference's
`crossval_results_folds_0_1_2_3_4/`. A network with a classification head also merges each fold's
`validation/classification.csv` rows of its "val" cases into `crossval/classification.csv`, scored
into the summary's `classification` block. With probabilities, a temperature is fitted on them
into `results/<config>/temperature.json` (`calibration.calibrate_folder`, docs/uncertainty.md).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from nnlite.common.layout import SEG_ENDING, SUMMARY_FILE, crossval_folder, plans_file, temperature_file
from nnlite.common.files import staged_dir
from nnlite.evaluation.calibration import calibrate_folder
from nnlite.evaluation.class_scores import score_class_rows
from nnlite.evaluation.metrics import evaluate_folder, reference_labels, write_summary
from nnlite.inference.case_classification import CLASSIFICATION_FILE, class_rows_of
from nnlite.inference.outputs import npz_path_for
from nnlite.plans import load_plans
from nnlite.planning.splits import fold_sources

log = logging.getLogger(__name__)


def merge_crossval(work: str | Path, config_name: str) -> dict[str, Any]:
    """(Re)build results/<config>/crossval/ from the folds; returns its summary (also on disk)."""
    work = Path(work)
    plans = load_plans(plans_file(work))
    sources = fold_sources(work, config_name)
    target = crossval_folder(work, config_name)
    if target.exists():
        shutil.rmtree(target)  # rebuilt from the folds every time: it never goes stale
    with staged_dir(target) as staging:
        for case, (_, path) in sorted(sources.items()):
            _link_or_copy(path, staging / path.name)
            if npz_path_for(path).is_file():
                _link_or_copy(npz_path_for(path), npz_path_for(staging / path.name))
        summary = evaluate_folder(staging, reference_labels(plans), plans.scored, plans.ignore_label)
        summary["folds"] = {case: fold for case, (fold, _) in sorted(sources.items())}
        class_rows = fold_class_rows(sources, plans.case_classes)
        if class_rows is not None:
            summary["classification"] = score_class_rows(work, plans, staging, class_rows)
        write_summary(summary, staging / SUMMARY_FILE)
    calibrate_folder(target, reference_labels(plans), plans, temperature_file(work, config_name),
                     f"{config_name} cross-validation")
    log.info("%s cross-validation: foreground Dice %.4f on %d cases (%s)", config_name,
             summary["foreground_mean"]["dice"], len(sources), target / SUMMARY_FILE)
    return summary


def fold_class_rows(sources: dict[str, tuple[int, Path]], names: tuple[str, ...]
                    ) -> dict[str, np.ndarray] | None:
    """Each case's class probabilities from the classification.csv beside its fold's label map;
    None for plans without case classes or when a fold wrote no classification.csv."""
    if not names:
        return None
    cases_by_table: dict[Path, list[str]] = {}
    for case, (_, path) in sorted(sources.items()):
        cases_by_table.setdefault(path.parent / CLASSIFICATION_FILE, []).append(case)
    missing = [table for table in cases_by_table if not table.is_file()]
    if missing:
        log.warning("%s is missing: the cross-validation has no classification scores", missing[0])
        return None
    rows = {}
    for table, cases in cases_by_table.items():
        rows.update(class_rows_of(table, names, cases))
    return dict(sorted(rows.items()))


def has_probabilities(work: Path, config_name: str) -> bool:
    """Does results/<config>/crossval/ hold a `.npz` for every label map?"""
    segs = sorted(crossval_folder(work, config_name).glob(f"*{SEG_ENDING}"))
    return bool(segs) and all(npz_path_for(path).is_file() for path in segs)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of large probability files) where the file system allows one."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
