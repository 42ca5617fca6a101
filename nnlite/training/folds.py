"""The folds of a work directory: splits.json, each fold's cases and its result folders.

`WORK/splits.json` lists the cross-validation folds ({"train": [...], "val": [...]} each; made with
the reference's seed when absent, a user's file is respected). Fold k trains in
`WORK/results/<config>/fold_<k>/` and predicts the cases of its "val" list into `validation/`;
`fold_sources` maps every case to the one fold that validated it, for the cross-validation merge
and for the cascade's training inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import read_json, write_json_atomic
from nnlite.data.dataset import make_splits
from nnlite.plans import Plans
from nnlite.training.config import TrainConfig

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
SEG_ENDING = ".nii.gz"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")  # the reference's 5-fold cross-validation


def load_splits(work: Path, cases: list[str]) -> list[dict[str, list[str]]]:
    """WORK/splits.json (a user's file is respected); made with the reference's seed when absent."""
    path = work / SPLITS_FILE
    if not path.is_file():
        write_json_atomic(path, make_splits(cases))
        log.info("wrote %s (5 folds)", path)
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s)
                                               for s in splits):
        raise UserError(path, "expected a list of {\"train\": [...], \"val\": [...]} folds")
    return splits


def load_cv_splits(work: Path) -> list[dict[str, list[str]]]:
    """WORK/splits.json: a list of {"train": [...], "val": [...]} (written by plan or train)."""
    path = Path(work) / SPLITS_FILE
    if not path.is_file():
        raise UserError(path, "not found: plan and train the folds first")
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "val" in s for s in splits):
        raise UserError(path, "expected a list of {\"train\": [...], \"val\": [...]} folds")
    return splits


def cv_folds(work: Path, default: Sequence[str] = DEFAULT_FOLDS) -> list[str]:
    """The folds `train --fold cv` runs: every fold of WORK/splits.json (a user's file may hold
    any number), or the default five when the file is not written yet."""
    path = Path(work) / SPLITS_FILE
    return [str(k) for k in range(len(load_cv_splits(work)))] if path.is_file() else list(default)


def fold_cases(work: Path, plans: Plans, config: TrainConfig) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of the fold; "all" trains and validates on every case."""
    cases = preprocessed_cases(work, plans, config)
    if config.fold == "all":
        return cases, cases
    splits = load_splits(work, cases)
    if not config.fold.isdigit() or int(config.fold) >= len(splits):
        raise UserError("--fold", f"'{config.fold}' is not a fold of {work / SPLITS_FILE} "
                        f"(0–{len(splits) - 1} or all)")
    split = splits[int(config.fold)]
    missing = sorted(set(split["train"] + split["val"]) - set(cases))
    if missing:
        raise UserError(work / SPLITS_FILE, f"case '{missing[0]}' is not preprocessed")
    return list(split["train"]), list(split["val"])


def preprocessed_dir(work: Path, plans: Plans, config: TrainConfig) -> Path:
    return work / "preprocessed" / plans.configurations[config.configuration].data_identifier


def preprocessed_cases(work: Path, plans: Plans, config: TrainConfig) -> list[str]:
    folder = preprocessed_dir(work, plans, config)
    cases = sorted(p.name[: -len("_seg.npy")] for p in folder.glob("*_seg.npy"))
    if not cases:
        raise UserError(folder, "no preprocessed training cases; run `python -m nnlite.preprocess` first")
    return cases


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
