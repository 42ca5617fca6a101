"""The work folder's layout: every path inside WORK, named once.

```
WORK/
  dataset.json classes.csv            copies of the raw dataset's (plan)
  fingerprint.json plans.json splits.json
  preprocessed/<data_identifier>/     <case>.npy, <case>_seg.npy, <case>.json (+ <data_identifier>.json)
  results/<config>/fold_<f>/          checkpoints, log.txt, metrics.jsonl, validation/<case>.nii.gz
                                      (+ validation/uncertainty/<case>_uncertainty.nii.gz, …)
  results/<config>/crossval/          the folds' validation predictions merged, summary.json
  results/<config>/postprocessing.json, postprocessed/, temperature.json
  results/ensembles/<a>+<b>/          an ensemble's cross-validation
  results/best.json                   the chosen configuration or ensemble
```

A fold is named `fold_<k>` (k = 0, 1, … of splits.json) or `fold_all` (every case); folds are
always listed in that order: numbered ones by number, then `all`, then any other name. Every other
module asks this one for a path; none spells these names itself (nnU-Net's `paths.py` and
`get_output_folder` hold the same knowledge).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from nnlite.common.errors import UserError

DATASET_FILE = "dataset.json"
RAW_IMAGES_DIR = "imagesTr"  # a raw dataset's training images (nnU-Net's layout)
PLANS_FILE = "plans.json"
FINGERPRINT_FILE = "fingerprint.json"
SPLITS_FILE = "splits.json"
PREPROCESSED_DIR = "preprocessed"
RESULTS_DIR = "results"
VALIDATION_DIR = "validation"
CROSSVAL_DIR = "crossval"
ENSEMBLES_DIR = "ensembles"
BEST_FILE = "best.json"
POSTPROCESSING_FILE = "postprocessing.json"
POSTPROCESSED_DIR = "postprocessed"  # cross-validation predictions after the accepted steps
TEMPERATURE_FILE = "temperature.json"  # the temperature fitted on a cross-validation (docs/uncertainty.md)
SEG_ENDING = ".nii.gz"  # the validation's label maps
SUMMARY_FILE = "summary.json"  # every scored folder's Dice, IoU and PPV
# predict --uncertainty (docs/uncertainty.md): <case>_uncertainty<ending>, <case>_disagreement<ending>
# beside the label maps (the final validation: in validation/uncertainty/), uncertainty.csv
UNCERTAINTY_SUFFIX, DISAGREEMENT_SUFFIX = "_uncertainty", "_disagreement"
MAP_SUFFIXES = (UNCERTAINTY_SUFFIX, DISAGREEMENT_SUFFIX)  # label-map folders skip these files
UNCERTAINTY_FILE = "uncertainty.csv"
UNCERTAINTY_DIR = "uncertainty"
FOLD_PREFIX = "fold_"
ALL_FOLD = "all"  # the fold trained and validated on every case
FOLD_FOLDER = re.compile(r"^fold_(\w+)$")


def plans_file(work: str | Path) -> Path:
    return Path(work) / PLANS_FILE


def refuse_raw_dataset(work: str | Path) -> None:
    """A raw dataset (dataset.json + imagesTr/) given where a WORK folder without plans.json is
    expected: say so, and which command makes a WORK of it."""
    work = Path(work)
    if (work / DATASET_FILE).is_file() and (work / RAW_IMAGES_DIR).is_dir() and not plans_file(work).is_file():
        raise UserError(work, f"this is a raw dataset ({DATASET_FILE}, {RAW_IMAGES_DIR}/), not a work folder; "
                              f"run python -m nnlite.plan {work} WORK first and give that WORK")


def fingerprint_file(work: str | Path) -> Path:
    return Path(work) / FINGERPRINT_FILE


def splits_file(work: str | Path) -> Path:
    return Path(work) / SPLITS_FILE


def work_dataset_file(work: str | Path) -> Path:
    return Path(work) / DATASET_FILE


def preprocessed_root(work: str | Path) -> Path:
    return Path(work) / PREPROCESSED_DIR


def preprocessed_folder(work: str | Path, data_identifier: str) -> Path:
    """Where a configuration's preprocessed cases are (its plan's `data_identifier`)."""
    return preprocessed_root(work) / data_identifier


def results_root(work: str | Path) -> Path:
    return Path(work) / RESULTS_DIR


def config_results(work: str | Path, config_name: str) -> Path:
    return results_root(work) / config_name


def fold_folder(work: str | Path, config_name: str, fold: int | str) -> Path:
    """results/<config>/fold_<fold>: checkpoints, logs and the fold's validation."""
    return config_results(work, config_name) / f"{FOLD_PREFIX}{fold}"


def validation_folder(work: str | Path, config_name: str, fold: int | str) -> Path:
    return fold_folder(work, config_name, fold) / VALIDATION_DIR


def crossval_folder(work: str | Path, config_name: str) -> Path:
    return config_results(work, config_name) / CROSSVAL_DIR


def postprocessing_file(work: str | Path, config_name: str) -> Path:
    return config_results(work, config_name) / POSTPROCESSING_FILE


def temperature_file(work: str | Path, config_name: str) -> Path:
    """results/<config>/temperature.json: T fitted on the configuration's cross-validation."""
    return config_results(work, config_name) / TEMPERATURE_FILE


def postprocessed_folder(work: str | Path, config_name: str) -> Path:
    return config_results(work, config_name) / POSTPROCESSED_DIR


def ensemble_folder(work: str | Path, name: str) -> Path:
    return results_root(work) / ENSEMBLES_DIR / name


def best_file(work: str | Path) -> Path:
    return results_root(work) / BEST_FILE


def fold_name(folder: Path) -> str | None:
    """`3` of `fold_3`, `all` of `fold_all`; None for a folder that is not a fold's."""
    match = FOLD_FOLDER.match(folder.name)
    return match[1] if match else None


def fold_folders_of(work: str | Path, config_name: str) -> list[tuple[str, Path]]:
    """(fold, folder) of every fold folder of a configuration, in fold order."""
    found = {fold_name(p): p for p in config_results(work, config_name).glob(f"{FOLD_PREFIX}*") if p.is_dir()}
    order = sorted((f for f in found if f is not None),
                   key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))  # numbered, then all
    return [(fold, found[fold]) for fold in order]


def trained_folds(work: str | Path, config_name: str, checkpoint_file: str) -> list[str]:
    """The folds of a configuration that hold `checkpoint_file`, in fold order."""
    return [fold for fold, folder in fold_folders_of(work, config_name) if (folder / checkpoint_file).is_file()]


def prediction_folds(work: str | Path, config_name: str, folds: Iterable[str] | None,
                     checkpoint_file: str) -> list[Path]:
    """The fold folders a prediction ensembles (default: every numbered fold, else fold_all);
    each must hold `checkpoint_file`, or the fold has no finished training."""
    results = config_results(work, config_name)
    if folds is not None:
        folders = [fold_folder(work, config_name, fold) for fold in folds]
        for folder in folders:
            if not folder.is_dir():
                raise UserError(folder, "no such trained fold")
    else:
        present = fold_folders_of(work, config_name)
        folders = ([p for fold, p in present if fold.isdigit()]
                   or [p for fold, p in present if fold == ALL_FOLD])
    if not folders:
        raise UserError(results, "no trained fold (fold_0, fold_1, … or fold_all)")
    for folder in folders:
        if not (folder / checkpoint_file).is_file():
            raise UserError(folder, f"fold {fold_name(folder)} of {results.name} has no finished "
                            f"training ({checkpoint_file} is missing)",
                            hint="train it to the end (python -m nnlite.train … --resume), or choose "
                                 "other --folds")
    return folders
