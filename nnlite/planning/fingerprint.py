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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked
from nnlite.common.schema import from_dict
from nnlite.data.cropping import crop_to_nonzero
from nnlite.data.dataset import CaseFiles, RawDataset, check_case
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats, load_fingerprint

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
    """Dataset statistics of one channel's concatenated samples (population std, np.percentile).

    The percentiles come last and partition `samples` in place (saves a copy of 1e8 values).
    """
    if samples.size == 0:
        raise UserError("labelsTr", "no case has any foreground voxel; cannot compute intensity statistics")
    mean, std = float(np.mean(samples)), float(np.std(samples))
    low_value, high_value = float(np.min(samples)), float(np.max(samples))
    low, median, high = np.percentile(samples, PERCENTILES, overwrite_input=True)
    return IntensityStats(mean=mean, std=std, median=float(median), min=low_value, max=high_value,
                          percentile_00_5=float(low), percentile_99_5=float(high))


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
    channel_names, labels = _names_and_labels(dataset_json)
    return Fingerprint(cases=cases, intensity_per_channel=stats, channel_names=channel_names, labels=labels,
                       median_relative_size_after_crop=float(data["median_relative_size_after_cropping"]))


def _names_and_labels(dataset_json: dict) -> tuple[dict[str, str], dict[str, int]]:
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise UserError("dataset.json", "key 'channel_names' is missing or empty")
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise UserError("dataset.json", "key 'labels' must map names to integer values (regions are not supported)")
    return {str(k): str(v) for k, v in channels.items()}, dict(labels)


def load_fingerprint_file(path: str | Path, dataset_json: dict) -> tuple[Fingerprint, bool]:
    """Read nnlite's fingerprint.json or nnU-Net v2's dataset_fingerprint.json (told apart by keys).

    Returns the fingerprint and whether it is nnlite's (only those name their cases)."""
    data = read_json_checked(path)
    if isinstance(data, dict) and "spacings" in data:
        return fingerprint_from_nnunet(data, dataset_json, str(path)), False
    return load_fingerprint(path), True
