"""The `plan` stage, files in and files out: RAW (or a fingerprint file) → WORK.

Writes `WORK/dataset.json` (a copy), `fingerprint.json`, `splits.json` (min(5, n) seeded folds, or
`--folds K`; a user's file is kept and checked against the cases) and `plans.json` last, each
atomically and only once everything is decided. `plans.json` records where the dataset is and a
hash of its fingerprint. A WORK that was planned from another dataset is refused (its splits,
preprocessed arrays and results belong to that dataset) unless `overwrite` starts it clean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from nnlite.common.layout import (DATASET_FILE, FINGERPRINT_FILE, PLANS_FILE, PREPROCESSED_DIR, RESULTS_DIR,
                                  SPLITS_FILE, fingerprint_file, plans_file, splits_file, work_dataset_file)
from nnlite.common.errors import UserError
from nnlite.common.files import (ensure_writable_dir, read_json_checked, remove_tmp_leftovers,
                                 write_atomic, write_json_atomic)
from nnlite.common.schema import to_jsonable
from nnlite.data.case_classes import CLASSES_FILE, CaseClasses, classes_of_dataset
from nnlite.data.dataset import RawDataset, load_dataset
from nnlite.planning.class_head import attach_class_head, write_work_classes
from nnlite.planning.fingerprint import extract_fingerprint, load_fingerprint_file
from nnlite.planning.inheritance import keep_added_configurations
from nnlite.planning.memory_budget import GIB
from nnlite.planning.moved_plans import moved_plans, select_configurations
from nnlite.planning.nnunet_plans import plans_from_nnunet, read_nnunet_plans
from nnlite.planning.planner import check_arguments, plan_experiment
from nnlite.planning.splits import Splits, check_splits_cases, check_splits_shape, fold_count, read_splits, write_splits
from nnlite.plans import (FINGERPRINT_HASH_KEY, RAW_PATH_KEY, Fingerprint, Plans, load_fingerprint, load_plans,
                          save_fingerprint, save_plans)

log = logging.getLogger(__name__)

# What `plan --overwrite` removes: everything a plan and the stages after it made in WORK.
NNUNET_SPLITS = "splits_final.json"  # nnU-Net's name for the same list of folds
SPLITS_SOURCE_KEY = "splits_from"  # plans.extra: the nnU-Net splits_final.json that splits.json copies
WORK_OUTPUTS = (PLANS_FILE, SPLITS_FILE, FINGERPRINT_FILE, DATASET_FILE, CLASSES_FILE, PREPROCESSED_DIR, RESULTS_DIR)
# plan --network: imports the builder every planned network names and checks its outputs (raises a
# UserError); passed in by the command (network/builders.check_networks), as planning does not import it
NetworkCheck = Callable[[Plans], None]
NEW_WORK_HINT = "plan into a new WORK folder, or add --overwrite to start this one afresh"


def plan_dataset(raw: Path, work: Path, gpu_memory_gb: float | None = None,
                 configs: Sequence[str] | None = None, workers: int = 1, memory_model: str = "bytes",
                 *, folds: int | None = None, overwrite: bool = False, preset: str = "default",
                 architecture: str | None = None, check_network: NetworkCheck | None = None) -> Plans:
    """RAW → WORK/dataset.json, fingerprint.json, splits.json, plans.json (all written at the end).

    `gpu_memory_gb` None: the preset's budget (8 GB, ResEnc L 24, XL 40). `architecture` (plan
    --network): every network is built by that builder; `check_network` checks them before anything
    is written."""
    check_arguments(gpu_memory_gb, configs, memory_model, preset)  # before the (long) fingerprint
    dataset = load_dataset(raw)
    classes = classes_of_dataset(dataset)  # checked before the (long) fingerprint
    n_folds = fold_count(len(dataset.cases), folds)
    fingerprint = _fresh_fingerprint(dataset, work, workers, overwrite)
    plans = plan_experiment(fingerprint, gpu_memory_gb, configs, dataset_name=Path(raw).resolve().name,
                            memory_model=memory_model, preset=preset, architecture=architecture)
    return _write_outputs(work, Path(raw) / "dataset.json", fingerprint, plans, [c.case for c in fingerprint.cases],
                          n_folds, folds is not None, overwrite, raw=Path(raw), classes=classes,
                          check_network=check_network)


def _fresh_fingerprint(dataset: RawDataset, work: Path, workers: int, overwrite: bool) -> Fingerprint:
    """The dataset's fingerprint; a WORK planned before must hold the same cases and fingerprint
    (unless `overwrite`)."""
    ensure_writable_dir(work, "work folder")
    previous = None if overwrite else previous_fingerprint(work)
    if previous is not None:
        refuse_other_cases(work, [c.case for c in previous.cases], [c.name for c in dataset.cases])
    fingerprint = extract_fingerprint(dataset, workers)
    if previous is not None:
        refuse_other_fingerprint(work, previous, fingerprint)
    return fingerprint


def plan_from_nnunet_plans(raw: Path, work: Path, nnunet_plans_file: Path, configs: Sequence[str] | None = None,
                           workers: int = 1, *, folds: int | None = None, overwrite: bool = False) -> Plans:
    """RAW + nnU-Net's nnUNetPlans.json → WORK: nnU-Net's plan exactly (configuration names, patch,
    batch, spacing, topology; inherits_from kept), with nnlite's fingerprint, splits and records."""
    nnunet = read_nnunet_plans(nnunet_plans_file)
    unknown = sorted(set(configs or ()) - set(nnunet["configurations"]))
    if unknown:
        raise UserError("--configs", f"{unknown[0]!r} is not a configuration of {nnunet_plans_file}")
    dataset = load_dataset(raw)
    classes = classes_of_dataset(dataset)
    n_folds = fold_count(len(dataset.cases), folds)
    plans = plans_from_nnunet(nnunet, dataset.meta, list(configs) if configs else None)
    fingerprint = _fresh_fingerprint(dataset, work, workers, overwrite)
    return _write_outputs(work, Path(raw) / "dataset.json", fingerprint, plans, [c.case for c in fingerprint.cases],
                          n_folds, folds is not None, overwrite, raw=Path(raw), classes=classes)


def plan_from_work(raw: Path, work: Path, source_work: Path, configs: Sequence[str] | None = None,
                   workers: int = 1, *, folds: int | None = None, overwrite: bool = False) -> Plans:
    """RAW + a planned SOURCE_WORK → WORK: the source's spacing, patch, batch and topology, this
    dataset's channels, labels, normalization and statistics (planning/moved_plans.py)."""
    source_work = Path(source_work)
    if source_work.resolve() == Path(work).resolve():
        raise UserError("--plans-from", f"{source_work} is WORK itself; give the trained model's WORK")
    source = load_plans(plans_file(source_work))
    select_configurations(source, configs, source_work)  # before the (long) fingerprint
    dataset = load_dataset(raw)
    classes = classes_of_dataset(dataset)
    n_folds = fold_count(len(dataset.cases), folds)
    fingerprint = _fresh_fingerprint(dataset, work, workers, overwrite)
    plans = moved_plans(source, fingerprint, Path(raw).resolve().name, source_work, configs)
    return _write_outputs(work, Path(raw) / "dataset.json", fingerprint, plans, [c.case for c in fingerprint.cases],
                          n_folds, folds is not None, overwrite, raw=Path(raw), classes=classes)


def plan_from_fingerprint(fingerprint_file: Path, work: Path, gpu_memory_gb: float | None = None,
                          configs: Sequence[str] | None = None, memory_model: str = "bytes",
                          *, folds: int | None = None, overwrite: bool = False, preset: str = "default",
                          architecture: str | None = None, check_network: NetworkCheck | None = None) -> Plans:
    """nnlite's fingerprint.json or nnU-Net's dataset_fingerprint.json (+ a dataset.json next to it
    or in WORK) → WORK/plans.json, fingerprint.json, dataset.json and, with real case names, splits.json."""
    check_arguments(gpu_memory_gb, configs, memory_model, preset)
    fingerprint_file, work = Path(fingerprint_file), Path(work)
    candidates = [fingerprint_file.parent / "dataset.json", work_dataset_file(work)]
    dataset_json = next((p for p in candidates if p.is_file()), None)
    if dataset_json is None:
        raise UserError(fingerprint_file, f"needs a dataset.json next to it or in {work}")
    meta = read_json_checked(dataset_json)
    fingerprint, is_nnlite = load_fingerprint_file(fingerprint_file, meta)
    names = [c.case for c in fingerprint.cases] if is_nnlite else None
    n_folds = fold_count(len(fingerprint.cases), folds)
    ensure_writable_dir(work, "work folder")
    previous = None if overwrite else previous_fingerprint(work)
    if previous is not None:
        refuse_other_fingerprint(work, previous, fingerprint)
    name = str(meta.get("name", fingerprint_file.resolve().parent.name))
    plans = plan_experiment(fingerprint, gpu_memory_gb, configs, dataset_name=name, memory_model=memory_model,
                            preset=preset, architecture=architecture)
    return _write_outputs(work, dataset_json, fingerprint, plans, names, n_folds, folds is not None, overwrite,
                          check_network=check_network)


def fingerprint_hash(fingerprint: Fingerprint) -> str:
    """sha256 of the fingerprint's canonical JSON: same data, same hash."""
    text = json.dumps(to_jsonable(fingerprint), sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _with_origin(plans: Plans, fingerprint: Fingerprint, raw: Path | None) -> Plans:
    """plans.extra records the fingerprint's hash (and the raw folder) the plan was made from."""
    extra = {**plans.extra, FINGERPRINT_HASH_KEY: fingerprint_hash(fingerprint)}
    if raw is not None:
        # preprocess, postprocess and the final validation find the raw images and labels through this
        extra[RAW_PATH_KEY] = str(Path(raw).resolve())
    return replace(plans, extra=extra)


def previous_fingerprint(work: Path) -> Fingerprint | None:
    """The fingerprint WORK was planned from, or None for a fresh WORK."""
    path = fingerprint_file(work)
    if not path.is_file():
        return None
    try:
        return load_fingerprint(path)
    except UserError as error:
        raise UserError(path, f"cannot tell which dataset WORK was planned from ({error.problem})",
                        hint=NEW_WORK_HINT) from None


def refuse_other_cases(work: Path, old: Sequence[str], new: Sequence[str]) -> None:
    """Before fingerprinting: a WORK planned from other cases is refused, naming a difference."""
    gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    if gone or added:
        difference = f"case '{gone[0]}' is not in the dataset" if gone else f"case '{added[0]}' is new"
        raise UserError(work, f"was planned from another dataset ({difference}; {len(old)} cases "
                        f"then, {len(new)} now)", hint=NEW_WORK_HINT)


def refuse_other_fingerprint(work: Path, old: Fingerprint, new: Fingerprint) -> None:
    """After fingerprinting: the same case names with other data is another dataset too."""
    if fingerprint_hash(old) != fingerprint_hash(new):
        refuse_other_cases(work, [c.case for c in old.cases], [c.case for c in new.cases])
        changed = next((n.case for o, n in zip(old.cases, new.cases) if o != n), None)
        what = f"case '{changed}' changed" if changed else "intensities, channels or labels changed"
        raise UserError(work, f"was planned from another version of this dataset ({what})",
                        hint=NEW_WORK_HINT)


def _write_outputs(work: Path, dataset_json: Path, fingerprint: Fingerprint, plans: Plans,
                   case_names: Sequence[str] | None, n_folds: int, folds_given: bool,
                   overwrite: bool, raw: Path | None = None, classes: CaseClasses | None = None,
                   check_network: NetworkCheck | None = None) -> Plans:
    """Write WORK's files, each atomically, plans.json last; the plans record the fingerprint's hash
    (and RAW), a dataset with case `classes` gets the classification head, WORK/classes.csv and
    splits stratified by class. Returns the plans written (`extra` names the nnU-Net
    splits_final.json when splits.json was copied from one)."""
    work = Path(work)
    copy = dataset_json.read_bytes()  # before --overwrite clears WORK (it may be WORK/dataset.json)
    plans = _with_origin(plans, fingerprint, raw)
    if classes is not None:
        plans = attach_class_head(plans, classes.names)
    if check_network is not None:  # after the class head: the chosen network must carry it
        check_network(plans)
    splits = None if overwrite else kept_splits(work, case_names, n_folds if folds_given else None)
    nnunet_splits = find_nnunet_splits(work, raw, case_names) if splits is None else None
    if overwrite:
        clear_work(work)
    remove_tmp_leftovers(work)
    target = work_dataset_file(work)
    if not target.is_file() or target.read_bytes() != copy:
        write_atomic(target, lambda tmp: tmp.write_bytes(copy))
    save_fingerprint(fingerprint, fingerprint_file(work))
    write_work_classes(work, classes)
    if nnunet_splits is not None:
        path, splits = nnunet_splits
        write_json_atomic(splits_file(work), splits)
        plans = replace(plans, extra={**plans.extra, SPLITS_SOURCE_KEY: str(path.resolve())})
    elif splits is None:
        write_splits(work, case_names, n_folds, None if classes is None else classes.of_case)
    if not overwrite:
        plans = keep_added_configurations(work, plans)
    save_plans(plans, plans_file(work))
    return plans


def find_nnunet_splits(work: Path, raw: Path | None, case_names: Sequence[str] | None
                       ) -> tuple[Path, Splits] | None:
    """nnU-Net's splits_final.json in WORK, else beside the raw dataset (in RAW or its parent folder),
    checked against the cases; None when there is none."""
    candidates = [work / NNUNET_SPLITS]
    if raw is not None:
        candidates += [Path(raw) / NNUNET_SPLITS, Path(raw).parent / NNUNET_SPLITS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    splits = check_splits_shape(path, read_json_checked(path))
    if case_names:
        check_splits_cases(path, splits, case_names)
    return path, splits


def kept_splits(work: Path, case_names: Sequence[str] | None, n_folds: int | None) -> Splits | None:
    """An existing splits.json, checked against the cases (and `--folds`), or None."""
    path = splits_file(work)
    if not path.is_file():
        return None
    splits = read_splits(work)
    if case_names:
        check_splits_cases(path, splits, case_names)
    if n_folds is not None and len(splits) != n_folds:
        raise UserError(path, f"holds {len(splits)} folds, not the {n_folds} of --folds",
                        hint="delete splits.json to split the cases again")
    log.info("keeping the existing %s (%d folds)", path, len(splits))
    return splits


def clear_work(work: Path) -> None:
    """Remove what an earlier plan and the later stages wrote into WORK (`plan --overwrite`)."""
    for name in WORK_OUTPUTS:
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.info("started %s afresh", work)


def summarize(plans: Plans) -> list[str]:
    """One human line per configuration: spacing, patch, stages, batch, predicted memory."""
    lines = []
    for name, config in plans.configurations.items():
        spacing = " × ".join(f"{s:.3g}" for s in config.spacing)
        patch = " × ".join(str(p) for p in config.patch_size)
        lines.append(f"{name:>18}: spacing {spacing} mm, patch {patch}, {config.network.n_stages} stages, "
                     f"batch {config.batch_size}, predicted {config.predicted_memory_bytes / GIB:.2f} GiB "
                     f"of {plans.gpu_memory_gb:g}")
    return lines
