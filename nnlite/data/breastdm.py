"""Convert BreastDM (`.npy` volumes per patient) into nnU-Net's raw layout.

BreastDM ships one folder per patient with three image volumes, `VIBRANT.npy` (pre-contrast),
`VIBRANT+C2.npy` (post-contrast) and `SUB2.npy` (subtraction), plus a mask also named `SUB2.npy`
whose foreground is 255. Two layouts are accepted:

    SRC/images/<patient>/{VIBRANT,VIBRANT+C2,SUB2}.npy     SRC/labels/<patient>/SUB2.npy
    SRC/images/<Class>/<patient>/…                         SRC/labels/<Class>/<patient>/SUB2.npy

with <Class> = Benign or Malignant; the class is kept per case in dataset.json (`case_metadata`)
and, when every patient has one and both occur, as the dataset's case classes (`classes` +
classes.csv, docs/classification.md).

**Spacing.** `.npy` files carry no geometry at all: no voxel size, origin or orientation. The
NIfTI headers get the spacing given with `--spacing Z Y X` (mm; slice axis first) and an axis-aligned
affine; without it 1 × 1 × 1 mm is written, with a warning, and dataset.json records which it was.

The slice axis is the shortest array axis (`--slice-axis` overrides) and becomes Z; the two other
axes keep their order as (Y, X). Slices blank (all zero) in all three images are padding and are
removed from images and mask alike, unless `keep_blank`. Mask values: any nonzero becomes 1
(BreastDM uses 255); values other than 0/255 are reported. A patient with a missing or unreadable
file, or mismatched shapes, is skipped and the reason reported; the rest is converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import staged_dir, write_json_atomic, write_text_atomic
from nnlite.data.case_classes import CLASSES_FILE, CLASSES_KEY, format_classes_csv
from nnlite.data.image_io import write_raw_case

IMAGE_FILES = ("VIBRANT.npy", "VIBRANT+C2.npy", "SUB2.npy")  # channel order 0, 1, 2
MASK_FILE = "SUB2.npy"
CHANNEL_NAMES = {"0": "VIBRANT", "1": "VIBRANT_C2", "2": "SUB2"}
LABELS = {"background": 0, "tumor": 1}
CLASSES = ("Benign", "Malignant")
CASE_PREFIX = "BC"
MASK_FOREGROUND = 255  # BreastDM's foreground value
NIFTI_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int16, np.uint16, np.int32, np.float32))
DEFAULT_SPACING = (1.0, 1.0, 1.0)  # written when --spacing is not given (the .npy has none)


@dataclass(frozen=True)
class Patient:
    """One source patient folder and where its mask should be."""

    name: str
    cls: str | None  # "Benign", "Malignant" or None for the flat layout
    images: Path
    mask: Path


@dataclass
class ConversionReport:
    """What convert_breastdm did: converted cases, skipped patients with reasons, blank slices."""

    raw: Path
    converted: dict[str, str] = field(default_factory=dict)  # case name → patient
    skipped: dict[str, str] = field(default_factory=dict)  # patient → reason
    blank_slices_removed: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"breastdm: converted {len(self.converted)} patients into {self.raw}, "
                 f"skipped {len(self.skipped)}, removed {self.blank_slices_removed} blank slices"]
        lines += [f"  skipped {patient}: {reason}" for patient, reason in self.skipped.items()]
        return "\n".join(lines)  # the warnings go to stderr, as every command's


def convert_breastdm(src: str | Path, raw: str | Path, spacing: Sequence[float] | None = None,
                     slice_axis: int | None = None, keep_blank: bool = False) -> ConversionReport:
    """Convert every patient under `src` into the raw dataset folder `raw` (new or empty)."""
    src, raw = Path(src), Path(raw)
    patients = find_patients(src)
    spacing = _check_spacing(spacing)
    if slice_axis not in (None, 0, 1, 2):
        raise UserError("--slice-axis", f"must be 0, 1 or 2, got {slice_axis}")
    report = ConversionReport(raw)
    if spacing is None:
        report.warnings.append("no --spacing given: BreastDM .npy files carry no voxel size, "
                               f"{DEFAULT_SPACING} mm written")
    with staged_dir(raw) as staging:
        metadata = _convert_patients(patients, staging, spacing or DEFAULT_SPACING, slice_axis,
                                     keep_blank, report)
        if not report.converted:
            raise UserError(src, "no patient could be converted: " + "; ".join(
                f"{p}: {r}" for p, r in report.skipped.items()))
        meta = _dataset_json(metadata, spacing)
        of_case = {case: m["class"] for case, m in metadata.items() if m["class"]}
        if len(of_case) == len(metadata) and len(set(of_case.values())) > 1:  # the class layout:
            meta[CLASSES_KEY] = list(CLASSES)  # case classes for the classification head
            write_text_atomic(staging / CLASSES_FILE, format_classes_csv(of_case))
        write_json_atomic(staging / "dataset.json", meta)
    return report


def _convert_patients(patients: list[Patient], staging: Path, spacing: Sequence[float],
                      slice_axis: int | None, keep_blank: bool,
                      report: ConversionReport) -> dict[str, dict]:
    """Write each convertible patient as a case; returns dataset.json's case metadata."""
    metadata = {}
    affine = np.diag([*reversed([float(s) for s in spacing]), 1.0])  # axis-aligned, (x, y, z) order
    for index, patient in enumerate(patients):
        case = f"{CASE_PREFIX}_{index + 1:03d}"  # numbered over all patients: stable if one is skipped
        try:
            images, mask = load_patient(patient, slice_axis, keep_blank, report)
        except UserError as error:
            report.skipped[_patient_id(patient)] = f"{error.where}: {error.problem}"
            continue
        write_raw_case(staging, case, list(images.astype(_nifti_dtype(images))), mask, affine)
        report.converted[case] = _patient_id(patient)
        metadata[case] = {"patient": patient.name, "class": patient.cls}
    return metadata


def find_patients(src: Path) -> list[Patient]:
    """Patient folders of either layout, sorted by (class, name)."""
    images_root, labels_root = src / "images", src / "labels"
    for folder in (images_root, labels_root):
        if not folder.is_dir():
            raise UserError(folder, "folder not found (expected SRC/images and SRC/labels)")
    children = sorted(p for p in images_root.iterdir() if p.is_dir())
    if not children:
        raise UserError(images_root, "no patient folders found")
    class_dirs = [p for p in children if p.name in CLASSES]
    if class_dirs and len(class_dirs) != len(children):
        raise UserError(images_root, f"mixes class folders {CLASSES} with patient folders")
    groups = [(p.name, p) for p in class_dirs] if class_dirs else [(None, images_root)]
    patients = []
    for cls, folder in groups:
        label_folder = labels_root / cls if cls else labels_root
        for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
            patients.append(Patient(patient.name, cls, patient, label_folder / patient.name / MASK_FILE))
    return patients


def _patient_id(patient: Patient) -> str:
    return f"{patient.cls}/{patient.name}" if patient.cls else patient.name


def load_patient(patient: Patient, slice_axis: int | None, keep_blank: bool,
                 report: ConversionReport) -> tuple[np.ndarray, np.ndarray]:
    """Images (3, Z, Y, X) in their stored dtype and mask (Z, Y, X) uint8 in {0, 1}."""
    paths = [patient.images / name for name in IMAGE_FILES] + [patient.mask]
    arrays = [_load_npy(path) for path in paths]
    for array, path in zip(arrays[1:], paths[1:]):
        if array.shape != arrays[0].shape:
            raise UserError(path, f"shape {array.shape} differs from {paths[0]} {arrays[0].shape}")
    images, mask = np.stack(arrays[:3]), arrays[3]
    axis = detect_slice_axis(images.shape[1:], patient.images) if slice_axis is None else slice_axis
    images, mask = np.moveaxis(images, axis + 1, 1), np.moveaxis(mask, axis, 0)
    mask = binarize_mask(mask, patient.mask, report)
    if not keep_blank:
        keep = _non_blank_slices(images, mask, patient, report)
        report.blank_slices_removed += int(np.count_nonzero(~keep))
        images, mask = images[:, keep], mask[keep]
    return np.ascontiguousarray(images), np.ascontiguousarray(mask)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(path, "file missing")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(path, f"unreadable .npy ({error})") from None
    if array.ndim != 3:
        raise UserError(path, f"expected a 3D volume, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UserError(path, f"unsupported dtype {array.dtype}")
    return array


def detect_slice_axis(shape: tuple[int, ...], where: Path) -> int:
    """The shortest axis; a tie is ambiguous and needs --slice-axis."""
    shortest = min(shape)
    if list(shape).count(shortest) > 1:
        raise UserError(where, f"cannot tell the slice axis of shape {shape}; use --slice-axis")
    return list(shape).index(shortest)


def binarize_mask(mask: np.ndarray, path: Path, report: ConversionReport) -> np.ndarray:
    """Any nonzero → 1 (BreastDM's 255); other values than 0/255 are reported."""
    unexpected = sorted(set(np.unique(mask).tolist()) - {0, MASK_FOREGROUND})
    if unexpected:
        report.warnings.append(f"{path}: mask values {unexpected[:10]} besides 0/{MASK_FOREGROUND}; "
                               "every nonzero value became tumor (1)")
    return (mask != 0).astype(np.uint8)


def _non_blank_slices(images: np.ndarray, mask: np.ndarray, patient: Patient,
                      report: ConversionReport) -> np.ndarray:
    """bool (Z,): slices to keep. Blank = zero in all three images; annotated slices are kept."""
    blank = ~np.any(images != 0, axis=(0, 2, 3))
    annotated = blank & np.any(mask != 0, axis=(1, 2))
    if annotated.any():
        report.warnings.append(f"{patient.mask}: slices {np.flatnonzero(annotated).tolist()} are "
                               "blank in every image but annotated; kept")
    keep = ~blank | annotated
    if not keep.any():
        raise UserError(patient.images, "every slice is blank")
    return keep


def _nifti_dtype(images: np.ndarray) -> np.dtype:
    """Keep the stored dtype where NIfTI readers handle it; else int32 if it fits, else float32."""
    if images.dtype in NIFTI_DTYPES:
        return images.dtype
    if images.dtype == bool:
        return np.dtype(np.uint8)
    info = np.iinfo(np.int32)
    if np.issubdtype(images.dtype, np.integer) and images.min() >= info.min and images.max() <= info.max:
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UserError("--spacing", f"needs three positive numbers Z Y X, got {list(spacing)}")
    return tuple(float(s) for s in spacing)


def _dataset_json(metadata: dict[str, dict], spacing: tuple[float, ...] | None) -> dict:
    return {
        "channel_names": CHANNEL_NAMES,
        "labels": LABELS,
        "numTraining": len(metadata),
        "file_ending": ".nii.gz",
        "name": "BreastDM",
        "spacing_mm": list(spacing or DEFAULT_SPACING),
        "spacing_source": "--spacing" if spacing else "default: BreastDM .npy files carry no spacing",
        "case_metadata": metadata,
    }
