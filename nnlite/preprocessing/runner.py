"""Preprocess the whole dataset: every planned configuration, cases in parallel worker processes.

Fills `WORK/preprocessed/<data_identifier>/` for each planned configuration (3d_cascade_fullres
shares 3d_fullres's folder) with `pipeline.preprocess_case`'s files; cases already complete are
kept unless `overwrite`, `.tmp` leftovers of an interrupted run are removed first. A folder made
with another plan or other cases (its record beside it, see `records`) is emptied and redone.
Everything that needs no voxel is checked first: the folders are writable, and the raw dataset has
the plan's channels, labels and cases.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nnlite.common.layout import fingerprint_file, plans_file, preprocessed_folder, preprocessed_root
from nnlite.common.errors import UserError
from nnlite.common.cli import default_workers
from nnlite.common.files import ensure_writable_dir, remove_tmp_leftovers, write_json_atomic
from nnlite.common.host_memory import (GIB, MemoryBudget, limit_address_space, memory_budget, peak_resident_bytes,
                                       private_bytes, resident_bytes)
from nnlite.data.dataset import CaseFiles, RawDataset, check_case, load_dataset
from nnlite.plans import RAW_PATH_KEY, CaseFingerprint, Plans, load_fingerprint, load_plans
from nnlite.preprocessing.pipeline import is_preprocessed, preprocess_case, save_preprocessed
from nnlite.preprocessing.records import make_record, mismatch, read_record, record_path
from nnlite.preprocessing.scheduling import case_footprint, plan_workers, workers_after_measuring

log = logging.getLogger(__name__)

REPLAN_HINT = "pass the raw dataset the plan was made from with --raw, or plan this one into a new WORK"


@dataclass(frozen=True)
class _Job:
    """One case, the (configuration, output folder) pairs still to write for it, and the bytes
    preprocessing it is estimated to hold at its peak (0: unknown)."""

    case: CaseFiles
    targets: tuple[tuple[str, Path], ...]
    estimate: int = 0


@dataclass(frozen=True)
class _Outcome:
    """A job's result: its failure (where, problem) or None; out_of_memory when that failure was a
    MemoryError; base and peak: the worker's resident bytes before the job and its growth in it."""

    case: str
    failure: tuple[str, str] | None
    out_of_memory: bool = False
    base: int = 0
    peak: int = 0


# What every job of a run shares; set once per worker process (the initializer), not pickled
# with each job: unpickling the dataset's 200+ Paths per job used to cost more than the job.
_SHARED: dict[str, object] = {}


def folders_to_fill(work: Path, plans: Plans, configs: Sequence[str] | None) -> dict[str, Path]:
    """config name → WORK/preprocessed/<data_identifier>, one config per identifier.

    3d_cascade_fullres shares 3d_fullres's data_identifier, so its data is made only once.
    """
    names = list(plans.configurations) if not configs else list(configs)
    unknown = [n for n in names if n not in plans.configurations]
    if unknown:
        raise UserError("--configs", f"'{unknown[0]}' is not planned (planned: "
                                     f"{', '.join(plans.configurations)})")
    chosen: dict[str, Path] = {}
    for name in names:
        folder = preprocessed_folder(work, plans.configurations[name].data_identifier)
        if folder not in chosen.values():
            chosen[name] = folder
    return chosen


def _init_worker(dataset: RawDataset, plans: Plans, subprocess: bool = True, allowance: int | None = None) -> None:
    """Worker initializer: shared inputs, one BLAS thread per process (N workers use N cores), and
    the worker's share of the memory budget as an address-space limit."""
    _SHARED.update(dataset=dataset, plans=plans)
    if not subprocess:
        return
    if allowance is not None:
        limit_address_space(allowance)
    gc.freeze()  # the inherited objects never become garbage: keep them out of every GC pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS may oversubscribe, results are the same
        return
    threadpool_limits(1)


def _run_job(job: _Job) -> _Outcome:
    """Preprocess one case for its targets (see `_Outcome`)."""
    base, resident = private_bytes(), resident_bytes()
    try:
        _preprocess_job(job)
        return _Outcome(job.case.name, None, base=base, peak=max(0, peak_resident_bytes() - resident))
    except UserError as error:
        return _Outcome(job.case.name, (error.where, error.problem))
    except MemoryError:  # the worker's share of the budget: retried alone, else reported
        return _Outcome(job.case.name, (str(job.case.images[0]), "does not fit the memory budget"), True)
    except Exception as error:  # one broken case must not cost the others their output
        return _Outcome(job.case.name, (str(job.case.images[0]), f"{type(error).__name__}: {error}"))


def _preprocess_job(job: _Job) -> None:
    checked = check_case(_SHARED["dataset"], job.case)
    plans = _SHARED["plans"]
    for config_name, folder in job.targets:
        data, seg, props = preprocess_case(checked.data, checked.seg, checked.spacing, plans,
                                           config_name, case=job.case.name, affine=checked.affine)
        save_preprocessed(folder, data, seg, props)
        del data, seg  # a worker holds one case at a time


def _jobs(dataset: RawDataset, folders: dict[str, Path], overwrite: bool, plans: Plans,
          fingerprints: dict[str, CaseFingerprint]) -> list[_Job]:
    """The cases still to do, the largest estimated footprint first."""
    jobs = []
    for case in dataset.cases:
        targets = tuple((name, folder) for name, folder in folders.items()
                        if overwrite or not is_preprocessed(folder, case.name, case.label is not None))
        if targets:
            known = fingerprints.get(case.name)
            estimate = case_footprint(known, plans, [name for name, _ in targets]) if known else 0
            jobs.append(_Job(case, targets, estimate))
    return sorted(jobs, key=lambda job: -job.estimate)


def _pool(jobs: list[_Job], dataset: RawDataset, plans: Plans, workers: int, allowance: int | None
          ) -> Iterator[_Outcome]:
    if allowance is None and (workers <= 1 or len(jobs) <= 1):
        _init_worker(dataset, plans, subprocess=False)
        yield from map(_run_job, jobs)
        return
    # under a budget, fresh (spawned) workers: a forked one inherits its parent's freed heap, which
    # it would fill without mapping more (the limit would not hold) and without its RSS growing
    context = multiprocessing.get_context("spawn" if allowance is not None else None)
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), initializer=_init_worker,
                             initargs=(dataset, plans, True, allowance), mp_context=context) as pool:
        futures = [pool.submit(_run_job, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _run_all(jobs: list[_Job], dataset: RawDataset, plans: Plans, workers: int, budget: MemoryBudget
             ) -> Iterator[_Outcome]:
    """Every job within the budget: sized by the estimates, or by the largest case measured
    alone; a case out of memory among several workers is retried alone with the whole budget."""
    plan = plan_workers([job.estimate for job in jobs], workers, budget.total, budget.explicit, resident_bytes())
    if plan.measure_first and jobs:
        first = next(_pool(jobs[:1], dataset, plans, 1, plan.allowance))
        yield first
        jobs = jobs[1:]
        if first.failure is None:
            plan = workers_after_measuring(first.peak, first.base, workers, budget.total, resident_bytes())
            log.info("largest case measured at %.2f GB: %d %s within %s", first.peak / GIB, plan.workers,
                     "worker" if plan.workers == 1 else "workers", budget.describe())
    retry = []
    by_name = {job.case.name: job for job in jobs}
    for outcome in _pool(jobs, dataset, plans, plan.workers, plan.allowance):
        if outcome.out_of_memory and plan.workers > 1:
            retry.append(by_name[outcome.case])
        else:
            yield outcome
    for job in retry:  # alone: the whole budget for this one case
        yield next(_pool([job], dataset, plans, 1, max(0, budget.total - resident_bytes())))


def _case_fingerprints(work: Path) -> dict[str, CaseFingerprint]:
    path = fingerprint_file(work)
    return {case.case: case for case in load_fingerprint(path).cases} if path.is_file() else {}


def _budget_failure(outcome: _Outcome, budget: MemoryBudget) -> tuple[str, str]:
    where, _ = outcome.failure
    return where, f"does not fit {budget.describe()} even alone (raise --memory-gb, or free memory)"


def check_raw_matches_plan(dataset: RawDataset, plans: Plans, work: Path) -> None:
    """The raw dataset has the plan's channels, labels and (per fingerprint.json) cases."""
    where = dataset.root / "dataset.json"
    if list(dataset.channel_names.values()) != list(plans.channel_names.values()):
        raise UserError(where, f"has channels {list(dataset.channel_names.values())}; plans.json "
                        f"was made for {list(plans.channel_names.values())}", hint=REPLAN_HINT)
    if dataset.labels != plans.labels:
        raise UserError(where, f"has labels {dataset.labels}; plans.json was made for {plans.labels}",
                        hint=REPLAN_HINT)
    fingerprint = fingerprint_file(work)
    if not fingerprint.is_file():
        return
    planned = {c.case for c in load_fingerprint(fingerprint).cases}
    present = {c.name for c in dataset.cases}
    if present != planned:
        gone, added = sorted(planned - present), sorted(present - planned)
        problem = (f"lacks case '{gone[0]}' of the plan" if gone else f"has case '{added[0]}' that "
                   f"was not planned")
        raise UserError(dataset.root, f"{problem} ({len(present)} cases, {len(planned)} planned)",
                        hint=REPLAN_HINT)


def start_folders(plans: Plans, folders: dict[str, Path], cases: list[str]) -> None:
    """Empty every folder made with another plan or other cases (saying so); record the plan."""
    for name, folder in folders.items():
        wanted = make_record(plans, name, cases)
        saved = read_record(folder)
        problem = mismatch(saved, wanted)
        if problem is not None and (saved is not None or (folder.is_dir() and any(folder.iterdir()))):
            log.info("%s: redoing %s: %s", name, folder, problem)
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        remove_tmp_leftovers(folder)
        if problem is not None:
            write_json_atomic(record_path(folder), wanted)


def run_preprocessing(work: str | Path, configs: Sequence[str] | None = None,
                      workers: int | None = None, overwrite: bool = False,
                      raw: str | Path | None = None, memory_gb: float | None = None) -> int:
    """Preprocess every case of the raw dataset for the planned configurations; returns cases done.

    The raw dataset is `plans.extra["raw_path"]` unless `raw` is given. Finished cases are skipped
    unless `overwrite`. A failing case is logged by file name; the others are still written, and a
    UserError naming the first failure is raised at the end. `memory_gb`: the budget of the whole
    process tree (default: the available memory minus a margin; see `scheduling`).
    """
    budget = memory_budget(memory_gb)
    work = Path(work)
    workers = workers or default_workers()
    plans = load_plans(plans_file(work))
    folders = folders_to_fill(work, plans, configs)
    raw = raw if raw is not None else plans.extra.get(RAW_PATH_KEY)
    if not raw:
        raise UserError(plans_file(work),
                        f"extra.{RAW_PATH_KEY} is missing (re-run nnlite.plan, or pass --raw)")
    dataset = load_dataset(raw)
    check_raw_matches_plan(dataset, plans, work)
    ensure_writable_dir(preprocessed_root(work), "preprocessed folder")
    start_folders(plans, folders, [case.name for case in dataset.cases])
    jobs = _jobs(dataset, folders, overwrite, plans, _case_fingerprints(work))
    log.info("preprocessing %d of %d cases for %s (%d %s)", len(jobs), len(dataset.cases),
             ", ".join(folders), workers, "worker" if workers == 1 else "workers")
    failures = []
    with logging_redirect_tqdm(), tqdm(total=len(jobs), desc="preprocess", unit="case") as bar:
        for outcome in _run_all(jobs, dataset, plans, workers, budget):
            if outcome.failure is not None:
                failures.append(_budget_failure(outcome, budget) if outcome.out_of_memory else outcome.failure)
                log.error("failed: %s: %s", *failures[-1])
            bar.update()
    if failures:
        where, problem = failures[0]
        raise UserError(where, f"{problem} ({len(failures)} of {len(jobs)} cases failed; "
                               f"the other cases were written)")
    return len(jobs)
