"""The raw dataset: `dataset.json` schema, case discovery, integrity checks.

A raw dataset is nnU-Net's layout: `dataset.json`, `imagesTr/<case>_<CCCC><ending>` (one file per
channel) and `labelsTr/<case><ending>`. Instead of the folders, dataset.json may list the files under
a `dataset` key: {case: {"images": [...], "label": ...}} with paths relative to the raw folder.

`load_dataset` validates everything that needs no voxel: the keys of dataset.json, consecutive
labels, file endings, the case count and missing files. `check_case` reads one case once and checks
its voxels and headers; `plan` calls it in the same pass as fingerprinting, `check_dataset` runs it
for every case in worker processes. Every problem is a `UserError` naming the file (or key).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.common.labels import IGNORE_KEY, Region
from nnlite.data.file_names import CHANNEL_DIGITS, split_channel_stem
from nnlite.data.image_io import (COMPANION_ENDINGS, FORMAT_BY_ENDING, READER_KEY, dataset_reader, image_format,
                                  read_case, read_header, read_image)
from nnlite.data.regions import ORDER_KEY, has_regions, parse_region_labels, unwrap_single_labels

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
SPACING_RTOL = 1e-3  # spacings of a case's files must agree this closely (nnU-Net: np.allclose)
AFFINE_ATOL = 1e-3  # affines (mm) differing by more than this only warn, as in nnU-Net


@dataclass(frozen=True)
class CaseFiles:
    """One training case: its channel files in channel order and its label file."""

    name: str
    images: list[Path]
    label: Path | None


@dataclass
class RawDataset:
    """A validated dataset.json plus the discovered cases (sorted by name)."""

    root: Path
    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    extra: dict[str, Any] = field(default_factory=dict)  # keys nnlite does not read, kept as-is
    reader: str | None = None  # a FORMATS name from READER_KEY; None: chosen by file ending
    cases: list[CaseFiles] = field(default_factory=list)
    regions: tuple[Region, ...] = ()  # region labels (data/regions.py); `labels` then holds the integers
    meta: dict[str, Any] = field(default_factory=dict)  # dataset.json as parsed (v1 "modality" → "channel_names")

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> set[int]:
        return set(self.labels.values())


@dataclass
class CheckedCase:
    """A case read once and checked: data (C, Z, Y, X) float32, seg (Z, Y, X) int16 or None."""

    name: str
    data: np.ndarray
    seg: np.ndarray | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    """What `check_dataset` found: case count and every warning (errors raise instead)."""

    num_cases: int
    warnings: list[str]


# ---------------------------------------------------------------------------------------------
# dataset.json


def load_dataset(raw: str | Path) -> RawDataset:
    """Parse and validate RAW/dataset.json and discover the cases; raises UserError on any problem."""
    root = Path(raw)
    if not root.is_dir():
        raise UserError(root, "raw dataset folder not found")
    json_path = root / "dataset.json"
    meta = _read_dataset_json(json_path)
    labels, regions = labels_and_regions(json_path, meta, _parse_labels)
    dataset = RawDataset(root, _parse_channel_names(json_path, meta), labels,
                         _parse_num_training(json_path, meta["numTraining"]),
                         _parse_file_ending(json_path, meta["file_ending"]),
                         extra={k: v for k, v in meta.items() if k not in REQUIRED_KEYS and k != "modality"},
                         regions=regions, meta=meta)
    dataset.reader = dataset_reader(json_path, meta.get(READER_KEY), dataset.file_ending)
    has_list = "dataset" in meta  # the files listed in dataset.json instead of imagesTr/labelsTr
    dataset.cases = _cases_from_key(dataset, json_path, meta["dataset"]) if has_list else _discover_cases(dataset)
    if len(dataset.cases) != dataset.num_training:
        raise UserError(json_path, f"key 'numTraining': is {dataset.num_training} but "
                                   f"{len(dataset.cases)} cases were found")
    if not dataset.cases:
        raise UserError(root / "imagesTr", "no training cases found")
    return dataset


def _read_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(path, "file not found (every raw dataset needs a dataset.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(path, f"invalid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise UserError(path, "must hold a JSON object")
    if "channel_names" not in meta and "modality" in meta:  # nnU-Net v1's name for the key
        meta["channel_names"] = meta["modality"]
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise UserError(path, f"key '{key}': missing (required: {', '.join(REQUIRED_KEYS)})")
    return meta


def _parse_channel_names(path: Path, meta: dict[str, Any]) -> dict[str, str]:
    names = meta["channel_names"]
    if not isinstance(names, dict) or not names:
        raise UserError(path, "key 'channel_names': must be a non-empty object {\"0\": name, …}")
    expected = [str(i) for i in range(len(names))]
    if sorted(names, key=lambda k: (len(k), k)) != expected:
        raise UserError(path, f"key 'channel_names': keys must be {expected}, got {list(names)}")
    return {key: str(names[key]) for key in expected}


def labels_and_regions(where: str | Path, meta: dict, parse_plain: Callable[[Any, Any], dict[str, int]]
                       ) -> tuple[dict[str, int], tuple[Region, ...]]:
    """dataset.json's "labels": a region dataset's integer labels and regions (docs/regions.md), else
    the plain labels (one-element lists unwrapped) as `parse_plain(where, labels)` checks them. The
    one place that decides whether a dataset is region-based (`has_regions`, nnU-Net's rule)."""
    labels = meta.get("labels")
    if has_regions(labels):
        return parse_region_labels(where, labels, meta.get(ORDER_KEY))
    return parse_plain(where, unwrap_single_labels(labels)), ()


def integer_labels(problem: str) -> Callable[[Any, Any], dict[str, int]]:
    """The loosest plain-label rule: names → integer values, else `problem`."""
    def parse(where: Any, labels: Any) -> dict[str, int]:
        if isinstance(labels, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
            return dict(labels)
        raise UserError(where, problem)
    return parse


def _parse_labels(path: Path, labels: Any) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        raise UserError(path, "key 'labels': must be a non-empty object {name: value}")
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(path, f"key 'labels': value of '{name}' must be an integer, got {value!r}")
    if labels.get("background") != 0:
        raise UserError(path, "key 'labels': 'background' must exist and be 0")
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise UserError(path, f"key 'labels': values must be consecutive 0…{len(values) - 1}, "
                              f"got {values}")
    if IGNORE_KEY in labels and labels[IGNORE_KEY] != values[-1]:
        raise UserError(path, f"key 'labels': '{IGNORE_KEY}' must be the largest label")
    return dict(labels)


def _parse_num_training(path: Path, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(path, f"key 'numTraining': must be a non-negative integer, got {value!r}")
    return value


def _parse_file_ending(path: Path, ending: Any) -> str:
    if not isinstance(ending, str) or not ending.startswith("."):
        raise UserError(path, f"key 'file_ending': must be a string like '.nii.gz', got {ending!r}")
    if ending not in FORMAT_BY_ENDING:
        raise UserError(path, f"key 'file_ending': format '{ending}' is not supported; "
                              f"supported: {', '.join(FORMAT_BY_ENDING)}")
    return ending


# ---------------------------------------------------------------------------------------------
# case discovery


def _visible_files(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        raise UserError(folder, "folder not found")
    companions = COMPANION_ENDINGS.get(ending, ())  # a TIFF's spacing, a MetaImage's voxels
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith(companions))


def _discover_cases(dataset: RawDataset) -> list[CaseFiles]:
    """Cases of imagesTr/labelsTr by nnU-Net's rule: a case owns files matching `<case>_\\d{4}<ending>`."""
    ending = dataset.file_ending
    images_dir, labels_dir = dataset.root / "imagesTr", dataset.root / "labelsTr"
    channels: dict[str, dict[int, Path]] = {}
    for path in _visible_files(images_dir, ending):
        _check_ending(path, ending)
        case_channel = split_channel_stem(path.name[: -len(ending)])
        if case_channel is None:
            raise UserError(path, f"image name must be <case>_<CCCC>{ending}")
        channels.setdefault(case_channel[0], {})[case_channel[1]] = path
    label_names = set()
    for path in _visible_files(labels_dir, ending):
        _check_ending(path, ending)
        label_names.add(path.name[: -len(ending)])
    orphans = sorted(label_names - set(channels))
    if orphans:
        raise UserError(labels_dir / f"{orphans[0]}{ending}", "label file has no image files")
    cases = []
    for name in sorted(channels):
        images = _case_channel_files(dataset, name, channels[name], images_dir)
        label = labels_dir / f"{name}{ending}"
        if name not in label_names:
            raise UserError(label, "label file missing")
        cases.append(CaseFiles(name, images, label))
    return cases


def _check_ending(path: Path, ending: str) -> None:
    if not path.name.endswith(ending):
        raise UserError(path, f"file ending differs from dataset.json file_ending '{ending}'")


def _case_channel_files(dataset: RawDataset, name: str, found: dict[int, Path],
                        images_dir: Path) -> list[Path]:
    for channel in sorted(found):
        if channel >= dataset.num_channels:
            raise UserError(found[channel], f"channel {channel} is not declared in channel_names "
                                            f"({dataset.num_channels} channels)")
    packed = image_format(dataset.file_ending, dataset.reader).packs_channels  # RGB: 3 channels, 1 file
    count = len(found) if packed else dataset.num_channels
    expected = [images_dir / f"{name}_{c:0{CHANNEL_DIGITS}d}{dataset.file_ending}" for c in range(count)]
    for path in expected:
        if not path.is_file():
            raise UserError(path, "channel file missing")
    return expected


def _cases_from_key(dataset: RawDataset, json_path: Path, entries: Any) -> list[CaseFiles]:
    """Cases listed under dataset.json's `dataset` key (paths relative to RAW, absolute or $VARS)."""
    if not isinstance(entries, dict):
        raise UserError(json_path, "key 'dataset': must be an object {case: {images, label}}")
    cases = []
    for name in sorted(entries):
        entry = entries[name]
        images = entry.get("images") if isinstance(entry, dict) else None
        if not isinstance(images, list) or len(images) != dataset.num_channels:
            raise UserError(json_path, f"key 'dataset': case '{name}' needs 'images' with "
                                       f"{dataset.num_channels} paths")
        paths = [_resolve(dataset.root, p) for p in images]
        label = _resolve(dataset.root, entry["label"]) if entry.get("label") else None
        for path in paths + ([label] if label else []):
            _check_ending(path, dataset.file_ending)
            if not path.is_file():
                raise UserError(path, "file missing (listed in dataset.json key 'dataset')")
        cases.append(CaseFiles(name, paths, label))
    return cases


def _resolve(root: Path, path: str) -> Path:
    expanded = Path(os.path.expandvars(str(path)))
    return expanded if expanded.is_absolute() else root / expanded


# ---------------------------------------------------------------------------------------------
# per-case integrity


def check_case(dataset: RawDataset, case: CaseFiles) -> CheckedCase:
    """Read a case once and check it; raises UserError naming the file on any integrity error.

    Returns data (C, Z, Y, X) float32, seg (Z, Y, X) int16 (or None without a label), the spacing
    (z, y, x) and channel 0's affine, plus warnings (empty label, constant image, affine mismatch).
    """
    files = case.images + ([case.label] if case.label else [])
    affines = [_checked_header_affine(path, dataset.reader) for path in files]  # each header read once
    image = read_case(case.images, dataset.reader)
    if image.data.shape[0] != dataset.num_channels:
        raise UserError(case.images[0], f"holds {image.data.shape[0]} channels, dataset.json "
                                        f"declares {dataset.num_channels}")
    warnings = []
    for path, channel in zip(case.images, image.data):
        _check_finite(path, channel)
        if channel.size and channel.min() == channel.max():
            warnings.append(f"{path}: constant image (every voxel is {channel.flat[0]:g})")
    seg = None
    if case.label is not None:
        label = read_image(case.label, dataset.reader)
        _check_label_geometry(case.label, label.array.shape, label.spacing, image)
        seg = _check_label_values(dataset, case.label, label.array)
        if not np.any(seg > 0):
            warnings.append(f"{case.label}: label is all background")
        if not np.allclose(label.affine, image.affine, atol=AFFINE_ATOL):
            warnings.append(f"{case.label}: affine (origin/direction) differs from the image's")
    for path, affine in zip(case.images[1:], affines[1:]):
        if not np.allclose(affine, image.affine, atol=AFFINE_ATOL):
            warnings.append(f"{path}: affine (origin/direction) differs from channel 0")
    return CheckedCase(case.name, image.data, seg, image.spacing, image.affine, warnings)


def _checked_header_affine(path: Path, reader: str | None) -> np.ndarray:
    spacing, affine = read_header(path, reader)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UserError(path, f"spacing must be positive and finite, header has {spacing}")
    return affine


def _check_finite(path: Path, array: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise UserError(path, f"{bad} voxels are NaN or infinite")


def _check_label_geometry(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...],
                          image: Any) -> None:
    if shape != image.data.shape[1:]:
        raise UserError(path, f"label shape {shape} differs from image shape {image.data.shape[1:]}")
    if not np.allclose(spacing, image.spacing, rtol=SPACING_RTOL):
        raise UserError(path, f"label spacing {spacing} differs from image spacing {image.spacing}")


def _check_label_values(dataset: RawDataset, path: Path, array: np.ndarray) -> np.ndarray:
    _check_finite(path, array)
    if np.any(array != np.round(array)):
        raise UserError(path, "label values must be integers")
    found = set(np.unique(array).astype(np.int64).tolist())
    undeclared = sorted(found - dataset.label_values)
    if undeclared:
        raise UserError(path, f"label values {undeclared} are not declared in dataset.json "
                              f"labels {sorted(dataset.label_values)}")
    return array.astype(np.int16)


# ---------------------------------------------------------------------------------------------
# whole dataset


def _check_one(args: tuple[RawDataset, CaseFiles]) -> tuple[list[str], set[int], tuple[str, str] | None]:
    """Worker: warnings and label values of one case, or the error as (where, problem) (data stays
    in the worker)."""
    try:
        checked = check_case(*args)
    except UserError as error:
        return [], set(), (error.where, error.problem)
    values = set() if checked.seg is None else set(np.unique(checked.seg).tolist())
    return checked.warnings, values, None


def absent_label_warnings(dataset: RawDataset, found: set[int]) -> list[str]:
    """A declared label (not background or the ignore label) that no case holds."""
    return [f"dataset.json: label '{name}' ({value}) is declared but occurs in no case"
            for name, value in dataset.labels.items()
            if value != 0 and name != IGNORE_KEY and value not in found]


def check_dataset(dataset: RawDataset, workers: int = 1) -> DatasetReport:
    """Run check_case on every case (in `workers` processes); the first failing case raises."""
    jobs = [(dataset, case) for case in dataset.cases]
    warnings: list[str] = []
    found: set[int] = set()
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.map(_check_one, jobs, chunksize=4) if pool else map(_check_one, jobs)
        with tqdm(results, total=len(jobs), desc="checking", unit="case", leave=False,
                  disable=None) as bar:
            for case_warnings, values, error in bar:
                if error is not None:
                    raise UserError(*error)
                warnings.extend(case_warnings)
                found |= values
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    warnings += absent_label_warnings(dataset, found)
    for warning in warnings:
        log.warning("warning: %s", warning)  # the entry point prints only the summary
    return DatasetReport(len(jobs), warnings)
