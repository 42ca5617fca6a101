"""How many preprocessing workers a memory budget holds, and in which order the cases go.

A case's footprint is estimated from its shapes (fingerprint.json: before and after the crop,
and the planned shape after resampling): bytes per voxel of each, fitted to what reading and
`preprocess_case` hold at their peak (image channels read, cropped and resampled, the label map
and its per-label interpolation). The
largest cases go first. When the estimate says that `--workers` cases at once might not fit, the
largest case runs alone first and its measured peak (the worker's resident growth) decides how
many workers share the budget; each worker then gets an equal share as an address-space limit, so
an underestimate raises MemoryError in the worker (the case is retried alone with the whole
budget) rather than an OOM kill. A case that fails even alone is reported by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from nnlite.plans import CaseFingerprint, Plans
from nnlite.preprocessing.pipeline import target_spacing, transposed_spacing
from nnlite.preprocessing.resampling import new_shape_for

# bytes per voxel, fitted to tracemalloc peaks of reading + `preprocess_case` (1-3 channels, 2-12
# labels, up- and down-sampling, separate z; tests/test_preprocess_memory.py checks it is never lower):
RAW_BYTES = (12, 6)  # per raw voxel: the reader's float64 channel, the int16 labels; + per channel
CROPPED_BYTES = (8, 6)  # per cropped voxel: label indicators; + per channel the float32 copies
RESAMPLED_BYTES = (40, 10)  # per resampled voxel: per-label scores and the winner; + per channel
SAFETY = 1.5  # estimate × SAFETY × workers ≤ budget: no measurement needed first
WORKER_BASE = 300 * 2**20  # a fresh worker's own resident memory (interpreter, numpy, scipy) if unmeasured


def case_footprint(case: CaseFingerprint, plans: Plans, config_names: Sequence[str]) -> int:
    """Estimated peak bytes of preprocessing one case for the given configurations (the largest)."""
    channels = plans.num_channels
    raw = math.prod(case.shape_before_crop)
    cropped = math.prod(case.shape_after_crop)
    spacing_t = transposed_spacing(case.spacing, plans)
    shape_t = [case.shape_after_crop[axis] for axis in plans.transpose]
    largest = max(math.prod(new_shape_for(shape_t, spacing_t, target_spacing(plans, name, spacing_t)))
                  for name in config_names)
    return sum((fixed + per_channel * channels) * voxels for (fixed, per_channel), voxels in
               ((RAW_BYTES, raw), (CROPPED_BYTES, cropped), (RESAMPLED_BYTES, largest)))


@dataclass(frozen=True)
class WorkerPlan:
    """workers: processes at once; allowance: bytes each may map beyond its start (None: no limit);
    measure_first: run the largest case alone first and size the workers by its measured peak."""

    workers: int
    allowance: int | None
    measure_first: bool


def plan_workers(estimates: Sequence[int], requested: int, budget: int, enforce: bool,
                 used: int) -> WorkerPlan:
    """Workers for cases whose largest estimate is max(estimates): `requested` when they fit with
    a margin, else measure first. `used`: what the main process holds already."""
    usable = max(0, budget - used)
    largest = max(estimates, default=0)
    fits = (largest * SAFETY + WORKER_BASE) * requested <= usable
    if fits or not estimates:
        allowance = usable // max(1, requested) - WORKER_BASE if enforce else None
        return WorkerPlan(max(1, requested), allowance, measure_first=False)
    return WorkerPlan(1, usable - WORKER_BASE, measure_first=True)


def workers_after_measuring(peak: int, base: int, requested: int, budget: int, used: int) -> WorkerPlan:
    """Workers once the largest case measured `peak` bytes beyond a worker's own `base`."""
    usable = max(0, budget - used)
    per_worker = base + int(peak * SAFETY)
    workers = max(1, min(requested, usable // max(1, per_worker)))
    return WorkerPlan(workers, usable // workers - base, measure_first=False)
