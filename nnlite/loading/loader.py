"""Batches for training and validation: `build_loader(...)` → an endless iterator of batches.

Batch i of a run is a pure function of (seed, i): its generator is `np.random.default_rng([seed, i])`,
spawned into one child per sample, and every random choice of a sample (case, position, augmentation
parameters) comes from its child (`plan_batch`). So the result does not depend on the number of
workers, and a resumed run that starts at batch i draws exactly what the first run would have.

Workers are torch DataLoader processes over a dataset whose item i is batch i (batch_size=None,
batches come back in order). A failing sample does not raise inside the worker: the worker returns
a failure record and the main process raises it with the case name and the worker's traceback
(a UserError stays a UserError, so the command line prints one `error:` line).
"""

from __future__ import annotations

import itertools
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnlite.common.layout import PLANS_FILE, preprocessed_folder
from nnlite.common.cli import default_workers
from nnlite.common.errors import UserError
from nnlite.loading.augmentation import (IDENTITY, AugmentConfig, AugmentParams, augment_config,
                                         crop_and_augment, read_source, sample_augment_params)
from nnlite.loading.device_augmentation import (CropBatch, augment_batch, augment_on_device, collate_sources,
                                                one_torch_thread)
from nnlite.loading.previous_stage import (AUGMENT_STREAM, PreviousStageStore, previous_stage_patch,
                                           previous_stage_store)
from nnlite.loading.sampling import CaseInfo, CaseStore, foreground_start, forced_foreground, unforced_start
from nnlite.network.loss import deep_supervision_scales, downsample_seg
from nnlite.network.region_loss import region_targets
from nnlite.common.labels import Region
from nnlite.plans import Plans

PREFETCH_BATCHES = 4  # batches each worker prepares ahead
LOG = logging.getLogger(__name__)


class LoaderError(RuntimeError):
    """A sample failed in a loader worker; the message names the case and holds the traceback."""


class SampleError(Exception):
    """Making a sample of `case` failed; the original exception is the __cause__."""

    def __init__(self, case: str):
        super().__init__(case)
        self.case = case


@dataclass(frozen=True)
class SamplePlan:
    """Sample j of a batch before any voxel is read."""

    case: str
    start: tuple[int, ...]  # lower corner of the patch, (Z, Y, X)
    forced: bool
    params: AugmentParams


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to make batch i (picklable)."""

    store: CaseStore
    cfg: AugmentConfig
    forced: tuple[bool, ...]
    seed: int
    augment: bool
    ds_scales: tuple[tuple[float, ...], ...]  # empty: full resolution only
    on_device: bool = False  # workers only crop; `device_augmentation` augments the batch on the device
    previous: PreviousStageStore | None = None  # cascade: previous-stage channels appended (CPU only)
    regions: tuple[Region, ...] = ()  # region dataset: targets become region masks after augmentation
    ignore_label: int | None = None  # with regions: its mask is the targets' last channel


def plan_batch(cases: Sequence[CaseInfo], cfg: AugmentConfig, forced: Sequence[bool], seed: int,
               index: int, augment: bool) -> list[SamplePlan]:
    """The random choices of batch `index`: a pure function of (seed, index)."""
    plans = []
    for child, force in zip(np.random.default_rng([seed, index]).spawn(len(forced)), forced):
        case = cases[int(child.integers(len(cases)))]
        pick_start = foreground_start if force else unforced_start
        start = pick_start(child, case.shape, cfg.patch_size, case.class_locations)
        params = sample_augment_params(child, cfg) if augment else IDENTITY
        plans.append(SamplePlan(case.name, start, bool(force), params))
    return plans


def make_batch(spec: BatchSpec, index: int) -> dict[str, Any]:
    """Batch `index`: {"data": (B, C, *patch) float32, "target": [(B, 1, *patch_level) int16 per
    deep-supervision level], "cases": [str]} (seg -1 already mapped to 0; a region dataset's targets
    are (B, R[+1], *patch_level) uint8 region masks, `with_region_targets`); with `spec.on_device`
    a `CropBatch` that `device_augmentation.augment_batch` turns into that on the training device."""
    made = []
    samples = plan_batch(spec.store.cases, spec.cfg, spec.forced, spec.seed, index, spec.augment)
    make = read_source if spec.on_device else crop_and_augment
    for j, sample in enumerate(samples):
        try:
            data, seg = spec.store.arrays(sample.case)
            made.append(make(data, seg, sample.start, sample.params, spec.cfg))
            if spec.previous is not None:  # cascade: the one-hot previous stage as extra channels
                rng = np.random.default_rng([spec.seed, index, j, AUGMENT_STREAM]) if spec.augment else None
                extra = previous_stage_patch(spec.previous, sample.case, sample.start, sample.params,
                                             spec.cfg, rng)
                made[-1] = (torch.cat([made[-1][0], extra]), made[-1][1])
        except Exception as error:  # re-raised in the main process, see module docstring
            error.add_note(f"while loading case '{sample.case}' (batch {index}, sample {j})")
            raise SampleError(sample.case) from error
    if spec.on_device:
        return collate_sources(made, [s.params for s in samples], [s.case for s in samples], spec.cfg)
    images, segs = zip(*made)
    seg = torch.stack(segs).to(torch.int16)
    target = downsample_seg(seg, spec.ds_scales) if spec.ds_scales else [seg]
    batch = {"data": torch.stack(images), "target": target, "cases": [s.case for s in samples]}
    return with_region_targets(batch, spec.regions, spec.ignore_label)


def with_region_targets(batch: dict[str, Any], regions: Sequence[Region],
                        ignore_label: int | None) -> dict[str, Any]:
    """Region dataset: each target (B, 1, *S) int → (B, R[+1], *S) uint8 region masks. Done after
    augmentation and downsampling, so the warp and nearest-exact act on the integer labels."""
    if regions:
        batch["target"] = [region_targets(t, regions, ignore_label) for t in batch["target"]]
    return batch


@dataclass(frozen=True)
class _Failure:
    """What a worker sends back instead of a batch when a sample fails."""

    case: str
    user_where: str | None  # set when the cause was a UserError
    problem: str
    trace: str

    def exception(self) -> Exception:
        if self.user_where is not None:
            return UserError(self.user_where, f"{self.problem} (case '{self.case}')")
        return LoaderError(f"loading case '{self.case}' failed: {self.problem}\n"
                           f"--- worker traceback ---\n{self.trace}")


class _BatchDataset(Dataset):
    def __init__(self, spec: BatchSpec):
        self.spec = spec

    def __getitem__(self, index: int) -> dict[str, Any]:
        # One intra-op thread, as the reference's workers (loader workers already run with one).
        with one_torch_thread():
            try:
                return make_batch(self.spec, index)
            except SampleError as failure:
                return {"failure": _failure_of(failure)}


def _failure_of(failure: SampleError) -> _Failure:
    """What the main process needs to re-raise a worker's failure (tracebacks do not pickle)."""
    cause = failure.__cause__
    where = cause.where if isinstance(cause, UserError) else None
    problem = cause.problem if isinstance(cause, UserError) else f"{type(cause).__name__}: {cause}"
    return _Failure(failure.case, where, problem, "".join(traceback.format_exception(cause)))


class BatchLoader:
    """Endless iterator of batches (on `device` when given); `close()` stops the workers."""

    def __init__(self, loader: DataLoader, device: torch.device | None,
                 finish: Callable[[CropBatch], dict[str, Any]] | None = None):
        self._iterator = iter(loader)
        self._device = device
        self._finish = finish  # device mode: augments each CropBatch where it is delivered

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._iterator)
        if isinstance(batch, dict) and "failure" in batch:
            self.close()
            raise batch["failure"].exception()
        if self._finish is not None:
            return self._finish(batch.to(self._device, non_blocking=True))
        if self._device is not None:
            batch["data"] = batch["data"].to(self._device, non_blocking=True)
            batch["target"] = [t.to(self._device, non_blocking=True) for t in batch["target"]]
        return batch

    def close(self) -> None:
        """Shut the worker processes down now rather than whenever the iterator is collected."""
        iterator = self.__dict__.pop("_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def build_loader(work: str | Path, plans: Plans, config_name: str, case_names: Sequence[str],
                 batch_size: int, *, augment: bool, seed: int, start_batch: int = 0,
                 workers: int | None = None, device: str | torch.device | None = None,
                 forced: Sequence[bool] | None = None, deep_supervision: bool = True,
                 augment_on: str = "cpu") -> BatchLoader:
    """Endless batches i = start_batch, start_batch + 1, ... of the preprocessed `case_names`.

    forced: per sample, must it contain foreground (default: the reference's last-third rule).
    workers: loader processes (default: every command's `--workers` default; 0 loads in this process).
    device: where batches are delivered (pinned memory + non-blocking copies on CUDA); None keeps
    them on the CPU (pinned when CUDA is available).
    augment_on: "cpu" (workers augment), "device" (workers crop, the batch is augmented on `device`
    in this process, `device_augmentation`) or "auto" (device when `device` is CUDA).
    """
    if config_name not in plans.configurations:
        raise UserError(PLANS_FILE, f"has no configuration '{config_name}'")
    if seed < 0 or start_batch < 0 or batch_size < 1:
        raise UserError("loader", "seed and start_batch must be ≥ 0 and batch_size ≥ 1")
    config = plans.configurations[config_name]
    forced = tuple(forced_foreground(batch_size) if forced is None else forced)
    if len(forced) != batch_size:
        raise UserError("loader", f"forced has {len(forced)} entries for batch size {batch_size}")
    scales = tuple(deep_supervision_scales(config.network)) if deep_supervision else ()
    store = CaseStore(preprocessed_folder(work, config.data_identifier), list(case_names))
    for case in store.cases:
        if case.channels != len(config.normalization):
            raise UserError(store.folder / f"{case.name}.npy", f"has {case.channels} channels, the "
                            f"plans expect {len(config.normalization)}")
    target = None if device is None else torch.device(device)
    previous = previous_stage_store(Path(work), plans, config_name)
    on_device = augment and augment_on_device(augment_on, target) and previous is None
    spec = BatchSpec(store, augment_config(config), forced, seed, augment, scales, on_device, previous,
                     plans.regions, plans.ignore_label)
    workers = default_workers() if workers is None else workers
    pin = torch.cuda.is_available() if target is None else target.type == "cuda"
    loader = DataLoader(_BatchDataset(spec), batch_size=None, sampler=itertools.count(start_batch),
                        num_workers=workers, pin_memory=pin,
                        prefetch_factor=PREFETCH_BATCHES if workers else None)
    LOG.debug("loader: %d cases, %d workers, augment=%s", len(case_names), workers, augment)

    def finish(batch: CropBatch) -> dict[str, Any]:  # device mode: augmented where it is delivered
        return with_region_targets(augment_batch(batch, spec.cfg, scales), spec.regions, spec.ignore_label)
    return BatchLoader(loader, target, finish if on_device else None)
