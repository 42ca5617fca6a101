"""Training of one fold, readable top to bottom: `train()` → `train_one_epoch`, `validate`, checkpoints.

nnU-Net's trainer (Isensee et al., Nature Methods 2021) with its defaults in configs/default.yaml: SGD (momentum 0.99,
Nesterov, weight decay 3e-5), poly learning rate from 1e-2 (per epoch by default, per iteration
as an option), gradient clipping at 12, deep supervision, AMP on CUDA. Differences that matter:

- every random draw derives from the seed (network init from `torch.manual_seed(seed)`, batch i of
  the loader from `(seed, i)`), so a seeded CPU run is bit-reproducible and `--resume` continues
  exactly where the checkpoint left off, without saving worker state;
- checkpoint_latest is written every epoch (configurable), atomically, with the RNG states, the
  metrics, the resolved settings and the plan; it always loads with `weights_only=True`;
- bf16 autocast where the GPU supports it (no grad scaler needed), fp16 + GradScaler otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nnlite.common.layout import plans_file, results_root
from nnlite.common.files import ensure_writable_dir
from nnlite.common.schema import to_jsonable
from nnlite.network import build_network, compile_network
from nnlite.network.builders import check_planned_network
from nnlite.network.classifier import ClassTargets, joint_loss, segmentation_output
from nnlite.network.loss import build_loss
from nnlite.network.region_loss import build_region_loss, region_confusion_counts
from nnlite.plans import Plans, load_plans
from nnlite.training import checkpoints, progress
from nnlite.training.class_targets import class_targets
from nnlite.training.config import TrainConfig, config_to_dict
from nnlite.training.distributed import (Rank, barrier, broadcast_int, close_distributed, init_distributed,
                                         mean_across_ranks, sum_across_ranks)
from nnlite.training.folds import fold_cases
from nnlite.training.lowres_predictions import prepare_if_cascade
from nnlite.network.hardware import resolve_device
from nnlite.training.precision import amp_dtype
from nnlite.training.pretrained import set_encoder_frozen, start_from_pretrained
from nnlite.training.schedule import (Schedule, learning_rate, planned_schedule, poly_lr,  # noqa: F401 (re-exported)
                                      schedule_to_list)
from nnlite.training.tracking import check_installed
from nnlite.training.validation import is_validated, validate_fold
from nnlite.training.run_setup import (Run, build_batches, check_configuration, discard_unstarted,
                                       prepare_run, seed_everything)

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What changes while training (and what a checkpoint restores)."""

    network: nn.Module  # the bare network (un-DDP'd): its state_dict goes into checkpoints
    model: nn.Module  # what is called: the network or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    device: torch.device
    epoch: int  # epochs completed
    metrics: list[dict[str, Any]]
    classes: ClassTargets | None = None  # a network with a classification head: the class loss's inputs
    class_loss: float | None = None  # with a head: the last epoch's mean class loss (this rank's)
    lr_schedule: Schedule | None = None  # None: the planned poly decay; an extended run: its segments


def train_folds(work: Path, config: TrainConfig, folds: Sequence[str], *, resume: bool = False,
                overwrite: bool = False) -> list[Path]:
    """Train each fold in turn; under torchrun every rank runs this and joins the process group."""
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    rank = init_distributed("cuda" if wants_cuda else "cpu", config.distributed.timeout_minutes)
    try:
        return [train(work, replace(config, fold=str(fold)), resume=resume, overwrite=overwrite, rank=rank)
                for fold in folds]
    finally:
        close_distributed()


def train(work: Path, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          rank: Rank = Rank()) -> Path:
    """Train `config.fold` of `config.configuration` in `work`; returns the fold's result folder.

    Everything that needs no training is checked before the fold folder is made; a run that fails
    before its first checkpoint removes the folder it made.
    """
    plans = load_plans(plans_file(work))
    check_configuration(work, plans, config)
    check_installed(config.logging.backends)  # a named tracker that is missing: before any folder
    check_planned_network(plans, config.configuration)  # a builder that fails: before any folder is made
    cases = fold_cases(work, plans, config)
    if rank.is_main:
        ensure_writable_dir(results_root(work), "results folder")
    barrier(rank)
    # a cascade stage: the lowres cross-validation becomes extra input channels (shared by the ranks)
    prepare_if_cascade(work, plans, config.configuration, rank)
    device = resolve_device(config.device)
    run = prepare_run(work, plans, config, resume=resume, overwrite=overwrite, rank=rank)
    try:
        train_fold(work, plans, run, device, rank, cases)
    except BaseException:
        run.close()
        if rank.is_main:
            discard_unstarted(run)
        raise
    finally:
        run.close()
    return run.folder


def train_fold(work: Path, plans: Plans, run: Run, device: torch.device, rank: Rank,
               cases: tuple[list[str], list[str]]) -> None:
    """The epochs left in `run`, checkpoint_final, then the final validation."""
    config = run.config
    train_cases, val_cases = cases
    state = build_state(plans, config, device, run.checkpoint, rank)
    start_from_pretrained(state.network, plans, config, run.folder, run.checkpoint is not None, rank.is_main)
    state.lr_schedule = run.lr_schedule
    state.classes = class_targets(work, plans, config, train_cases)
    if run.finished:
        # rank 0 decides, so every rank takes part in the shared validation or none does
        if config.validation.enabled and not broadcast_int(int(is_validated(run.folder)), rank):
            run.tracker.log_summary(validate_fold(work, run.folder, state.network, plans, config, val_cases,
                                                  state.metrics, rank))
        return
    batch_size = config.training.batch_size or plans.configurations[config.configuration].batch_size
    batches = build_batches(work, plans, config, train_cases, val_cases, batch_size, state.epoch, rank,
                            device)
    log.info("training %s fold %s on %s: %d training / %d validation cases, batch %d, epochs %d-%d",
             config.configuration, config.fold, device, len(train_cases), len(val_cases),
             batch_size, state.epoch + 1, config.training.epochs)
    loss_fn = training_loss(plans, config, across_ranks=rank.distributed).to(device)
    with batches, logging_redirect_tqdm(), progress_bar(config, state, rank) as bar:
        for epoch in range(state.epoch, config.training.epochs):
            started = time.perf_counter()
            set_encoder_frozen(state.network, config, epoch)  # pretrained.frozen_encoder_epochs
            train_loss = mean_across_ranks(train_one_epoch(state, loss_fn, batches.train, config, epoch, bar),
                                           rank)
            val_loss, pseudo_dice = validate(state, loss_fn, batches.val, config, plans.num_classes, rank,
                                             plans.ignore_label, regions=plans.num_classes if plans.sigmoid_outputs else 0)
            record = epoch_record(state, epoch, train_loss, val_loss, pseudo_dice, config, started)
            if state.class_loss is not None:  # a classification head: is it learning?
                record["class_loss"] = mean_across_ranks(state.class_loss, rank)
            end_epoch(run, state, record, plans, config, rank)
            bar.set_postfix(loss=f"{train_loss:.3f}", ema=f"{record['ema_pseudo_dice']:.3f}")
    finish(run, state, plans, config, rank)
    if config.validation.enabled:  # every rank predicts its share of the cases
        run.tracker.log_summary(validate_fold(work, run.folder, state.network, plans, config, val_cases,
                                              state.metrics, rank))
    barrier(rank)


def training_loss(plans: Plans, config: TrainConfig, across_ranks: bool = False) -> nn.Module:
    """Dice + CE on labels, or Dice + BCE per region for a region dataset; deep supervision both.
    across_ranks: under DDP, batch Dice sums its statistics over every rank's batch."""
    plan = plans.configurations[config.configuration]
    if plans.sigmoid_outputs:
        return build_region_loss(plan.network, plan.batch_dice, plans.num_classes, across_ranks)
    return build_loss(plan.network, plan.batch_dice, ignore_label=plans.ignore_label, across_ranks=across_ranks)


def build_state(plans: Plans, config: TrainConfig, device: torch.device,
                checkpoint: dict[str, Any] | None, rank: Rank) -> RunState:
    """Network, SGD, grad scaler and AMP type; restored from `checkpoint` when resuming."""
    seed_everything(config.seed, config.deterministic and device.type == "cpu")
    plan = plans.configurations[config.configuration]
    network = build_network(plans, config.configuration)
    network.skip_lowest_head = True  # its loss weight is 0 (as in nnU-Net's trainer): do not compute it
    network.to(device)
    t = config.training
    optimizer = torch.optim.SGD(network.parameters(), lr=t.initial_lr, momentum=t.momentum,
                                nesterov=t.nesterov, weight_decay=t.weight_decay)
    dtype = amp_dtype(t.amp, device, plan.network, plan.patch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state = RunState(network, network, optimizer, scaler, dtype, device, 0, [])
    if checkpoint is not None:
        restore_state(state, checkpoint)
    # only what is called is compiled: checkpoints save `network`, without `_orig_mod.` keys
    state.model = compile_network(network, wants_compile(t.compile, device))
    if rank.distributed:
        # the lowest head is never computed, so its weights get no gradient: DDP must know
        state.model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    return state


def wants_compile(mode: str, device: torch.device) -> bool:
    """training.compile: on, off, or auto = on for CUDA. On a CPU a step got only ~10 % faster
    (benchmarks/network.py) for minutes of compiling, so auto leaves it off there."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def restore_state(state: RunState, checkpoint: dict[str, Any]) -> None:
    """Load weights, optimizer, scaler, epoch, metrics and RNG states from a checkpoint."""
    state.network.load_state_dict(checkpoint["network"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.scaler is not None and "grad_scaler" in checkpoint:
        state.scaler.load_state_dict(checkpoint["grad_scaler"])
    state.epoch = int(checkpoint["epoch"])
    state.metrics = list(checkpoint["metrics"])
    checkpoints.restore_rng(checkpoint["rng"])


def train_one_epoch(state: RunState, loss_fn: nn.Module, batches: Iterator[dict[str, Any]],
                    config: TrainConfig, epoch: int, bar: tqdm) -> float:
    """`iters_per_epoch` SGD steps; returns this rank's mean training loss."""
    state.model.train()
    total = torch.zeros((), dtype=torch.float64, device=state.device)
    class_total = torch.zeros((), dtype=torch.float64, device=state.device)
    for iteration, batch in enumerate(itertools.islice(batches, config.training.iters_per_epoch)):
        for group in state.optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch, iteration, state.lr_schedule)
        parts: dict[str, torch.Tensor] = {}
        total += train_step(state, loss_fn, batch, config.training.grad_clip, parts)
        if "class" in parts:
            class_total += parts["class"]
        bar.update(1)
    if state.classes is not None:
        state.class_loss = float(class_total.cpu()) / config.training.iters_per_epoch
    return float(total.cpu()) / config.training.iters_per_epoch


def train_step(state: RunState, loss_fn: nn.Module, batch: dict[str, Any], grad_clip: float,
               parts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One forward/backward/step on batch {"data": (B, C, *P), "target": [(B, 1, *P_i) per DS level]}
    (`parts`: see `joint_loss`)."""
    data = batch["data"].to(state.device, non_blocking=True)
    targets = [t.to(state.device, non_blocking=True).long() for t in batch["target"]]
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(state):
        loss = joint_loss(loss_fn, state.model(data), targets, batch.get("cases", ()), state.classes, parts)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(state.network.parameters(), grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        nn.utils.clip_grad_norm_(state.network.parameters(), grad_clip)
        state.optimizer.step()
    return loss.detach().double()


@torch.no_grad()
def validate(state: RunState, loss_fn: nn.Module, batches: Iterator[dict[str, Any]],
             config: TrainConfig, num_classes: int, rank: Rank,
             ignore_label: int | None = None, regions: int = 0) -> tuple[float, list[float]]:
    """Validation loss and per-class (or, with `regions` > 0, per-region) pseudo-Dice on `val_iters`
    patches.

    Pseudo-Dice (nnU-Net's online evaluation): full-resolution output → argmax (regions: sigmoid > 0.5); TP/FP/FN
    summed over all batches (and ranks), Dice = 2TP / (2TP + FP + FN) per foreground class or region
    (NaN where it never occurs). Voxels with the ignore label count nowhere.
    """
    state.model.eval()
    counts = torch.zeros(3, regions or num_classes - 1, dtype=torch.float64)  # rows: TP, FP, FN
    total, n = 0.0, 0
    for batch in itertools.islice(batches, config.training.val_iters):
        data = batch["data"].to(state.device)
        targets = [t.to(state.device).long() for t in batch["target"]]
        with autocast(state):
            outputs = state.model(data)
            total += float(joint_loss(loss_fn, outputs, targets, batch.get("cases", ()), state.classes))
        seg = segmentation_output(outputs)  # a deep-supervision list, or one tensor (a network without)
        seg = seg[0] if isinstance(seg, list) else seg  # (B, K, *patch): the full-resolution logits
        if regions:
            counts += region_confusion_counts(seg, targets[0], regions)
        else:
            counts += confusion_counts(seg.argmax(1), targets[0][:, 0], num_classes, ignore_label)
        n += 1
    tp, fp, fn = sum_across_ranks(counts, rank)
    loss_sum, batches_seen = sum_across_ranks(torch.tensor([total, n], dtype=torch.float64), rank)
    loss = float(loss_sum / batches_seen) if batches_seen else math.nan
    dice = (2 * tp / (2 * tp + fp + fn)).tolist()  # 0/0 → NaN: class absent from every patch
    return loss, dice


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_label: int | None = None) -> torch.Tensor:
    """(3, K-1) float64 TP, FP, FN per foreground class of label maps pred, target (B, *S);
    voxels whose target is `ignore_label` are left out."""
    rows = []
    for label in range(1, num_classes):
        p, t = pred == label, target == label
        if ignore_label is not None:
            p &= target != ignore_label  # predicting an unannotated voxel is no false positive
        rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    return torch.stack(rows, dim=1).double().cpu()


def epoch_record(state: RunState, epoch: int, train_loss: float, val_loss: float,
                 pseudo_dice: list[float], config: TrainConfig, started: float) -> dict[str, Any]:
    """The metrics of one epoch, with the EMA of the mean pseudo-Dice (first value used as is)."""
    valid = [d for d in pseudo_dice if not math.isnan(d)]
    mean_dice = float(np.mean(valid)) if valid else math.nan
    previous = state.metrics[-1]["ema_pseudo_dice"] if state.metrics else math.nan
    m = config.training.ema_momentum
    ema = mean_dice if math.isnan(previous) else m * previous + (1 - m) * mean_dice
    if math.isnan(ema):
        ema = previous
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": pseudo_dice,
            "mean_pseudo_dice": mean_dice, "ema_pseudo_dice": ema,
            "lr": learning_rate(config, epoch, 0, state.lr_schedule), "epoch_time": time.perf_counter() - started}


def end_epoch(run: Run, state: RunState, record: dict[str, Any], plans: Plans,
              config: TrainConfig, rank: Rank) -> None:
    """Log the epoch, redraw progress.png, write checkpoint_latest (and _best on a new best EMA)."""
    best_before = max((r["ema_pseudo_dice"] for r in state.metrics
                       if not math.isnan(r["ema_pseudo_dice"])), default=-math.inf)
    state.metrics.append(record)
    state.epoch = record["epoch"] + 1
    if not rank.is_main:
        return
    log.info(progress.format_epoch(record, config.training.epochs))
    progress.append_metrics(run.folder, record)
    run.tracker.log_epoch(record)  # logging.backends: the same record
    progress.plot_progress(state.metrics, run.folder / progress.PROGRESS_FILE)
    is_best = record["ema_pseudo_dice"] > best_before
    last = state.epoch == config.training.epochs
    if state.epoch % config.checkpoint.every == 0 or last or is_best:
        latest = run.folder / checkpoints.LATEST
        checkpoints.save_checkpoint(latest, make_checkpoint(state, plans, config))
        if is_best:
            log.info("new best EMA pseudo-Dice %.4f: checkpoint_best.pt", record["ema_pseudo_dice"])
            checkpoints.copy_checkpoint(latest, run.folder / checkpoints.BEST)


def make_checkpoint(state: RunState, plans: Plans, config: TrainConfig) -> dict[str, Any]:
    """The contract's checkpoint dict (weights_only-loadable: tensors, lists, dicts, numbers)."""
    checkpoint = {
        "network": state.network.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "metrics": [dict(r) for r in state.metrics],
        "rng": checkpoints.capture_rng(),
        "plan": to_jsonable(plans),
        "config": config_to_dict(config),
    }
    if state.lr_schedule not in (None, planned_schedule(config)):  # extended: the poly segments
        checkpoint["lr_schedule"] = schedule_to_list(state.lr_schedule)
    if state.scaler is not None:
        checkpoint["grad_scaler"] = state.scaler.state_dict()
    return checkpoint


def finish(run: Run, state: RunState, plans: Plans, config: TrainConfig, rank: Rank) -> None:
    """checkpoint_final.pt (checkpoint_latest stays: it is the same state, and resume reads it)."""
    if rank.is_main:
        checkpoints.save_checkpoint(run.folder / checkpoints.FINAL, make_checkpoint(state, plans, config))
        log.info("training finished after %d epochs: %s", state.epoch, run.folder)


def autocast(state: RunState) -> contextlib.AbstractContextManager:
    if state.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.amp_dtype)


def progress_bar(config: TrainConfig, state: RunState, rank: Rank) -> tqdm:
    t = config.training
    return tqdm(total=t.epochs * t.iters_per_epoch, initial=state.epoch * t.iters_per_epoch,
                desc=f"fold {config.fold}", unit="it", disable=not rank.is_main, dynamic_ncols=True)
