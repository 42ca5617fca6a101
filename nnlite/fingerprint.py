"""Dataset fingerprint: per-case spacing and shapes, per-channel foreground intensity statistics.

Every case is read exactly once: the same pass runs the integrity check (`dataset.check_case`), the
crop to the nonzero region and the foreground sampling, in worker processes. As in nnU-Net, each case
contributes `int(1e8 // n_cases)` foreground voxels per channel, drawn WITH replacement by a
RandomState seeded 1234 (the same seed for every case), and the dataset statistics are computed
from the concatenated samples. The result depends only on the data: same data, same file.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from nnlite.cropping import crop_to_nonzero
from nnlite.dataset import CaseFiles, RawDataset, check_case
from nnlite.errors import UserError
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats

log = logging.getLogger(__name__)

FOREGROUND_SAMPLES_TOTAL = 10e7  # nnU-Net samples 1e8 foreground voxels per channel over the dataset
SAMPLING_SEED = 1234  # nnU-Net reseeds a RandomState with this for every case
PERCENTILES = (0.5, 50.0, 99.5)  # robust range (CT clipping) and median


@dataclass
class _CaseResult:
    """What a worker sends back: the case fingerprint, its samples per channel and its warnings."""

    case: CaseFingerprint
    samples: list[np.ndarray]
    warnings: list[str]


def samples_per_case(n_cases: int) -> int:
    """Foreground voxels drawn per case and channel (nnU-Net: int(1e8 // n_cases))."""
    return int(FOREGROUND_SAMPLES_TOTAL // n_cases)


def sample_foreground(data: np.ndarray, seg: np.ndarray, n_samples: int) -> list[np.ndarray]:
    """data (C, *spatial), seg (1, *spatial) cropped → per channel `n_samples` foreground values.

    Foreground is seg > 0 (outside voxels are -1). One RandomState(1234) serves all channels in
    order; a case without foreground contributes an empty float64 array, as in nnU-Net.
    """
    rs = np.random.RandomState(SAMPLING_SEED)
    foreground = seg[0] > 0
    samples = []
    for channel in data:
        pixels = channel[foreground]
        if pixels.size:
            samples.append(rs.choice(pixels, n_samples, replace=True))
        else:
            samples.append(np.array([], dtype=np.float64))
    return samples


def _analyze_case(args: tuple[RawDataset, CaseFiles, int]) -> _CaseResult | tuple[str, str]:
    """Worker: check + crop + sample one case; a UserError comes back as (where, problem)."""
    dataset, files, n_samples = args
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
    return _CaseResult(case, sample_foreground(crop.data, crop.seg, n_samples), checked.warnings)


def intensity_statistics(samples: np.ndarray) -> IntensityStats:
    """Dataset statistics of one channel's concatenated samples (population std, np.percentile)."""
    if samples.size == 0:
        raise UserError("labelsTr", "no case has any foreground voxel; cannot compute intensity statistics")
    low, median, high = np.percentile(samples, PERCENTILES)
    return IntensityStats(
        mean=float(np.mean(samples)), std=float(np.std(samples)), median=float(median),
        min=float(np.min(samples)), max=float(np.max(samples)),
        percentile_00_5=float(low), percentile_99_5=float(high),
    )


def _run_cases(dataset: RawDataset, workers: int) -> list[_CaseResult]:
    """Analyze every case (in order) in `workers` processes, with a progress bar."""
    n_samples = samples_per_case(len(dataset.cases))
    jobs = [(dataset, case, n_samples) for case in dataset.cases]
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    results = []
    try:
        outputs = pool.map(_analyze_case, jobs, chunksize=2) if pool else map(_analyze_case, jobs)
        with tqdm(outputs, total=len(jobs), desc="fingerprint", unit="case", leave=False) as bar:
            for output in bar:
                if isinstance(output, tuple):
                    raise UserError(*output)
                results.append(output)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def extract_fingerprint(dataset: RawDataset, workers: int = 1) -> Fingerprint:
    """Check and fingerprint every training case of `dataset` in one read pass."""
    if not dataset.cases:
        raise UserError(dataset.root / "dataset.json", "the dataset holds no training cases")
    results = _run_cases(dataset, workers)
    for result in results:
        for warning in result.warnings:
            log.warning("warning: %s", warning)
    stats = {}
    for channel in range(dataset.num_channels):
        # concatenation order = case order; empty float64 arrays promote as in nnU-Net
        samples = np.concatenate([r.samples[channel] for r in results])
        for r in results:
            r.samples[channel] = samples[:0]  # free the per-case copies (1e8 values per channel)
        stats[str(channel)] = intensity_statistics(samples)
    cases = tuple(r.case for r in results)
    return Fingerprint(
        cases=cases,
        intensity_per_channel=stats,
        channel_names=dict(dataset.channel_names),
        labels=dict(dataset.labels),
        median_relative_size_after_crop=float(np.median([c.relative_size_after_crop for c in cases])),
    )
