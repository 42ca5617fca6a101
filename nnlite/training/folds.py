"""The folds of a work directory: splits.json, each fold's cases and its result folders.

`WORK/splits.json` lists the cross-validation folds ({"train": [...], "val": [...]} each; made with
the reference's seed when absent, a user's file is respected but must name exactly the cases that
were preprocessed). Training reads the cases from the preprocessed folder's record, which must
match plans.json (`nnlite.preprocessing.records`). Fold k trains in
`WORK/results/<config>/fold_<k>/` and predicts the cases of its "val" list into `validation/`;
`fold_sources` maps every case to the one fold that validated it, for the cross-validation merge
and for the cascade's training inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked, write_json_atomic
from nnlite.planning.splits import check_splits_cases, check_splits_shape, fold_count, make_splits
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import is_preprocessed
from nnlite.preprocessing.records import check_matches_plan
from nnlite.training.config import TrainConfig

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
SEG_ENDING = ".nii.gz"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")  # the reference's 5-fold cross-validation


def load_splits(work: Path, cases: list[str]) -> list[dict[str, list[str]]]:
    """WORK/splits.json (a user's file is respected), checked against `cases`; made with the
    reference's seed when absent (min(5, n) folds; a single case has none)."""
    path = work / SPLITS_FILE
    if not path.is_file():
        n_folds = fold_count(len(cases))
        if n_folds == 0:
            raise UserError("--fold", f"{work} holds a single case: there is no cross-validation",
                            hint="train it with --fold all")
        write_json_atomic(path, make_splits(cases, n_folds))
        log.info("wrote %s (%d folds)", path, n_folds)
    splits = check_splits_shape(path, read_json_checked(path))
    check_splits_cases(path, splits, cases)
    return splits


def load_cv_splits(work: Path) -> list[dict[str, list[str]]]:
    """WORK/splits.json: a list of {"train": [...], "val": [...]} (written by plan or train)."""
    path = Path(work) / SPLITS_FILE
    if not path.is_file():
        raise UserError(path, "not found: plan and train the folds first")
    return check_splits_shape(path, read_json_checked(path))


def cv_folds(work: Path, default: Sequence[str] = DEFAULT_FOLDS) -> list[str]:
    """The folds `train --fold cv` runs: every fold of WORK/splits.json (a user's file may hold
    any number), or the default five when the file is not written yet."""
    path = Path(work) / SPLITS_FILE
    return [str(k) for k in range(len(load_cv_splits(work)))] if path.is_file() else list(default)


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
        splits = load_splits(work, cases)
        if not config.fold.isdigit() or int(config.fold) >= len(splits):
            raise UserError("--fold", f"'{config.fold}' is not a fold of {work / SPLITS_FILE} "
                            f"(0–{len(splits) - 1} or all)")
        train, val = splits[int(config.fold)]["train"], splits[int(config.fold)]["val"]
    missing = [case for case in dict.fromkeys(train + val) if not is_preprocessed(folder, case)]
    if missing:
        raise UserError(folder / missing[0], "is not preprocessed (preprocess reported it failed, or "
                        "did not finish)", hint=f"python -m nnlite.preprocess {work} --configs "
                        f"{config.configuration}")
    return list(train), list(val)


def preprocessed_dir(work: Path, plans: Plans, config: TrainConfig) -> Path:
    return work / "preprocessed" / plans.configurations[config.configuration].data_identifier


def result_folder(work: Path, config: TrainConfig) -> Path:
    return work / "results" / config.configuration / f"fold_{config.fold}"


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
