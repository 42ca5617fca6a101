"""Cross-validation folds: how many, how the cases are split, and whether a splits.json fits.

nnU-Net splits the sorted case names with sklearn's KFold(5, shuffle=True, random_state=12345).
nnlite does the same without sklearn, and with fewer cases than folds makes one fold per case
(`fold_count`); a single case has no cross-validation at all (train it with `--fold all`).
A user's splits.json is respected, but it must name exactly the dataset's cases.

WORK/splits.json is written here only (`write_splits`, stratified by case class when the dataset
has classes) and read here only (`read_splits`); `fold_sources` finds each case's
cross-validation prediction: the validation of the one fold whose "val" list holds it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked, write_json_atomic
from nnlite.common.layout import SEG_ENDING, VALIDATION_DIR, fold_folders_of, splits_file, validation_folder

log = logging.getLogger(__name__)

SPLIT_SEED = 12345  # nnU-Net's KFold(shuffle=True, random_state=12345)
N_FOLDS = 5  # nnU-Net's 5-fold cross-validation
MIN_FOLDS = 2  # fewer than two folds is no cross-validation

Splits = list[dict[str, list[str]]]


def fold_count(n_cases: int, requested: int | None = None) -> int:
    """Folds for `n_cases`: `requested`, else min(N_FOLDS, n_cases); 0 for a single case."""
    if requested is None:
        return min(N_FOLDS, n_cases) if n_cases >= MIN_FOLDS else 0
    if requested < MIN_FOLDS:
        raise UserError("--folds", f"must be at least {MIN_FOLDS}, got {requested}")
    if requested > n_cases:
        raise UserError("--folds", f"{requested} folds need at least {requested} cases; the "
                        f"dataset has {n_cases}")
    return requested


def write_splits(work: Path, case_names: Sequence[str] | None, n_folds: int,
                 class_of: dict[str, int] | None = None) -> None:
    """WORK/splits.json: nnU-Net's seeded k folds, stratified by case class when the dataset has
    classes (`class_of`: case → class index)."""
    if not case_names:
        log.info("no splits.json: an nnU-Net fingerprint does not name its cases")
    elif n_folds == 0:
        log.info("a single case: no cross-validation folds; train it with --fold all")
    else:
        if len(case_names) < N_FOLDS:
            log.info("%d cases: %d folds instead of %d", len(case_names), n_folds, N_FOLDS)
        splits = (make_splits(case_names, n_folds) if class_of is None
                  else make_stratified_splits(case_names, class_of, n_folds))
        write_json_atomic(splits_file(work), splits)
        log.info("wrote %s (%d folds)", splits_file(work), n_folds)


def read_splits(work: Path) -> Splits:
    """WORK/splits.json: a list of {"train": [...], "val": [...]} (written by plan or train)."""
    path = splits_file(work)
    if not path.is_file():
        raise UserError(path, "not found: plan and train the folds first")
    return check_splits_shape(path, read_json_checked(path))


def fold_sources(work: Path, config_name: str, splits: Splits | None = None, *,
                 complete: bool = True) -> dict[str, tuple[int, Path]]:
    """Case → (fold, its validation label map) over the folds of splits.json.

    Only the fold whose "val" list holds a case may provide its prediction; a case in two "val"
    lists is a UserError naming it, and so is a missing prediction when `complete` (otherwise
    folds not validated yet are left out).
    """
    work = Path(work)
    if splits is None:
        unsplit = not complete and not splits_file(work).is_file()  # e.g. folds copied in by hand
        splits = validated_folds(work, config_name) if unsplit else read_splits(work)
    found: dict[str, tuple[int, Path]] = {}
    for fold, split in enumerate(splits):
        folder = validation_folder(work, config_name, fold)
        for case in split["val"]:
            if case in found:
                raise UserError(case, f"predicted twice: folds {found[case][0]} and {fold} of "
                                f"{splits_file(work)} both validate it")
            path = folder / f"{case}{SEG_ENDING}"
            if path.is_file():
                found[case] = (fold, path)
            elif complete:
                raise UserError(path, f"missing: fold {fold} of {config_name} has not validated "
                                f"case '{case}' (python -m nnlite.train {work} --config "
                                f"{config_name} --fold {fold})")
    return found


def validated_folds(work: Path, config_name: str) -> Splits:
    """Without splits.json: each numbered fold's "val" list is what its validation/ holds."""
    folds = {int(fold): folder for fold, folder in fold_folders_of(work, config_name) if fold.isdigit()}
    return [{"train": [], "val": sorted(p.name[: -len(SEG_ENDING)] for p in
                                        (folds[k] / VALIDATION_DIR).glob(f"*{SEG_ENDING}"))
             if k in folds else []} for k in range(max(folds, default=-1) + 1)]


def make_splits(case_names: Sequence[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> Splits:
    """nnU-Net's k-fold split: sklearn KFold(n_folds, shuffle=True, random_state=seed) on sorted names.

    Shuffle the indices with RandomState(seed); folds are consecutive chunks, the first
    n % n_folds folds one larger. Both lists are in sorted order, as sklearn returns them.
    """
    names = sorted(case_names)
    if len(names) < n_folds:
        raise UserError("splits", f"{len(names)} cases cannot be split into {n_folds} folds")
    order = np.arange(len(names))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(names) // n_folds)
    sizes[: len(names) % n_folds] += 1
    splits, start = [], 0
    for size in sizes:
        val = np.sort(order[start : start + size])  # sklearn returns both as sorted masks
        train = np.setdiff1d(np.arange(len(names)), val)
        splits.append({"train": [names[i] for i in train], "val": [names[i] for i in val]})
        start += size
    return splits


def make_stratified_splits(case_names: Sequence[str], class_of: dict[str, int], n_folds: int = N_FOLDS,
                           seed: int = SPLIT_SEED) -> Splits:
    """Folds stratified by case class: every fold's validation holds every class that has at
    least `n_folds` cases, and fold sizes differ by at most one.

    Per class (in class order) the sorted names are shuffled with RandomState(seed) and dealt to
    the folds in turn, the dealing continuing across classes so the sizes stay balanced.
    """
    names = sorted(case_names)
    if len(names) < n_folds:
        raise UserError("splits", f"{len(names)} cases cannot be split into {n_folds} folds")
    val: list[list[str]] = [[] for _ in range(n_folds)]
    dealt = 0
    for label in sorted({class_of[n] for n in names}):
        members = [n for n in names if class_of[n] == label]
        order = np.arange(len(members))
        np.random.RandomState(seed).shuffle(order)
        for i in order:
            val[dealt % n_folds].append(members[i])
            dealt += 1
    return [{"train": [n for n in names if n not in set(fold)], "val": sorted(fold)} for fold in val]


def check_splits_shape(path: Path, splits: Any) -> Splits:
    """A list of {"train": [names], "val": [names]} folds, or a UserError naming the file."""
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s)
            and all(isinstance(s[k], list) and all(isinstance(n, str) for n in s[k]) for k in ("train", "val"))
            for s in splits):
        raise UserError(path, "must be a list of {\"train\": [case, …], \"val\": [case, …]} folds")
    return splits


def check_splits_cases(path: Path, splits: Splits, cases: Sequence[str]) -> None:
    """Every name is a case of the dataset, every case is in some fold, no fold trains on its
    validation cases; otherwise a UserError naming the cases."""
    known = set(cases)
    named = {name for split in splits for name in split["train"] + split["val"]}
    unknown = sorted(named - known)
    if unknown:
        raise UserError(path, f"names {_few(unknown)} that the dataset does not have",
                        hint="fix or delete splits.json (plan writes a new one)")
    missing = sorted(known - named)
    if missing:
        raise UserError(path, f"misses the dataset's {_few(missing)}",
                        hint="fix or delete splits.json (plan writes a new one)")
    for fold, split in enumerate(splits):
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            raise UserError(path, f"fold {fold} trains and validates on {_few(both)}")


def _few(names: list[str], shown: int = 3) -> str:
    """'case' or 'cases a, b, c (and 4 more)'."""
    if len(names) == 1:
        return f"case '{names[0]}'"
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return "cases " + ", ".join(f"'{n}'" for n in names[:shown]) + more
