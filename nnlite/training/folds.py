"""The folds of a work directory: each fold's cases and its result folder.

`WORK/splits.json` lists the cross-validation folds (`nnlite.planning.splits` writes and reads it:
made with the reference's seed when absent, a user's file is respected but must name exactly the
cases that were preprocessed). Training reads the cases from the preprocessed folder's record,
which must match plans.json (`nnlite.preprocessing.records`). Fold k trains in
`results/<config>/fold_<k>/` (`nnlite.common.layout`) and predicts the cases of its "val" list
into `validation/`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked
from nnlite.common.layout import preprocessed_folder, splits_file
from nnlite.planning.class_head import read_work_classes
from nnlite.planning.splits import check_splits_cases, check_splits_shape, fold_count, read_splits, write_splits
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import is_preprocessed
from nnlite.preprocessing.records import check_matches_plan
from nnlite.training.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_FOLDS = ("0", "1", "2", "3", "4")  # the reference's 5-fold cross-validation


def load_splits(work: Path, plans: Plans, cases: list[str]) -> list[dict[str, list[str]]]:
    """WORK/splits.json (a user's file is respected), checked against `cases`; made with the
    reference's seed when absent (min(5, n) folds, stratified by case class; a single case has none)."""
    path = splits_file(work)
    if not path.is_file():
        n_folds = fold_count(len(cases))
        if n_folds == 0:
            raise UserError("--fold", f"{work} holds a single case: there is no cross-validation",
                            hint="train it with --fold all")
        classes = read_work_classes(work, plans)
        write_splits(work, cases, n_folds, None if classes is None else classes.of_case)
    splits = check_splits_shape(path, read_json_checked(path))
    check_splits_cases(path, splits, cases)
    return splits


def cv_folds(work: Path, default: Sequence[str] = DEFAULT_FOLDS) -> list[str]:
    """The folds `train --fold cv` runs: every fold of WORK/splits.json (a user's file may hold
    any number), or the default five when the file is not written yet."""
    return [str(k) for k in range(len(read_splits(work)))] if splits_file(work).is_file() else list(default)


def fold_cases(work: Path, plans: Plans, config: TrainConfig) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of the fold; "all" trains and validates on every case.

    Checked before training writes anything: the preprocessed data matches the plan, splits.json
    names exactly its cases, the fold exists and each of its cases is preprocessed.
    """
    folder = preprocessed_dir(work, plans, config)
    cases = check_matches_plan(folder, plans, config.configuration, work)
    if config.fold == "all":
        train, val = cases, cases
    else:
        splits = load_splits(work, plans, cases)
        if not config.fold.isdigit() or int(config.fold) >= len(splits):
            raise UserError("--fold", f"'{config.fold}' is not a fold of {splits_file(work)} "
                            f"(0–{len(splits) - 1} or all)")
        train, val = splits[int(config.fold)]["train"], splits[int(config.fold)]["val"]
    missing = [case for case in dict.fromkeys(train + val) if not is_preprocessed(folder, case)]
    if missing:
        raise UserError(folder / missing[0], "is not preprocessed (preprocess reported it failed, or "
                        "did not finish)", hint=f"python -m nnlite.preprocess {work} --configs "
                        f"{config.configuration}")
    return list(train), list(val)


def preprocessed_dir(work: Path, plans: Plans, config: TrainConfig) -> Path:
    return preprocessed_folder(work, plans.configurations[config.configuration].data_identifier)
