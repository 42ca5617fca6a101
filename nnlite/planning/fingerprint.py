"""Dataset fingerprint: per-case spacing and shapes, per-channel foreground intensity statistics.

Every case is read exactly once: the same pass runs the integrity check (`dataset.check_case`), the
crop to the nonzero region and the foreground sampling, in worker processes. As in nnU-Net, each case
contributes `int(1e8 // n_cases)` foreground voxels per channel, drawn WITH replacement by a
RandomState seeded 1234 (the same seed for every case), and the dataset statistics are computed
from the concatenated samples (`statistics`). The result depends only on the data: same data, same file.

The workers write their samples straight into one (C, cases, samples) buffer in shared memory,
each case at its own place, so the samples are never pickled, sent and concatenated (1e8 values per
channel); they send back only the case fingerprint and which voxels were drawn how often.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked
from nnlite.common.schema import from_dict
from nnlite.data.cropping import crop_to_nonzero
from nnlite.data.dataset import RawDataset, check_case, integer_labels, labels_and_regions
from nnlite.planning.statistics import Drawn, intensity_statistics
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats, load_fingerprint

log = logging.getLogger(__name__)

FOREGROUND_SAMPLES_TOTAL = 10e7  # nnU-Net samples 1e8 foreground voxels per channel over the dataset
SAMPLING_SEED = 1234  # nnU-Net reseeds a RandomState with this for every case
SAMPLE_DTYPE = np.float32  # image_io reads every image as float32, so nnU-Net's samples are float32

# What every worker shares, set before the pool forks (inherited, never pickled): the dataset and
# the samples buffer (C, cases, samples per case).
_SHARED: dict[str, Any] = {}


@dataclass
class _CaseResult:
    """What a worker sends back: the case fingerprint, per channel what it drew, its warnings."""

    case: CaseFingerprint
    drawn: list[Drawn | None]  # None: the case has no foreground (it contributes no samples)
    warnings: list[str]


def samples_per_case(n_cases: int) -> int:
    """Foreground voxels drawn per case and channel (nnU-Net: int(1e8 // n_cases))."""
    return int(FOREGROUND_SAMPLES_TOTAL // n_cases)


def sample_foreground(data: np.ndarray, seg: np.ndarray, out: np.ndarray) -> list[Drawn | None]:
    """data (C, *spatial), seg (1, *spatial) cropped → out (C, n) gets n foreground values per channel.

    Foreground is seg > 0 (outside voxels are -1). One RandomState(1234) serves all channels in
    order and draws what nnU-Net's `rs.choice(pixels, n, replace=True)` draws (choice calls
    randint(0, pixels.size, n), here written straight into `out`). Returns per channel
    the drawn voxels' values and counts; a channel without foreground gets None and `out` is left.
    """
    rs = np.random.RandomState(SAMPLING_SEED)
    foreground = seg[0] > 0
    drawn: list[Drawn | None] = []
    for channel, row in zip(data, out):
        pixels = channel[foreground]
        if not pixels.size:
            drawn.append(None)
            continue
        index = rs.randint(0, pixels.size, row.size)
        np.take(pixels, index, out=row, mode="clip")  # the indices are in range; "clip" skips the check
        counts = np.bincount(index, minlength=pixels.size)
        picked = counts > 0
        drawn.append(Drawn(pixels[picked], counts[picked]))
    return drawn


def _analyze_case(index: int) -> _CaseResult | tuple[str, str]:
    """Worker: check + crop + sample case `index`; a UserError comes back as (where, problem)."""
    dataset, samples = _SHARED["dataset"], _SHARED["samples"]
    files = dataset.cases[index]
    try:
        checked = check_case(dataset, files)
    except UserError as error:
        return error.where, error.problem
    seg = None if checked.seg is None else checked.seg[None]
    crop = crop_to_nonzero(checked.data, seg)
    case = CaseFingerprint(
        case=files.name,
        spacing=tuple(float(s) for s in checked.spacing),
        shape_before_crop=tuple(int(s) for s in checked.data.shape[1:]),
        shape_after_crop=tuple(int(s) for s in crop.data.shape[1:]),
    )
    return _CaseResult(case, sample_foreground(crop.data, crop.seg, samples[:, index]), checked.warnings)


def _samples_buffer(shape: tuple[int, int, int], shared: bool) -> np.ndarray:
    """(C, cases, samples per case) float32; `shared`: in memory forked workers write into."""
    if not shared:
        return np.empty(shape, SAMPLE_DTYPE)
    size = int(np.prod(shape)) * np.dtype(SAMPLE_DTYPE).itemsize
    memory = mmap.mmap(-1, max(size, 1))  # anonymous MAP_SHARED: parent and forked children see it
    return np.frombuffer(memory, SAMPLE_DTYPE, count=int(np.prod(shape))).reshape(shape)


def _fork_pool(workers: int) -> ProcessPoolExecutor | None:
    """`workers` forked processes (they inherit _SHARED), or None to run in this process."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _run_cases(dataset: RawDataset, workers: int) -> tuple[list[_CaseResult], np.ndarray]:
    """Analyze every case (in order) in `workers` processes; returns the results and the samples."""
    n_cases = len(dataset.cases)
    pool = _fork_pool(min(workers, n_cases))  # a fork pool starts all its processes at once
    shape = (dataset.num_channels, n_cases, samples_per_case(n_cases))
    _SHARED.update(dataset=dataset, samples=_samples_buffer(shape, shared=pool is not None))
    results = []
    try:
        outputs = pool.map(_analyze_case, range(n_cases), chunksize=2) if pool else map(_analyze_case, range(n_cases))
        with tqdm(outputs, total=n_cases, desc="fingerprint", unit="case", leave=False) as bar:
            for output in bar:
                if isinstance(output, tuple):
                    raise UserError(*output)
                results.append(output)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        samples = _SHARED.pop("samples")
        _SHARED.clear()
    return results, samples


def channel_samples(samples: np.ndarray, has_foreground: list[bool]) -> np.ndarray:
    """One channel's (cases, n) samples → what nnU-Net's np.concatenate of the per-case samples gives.

    A case without foreground contributes an empty float64 array, which promotes the whole
    concatenation to float64 (as in nnU-Net).
    """
    if all(has_foreground):
        return samples.reshape(-1)
    return samples[np.asarray(has_foreground, bool)].reshape(-1).astype(np.float64)


def extract_fingerprint(dataset: RawDataset, workers: int = 1) -> Fingerprint:
    """Check and fingerprint every training case of `dataset` in one read pass."""
    if not dataset.cases:
        raise UserError(dataset.root / "dataset.json", "the dataset holds no training cases")
    results, samples = _run_cases(dataset, workers)
    for result in results:
        for warning in result.warnings:
            log.warning("warning: %s", warning)
    stats = {}
    for channel in range(dataset.num_channels):
        drawn = [r.drawn[channel] for r in results]
        if all(d is None for d in drawn):
            raise UserError("labelsTr", "no case has any foreground voxel; cannot compute intensity statistics")
        values = channel_samples(samples[channel], [d is not None for d in drawn])
        stats[str(channel)] = intensity_statistics(values, [d for d in drawn if d is not None])
    del samples
    cases = tuple(r.case for r in results)
    return Fingerprint(
        cases=cases,
        intensity_per_channel=stats,
        channel_names=dict(dataset.channel_names),
        labels=dict(dataset.labels),
        regions=tuple(dataset.regions),
        median_relative_size_after_crop=float(np.median([c.relative_size_after_crop for c in cases])),
    )


# ------------------------------------------------------------------------------------------------
# reading a fingerprint file: nnlite's fingerprint.json or nnU-Net v2's dataset_fingerprint.json

NNUNET_KEYS = ("spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel",
               "median_relative_size_after_cropping")


def fingerprint_from_nnunet(data: dict, dataset_json: dict, where: str = "dataset_fingerprint.json") -> Fingerprint:
    """nnU-Net v2's fingerprint + dataset.json → Fingerprint.

    nnU-Net records neither case names nor shapes before cropping: cases are named case_0000, … and
    their shape before cropping is set to the shape after it (the median relative size is kept).
    """
    missing = [key for key in NNUNET_KEYS if key not in data]
    if missing:
        raise UserError(where, f"missing key '{missing[0]}' of an nnU-Net v2 fingerprint")
    if len(data["spacings"]) != len(data["shapes_after_crop"]) or not data["spacings"]:
        raise UserError(where, "'spacings' and 'shapes_after_crop' must be non-empty and equally long")
    cases = tuple(
        CaseFingerprint(case=f"case_{i:04d}", spacing=tuple(float(s) for s in spacing),
                        shape_before_crop=tuple(int(n) for n in shape), shape_after_crop=tuple(int(n) for n in shape))
        for i, (spacing, shape) in enumerate(zip(data["spacings"], data["shapes_after_crop"]))
    )
    stats = {str(k): from_dict(IntensityStats, v, f"{where}: channel {k}")
             for k, v in data["foreground_intensity_properties_per_channel"].items()}
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise UserError("dataset.json", "key 'channel_names' is missing or empty")
    labels, regions = labels_and_regions("dataset.json", dataset_json, integer_labels(
        "key 'labels' must map names to integer values or lists of them (regions)"))
    return Fingerprint(cases=cases, intensity_per_channel=stats, labels=labels, regions=regions,
                       channel_names={str(k): str(v) for k, v in channels.items()},
                       median_relative_size_after_crop=float(data["median_relative_size_after_cropping"]))


def load_fingerprint_file(path: str | Path, dataset_json: dict) -> tuple[Fingerprint, bool]:
    """Read nnlite's fingerprint.json or nnU-Net v2's dataset_fingerprint.json (told apart by keys).

    Returns the fingerprint and whether it is nnlite's (only those name their cases)."""
    data = read_json_checked(path)
    if isinstance(data, dict) and "spacings" in data:
        return fingerprint_from_nnunet(data, dataset_json, str(path)), False
    return load_fingerprint(path), True
