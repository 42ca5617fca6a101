"""Setting up a training run: device, seeds, the fold's result folder, resume checks, loaders.

`prepare_run` decides what a `train` call does with an existing result folder:
fresh start, refusal (results exist, neither --resume nor --overwrite), resume from the newest
checkpoint that loads, or "already finished".
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from nnlite.common.layout import fold_folder, plans_file
from nnlite.common.cli import default_workers
from nnlite.common.errors import UserError
from nnlite.common.files import remove_tmp_leftovers, write_json_atomic
from nnlite.common.schema import to_jsonable
from nnlite.plans import Plans
from nnlite.training import checkpoints, progress
from nnlite.training.config import (RESUMABLE_CHANGES, TrainConfig, config_differences, config_from_dict,
                                    config_to_dict)
from nnlite.training.distributed import Rank, broadcast_int, forced_foreground, split_batch
from nnlite.training.pretrained import resumed_settings
from nnlite.training.tracking import Trackers, open_trackers
from nnlite.training.schedule import (Schedule, check_extension, continued_schedule, describe, planned_schedule,
                                      saved_schedule)

log = logging.getLogger(__name__)

SEED_RANGE = 2**31  # a drawn seed lies in [0, SEED_RANGE)
VAL_SEED_OFFSET = 1_000_003  # validation batches use seed + this, a stream apart from training's
RANK_SEED_STRIDE = 7_919  # rank r draws its samples with seed + r · this (different per rank)
PLAN_KEYS_COMPARED = ("labels", "channel_names", "transpose", "intensity_per_channel")
CONFIG_FILE = "config.json"


@dataclass
class Run:
    """The result folder of one fold and how this call uses it."""

    folder: Path
    config: TrainConfig  # resolved: seed filled in
    checkpoint: dict[str, Any] | None = None  # resume from this
    finished: bool = False  # nothing left to train
    lr_schedule: Schedule | None = None  # the poly segments to train with (training/schedule.py)
    log_handler: logging.Handler | None = field(default=None, repr=False)
    tracker: Trackers = field(default_factory=Trackers, repr=False)  # logging.backends (rank 0)

    def close(self) -> None:
        self.tracker.close()
        if self.log_handler is not None:
            logging.getLogger("nnlite").removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, numpy and random; on CPU also demand deterministic algorithms."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def check_configuration(work: Path, plans: Plans, config: TrainConfig) -> None:
    if config.configuration not in plans.configurations:
        raise UserError(plans_file(work), f"has no configuration '{config.configuration}' "
                        f"(planned: {', '.join(plans.configurations)})")


def discard_unstarted(run: Run) -> None:
    """Remove the fold folder of a run that failed before any checkpoint was in it."""
    if not any(run.folder.glob("checkpoint_*.pt")):
        shutil.rmtree(run.folder, ignore_errors=True)


def prepare_run(work: Path, plans: Plans, config: TrainConfig, *, resume: bool, overwrite: bool,
                rank: Rank) -> Run:
    """Create / check the fold's result folder and pick the checkpoint to resume from."""
    check_configuration(work, plans, config)
    folder = fold_folder(work, config.configuration, config.fold)
    has_results = folder.is_dir() and any(folder.glob("checkpoint_*.pt"))
    if has_results and not (resume or overwrite):
        raise UserError(folder, "already holds results; use --resume to continue or --overwrite "
                        "to start again")
    if overwrite and rank.is_main and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if rank.is_main:
        remove_tmp_leftovers(folder)
    checkpoint = checkpoints.load_resumable(folder) if resume else None
    if checkpoint is None:
        if resume:
            log.info("%s: no checkpoint to resume from; starting from scratch", folder)
        config = with_seed(config, None, rank)
        run = Run(folder, config, lr_schedule=planned_schedule(config))
    else:
        run = resumed_run(folder, plans, config, checkpoint, rank)
    if rank.is_main:
        start_logs(run, resumed=checkpoint is not None)
        start_tracking(run, work, plans)
    return run


def start_tracking(run: Run, work: Path, plans: Plans) -> None:
    """Open the `logging.backends` trackers with plan and settings; a failure leaves no new fold."""
    name = f"{work.resolve().name} {run.config.configuration} fold {run.config.fold}"
    first_epoch = int(run.checkpoint["epoch"]) if run.checkpoint is not None else 0
    try:
        run.tracker = open_trackers(run.config.logging.backends, run.folder, name, to_jsonable(plans),
                                    config_to_dict(run.config), first_epoch)
    except BaseException:
        run.close()
        discard_unstarted(run)
        raise


def with_seed(config: TrainConfig, saved: int | None, rank: Rank) -> TrainConfig:
    """Fill in the seed: the user's, else the checkpoint's, else a fresh draw (shared by all ranks)."""
    if config.seed is not None:
        return config
    seed = saved if saved is not None else broadcast_int(random.SystemRandom().randrange(SEED_RANGE), rank)
    return replace(config, seed=seed)


def resumed_run(folder: Path, plans: Plans, config: TrainConfig, checkpoint: dict[str, Any],
                rank: Rank) -> Run:
    """Check that plan and settings match the checkpoint's; a finished run has nothing to do."""
    saved = config_from_dict(checkpoint["config"], where="checkpoint config")
    config = with_seed(config, saved.seed, rank)
    config = resumed_settings(config, saved)  # a resume keeps the pretrained record
    differences = config_differences(saved, config, ignore=RESUMABLE_CHANGES)
    differences += plan_differences(checkpoint["plan"], to_jsonable(plans), config.configuration)
    if differences:
        raise UserError(folder, "cannot resume: settings differ from the checkpoint's ("
                        + "; ".join(differences) + "); use --overwrite to start again")
    done = int(checkpoint["epoch"])
    check_extension(done, config.training.epochs, folder)
    schedule = saved_schedule(checkpoint, saved)
    if done == config.training.epochs:
        log.info("%s: training already finished (%d epochs); nothing to do", folder, done)
        return Run(folder, config, checkpoint, finished=True, lr_schedule=schedule)
    extended = continued_schedule(schedule, config, done)
    if extended != schedule:
        log.info("poly learning-rate horizon changed from %d to %d epochs", saved.training.epochs,
                 config.training.epochs)
    log.info("resuming from epoch %d of %d", done + 1, config.training.epochs)
    return Run(folder, config, checkpoint, lr_schedule=extended)


def plan_differences(saved: dict[str, Any], current: dict[str, Any], configuration: str) -> list[str]:
    """`plans.<key>` entries that differ between the checkpoint's plan and plans.json."""
    keys = [("configurations", configuration), *((key,) for key in PLAN_KEYS_COMPARED)]
    differences = []
    for path in keys:
        old, new = saved, current
        for part in path:
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            differences.append(f"plans.{'.'.join(path)} changed since the checkpoint")
    return differences


def start_logs(run: Run, resumed: bool) -> None:
    """log.txt handler, config.json, and metrics.jsonl matching the checkpoint's records."""
    run.log_handler = progress.attach_log_file(run.folder)
    if logging.getLogger("nnlite").level == logging.NOTSET:
        logging.getLogger("nnlite").setLevel(logging.INFO)
    write_json_atomic(run.folder / CONFIG_FILE, config_to_dict(run.config))
    metrics = run.checkpoint["metrics"] if run.checkpoint is not None else []
    progress.rewrite_metrics(run.folder, metrics)
    if resumed and len(run.lr_schedule or ()) > 1:  # an extended run: its LR rule, in log.txt too
        log.info(describe(run.lr_schedule, run.config))


@dataclass
class Batches:
    """The endless training and validation batch streams of a run."""

    train: Iterator[dict[str, Any]]
    val: Iterator[dict[str, Any]]

    def close(self) -> None:
        """Stop the loader workers."""
        for stream in (self.train, self.val):
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loader_workers(config: TrainConfig) -> int:
    """data.workers, or by default every command's --workers default (the CPU count, capped)."""
    return default_workers() if config.data.workers is None else config.data.workers


def build_batches(work: Path, plans: Plans, config: TrainConfig, train_cases: list[str],
                  val_cases: list[str], batch_size: int, epoch: int, rank: Rank,
                  device: torch.device) -> Batches:
    """Loaders that start at batch epoch · iterations, so a resumed run draws what it would have.

    With several ranks, each draws its share of the global batch with its own seed and the
    global foreground-oversampling rule.
    """
    from nnlite.loading.loader import build_loader  # noqa: PLC0415 - keeps `--help` fast

    t = config.training
    local_batch, _ = split_batch(batch_size, rank)
    forced = forced_foreground(batch_size, config.data.oversample_foreground, rank)
    seed = config.seed + rank.rank * RANK_SEED_STRIDE
    common = dict(work=work, plans=plans, config_name=config.configuration, batch_size=local_batch,
                  forced=forced, workers=loader_workers(config), device=device)
    train = build_loader(case_names=train_cases, augment=config.data.augment, seed=seed,
                         start_batch=epoch * t.iters_per_epoch, augment_on=config.data.augment_on, **common)
    val = build_loader(case_names=val_cases, augment=False, seed=seed + VAL_SEED_OFFSET,
                       start_batch=epoch * t.val_iters, **common)
    return Batches(iter(train), iter(val))
