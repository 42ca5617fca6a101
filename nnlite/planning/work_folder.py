"""The `plan` stage, files in and files out: RAW (or a fingerprint file) → WORK.

Writes `WORK/dataset.json` (a copy), `fingerprint.json`, `plans.json` and `splits.json` (5 seeded
folds; a user's file is kept and checked), each atomically and only once everything is decided.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import read_json, remove_tmp_leftovers, write_atomic, write_json_atomic
from nnlite.data.dataset import load_dataset, make_splits
from nnlite.planning.fingerprint import extract_fingerprint, load_fingerprint_file
from nnlite.planning.memory_budget import DEFAULT_GPU_MEMORY_GB, GIB
from nnlite.planning.planner import check_arguments, plan_experiment
from nnlite.plans import RAW_PATH_KEY, Fingerprint, Plans, save_fingerprint, save_plans

log = logging.getLogger(__name__)


def plan_dataset(raw: Path, work: Path, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
                 configs: Sequence[str] | None = None, workers: int = 1, memory_model: str = "bytes") -> Plans:
    """RAW → WORK/dataset.json, fingerprint.json, plans.json, splits.json (all written at the end)."""
    check_arguments(gpu_memory_gb, configs, memory_model)  # before the (long) fingerprint
    dataset = load_dataset(raw)
    fingerprint = extract_fingerprint(dataset, workers)
    plans = plan_experiment(fingerprint, gpu_memory_gb, configs, dataset_name=Path(raw).resolve().name,
                            memory_model=memory_model)
    # preprocess, postprocess and the final validation find the raw images and labels through this
    plans = replace(plans, extra={**plans.extra, RAW_PATH_KEY: str(Path(raw).resolve())})
    names = [c.case for c in fingerprint.cases]
    _write_outputs(work, (Path(raw) / "dataset.json").read_bytes(), fingerprint, plans, names)
    return plans


def plan_from_fingerprint(fingerprint_file: Path, work: Path, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
                          configs: Sequence[str] | None = None, memory_model: str = "bytes") -> Plans:
    """nnlite's fingerprint.json or nnU-Net's dataset_fingerprint.json (+ a dataset.json next to it
    or in WORK) → WORK/plans.json, fingerprint.json, dataset.json and, with real case names, splits.json."""
    fingerprint_file, work = Path(fingerprint_file), Path(work)
    candidates = [fingerprint_file.parent / "dataset.json", work / "dataset.json"]
    dataset_json = next((p for p in candidates if p.is_file()), None)
    if dataset_json is None:
        raise UserError(fingerprint_file, f"needs a dataset.json next to it or in {work}")
    try:
        meta = read_json(dataset_json)
    except ValueError as error:
        raise UserError(dataset_json, f"not valid JSON ({error})") from None
    fingerprint, is_nnlite = load_fingerprint_file(fingerprint_file, meta)
    name = str(meta.get("name", fingerprint_file.resolve().parent.name))
    plans = plan_experiment(fingerprint, gpu_memory_gb, configs, dataset_name=name, memory_model=memory_model)
    names = [c.case for c in fingerprint.cases] if is_nnlite else None
    _write_outputs(work, dataset_json.read_bytes(), fingerprint, plans, names)
    return plans


def _write_outputs(work: Path, dataset_json: bytes, fingerprint: Fingerprint, plans: Plans,
                   case_names: Sequence[str] | None) -> None:
    """Write everything atomically; a user's splits.json is kept (and checked)."""
    work = Path(work)
    remove_tmp_leftovers(work)
    target = work / "dataset.json"
    if not target.is_file() or target.read_bytes() != dataset_json:
        write_atomic(target, lambda tmp: tmp.write_bytes(dataset_json))
    save_fingerprint(fingerprint, work / "fingerprint.json")
    save_plans(plans, work / "plans.json")
    splits = work / "splits.json"
    if splits.is_file():
        _check_splits(splits)
        log.info("keeping the existing %s", splits)
    elif case_names:
        write_json_atomic(splits, make_splits(case_names))
    else:
        log.info("no splits.json: an nnU-Net fingerprint does not name its cases")


def _check_splits(path: Path) -> None:
    try:
        splits = read_json(path)
    except ValueError as error:
        raise UserError(path, f"not valid JSON ({error})") from None
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise UserError(path, "must be a list of {\"train\": [...], \"val\": [...]} folds")


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
