"""One DICOM series in a folder → a volume, with pydicom.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on
the cross product of ImageOrientationPatient's row and column directions), never by file name.
The geometry follows the headers: in-plane spacing from PixelSpacing (row spacing = y, column
spacing = x), slice spacing from the positions, origin from the first slice, all in DICOM's LPS
world and kept as nnlite's RAS affine (see `itk_files`). Every voxel is stored value × slope +
intercept. A folder holding several series, unequal slice gaps (a missing slice) or slices of
different size or orientation is an error naming the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnlite.common.errors import UserError
from nnlite.data.itk_files import lps_to_affine

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

GAP_RTOL = 0.01  # slice gaps may differ by 1 % (rounding of the stored positions), no more
ORIENTATION_ATOL = 1e-4  # direction cosines of all slices must agree this closely


def _read_headers(folder: Path) -> list[Dataset]:
    import pydicom  # imported on first use (start-up time)
    from pydicom.errors import InvalidDicomError

    if not folder.is_dir():
        raise UserError(folder, "DICOM series folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(folder, "holds no DICOM files")
    slices = []
    for path in files:
        try:
            slices.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError, EOFError, ValueError) as error:
            raise UserError(path, f"not a readable DICOM file ({error})") from None
    return slices


def _one_series(folder: Path, slices: list[Dataset]) -> None:
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) != 1:
        raise UserError(folder, f"holds {len(series)} DICOM series; put each series in its own folder")
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
        missing = [s for s in slices if name not in s]
        if missing:
            raise UserError(folder, f"a slice has no {name} (only image series can be read)")
    if len({(int(s.Rows), int(s.Columns)) for s in slices}) != 1:
        raise UserError(folder, "slices of different sizes")
    orientations = np.array([[float(v) for v in s.ImageOrientationPatient] for s in slices])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_ATOL:
        raise UserError(folder, "slices of different orientations")


def sorted_slices(folder: Path) -> tuple[list[Dataset], np.ndarray]:
    """The slices of the folder's one series, ordered along the slice normal, and the LPS
    direction matrix (columns: x = row direction, y = column direction, z = normal)."""
    slices = _read_headers(folder)
    _one_series(folder, slices)
    orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in slices]) @ normal
    order = np.argsort(positions, kind="stable")
    slices, positions = [slices[i] for i in order], positions[order]
    gaps = np.diff(positions)
    if len(gaps) and (gaps.min() <= 0 or not np.allclose(gaps, gaps.mean(), rtol=GAP_RTOL)):
        raise UserError(folder, f"slice positions are not evenly spaced (gaps {gaps.min():.4g}–"
                                f"{gaps.max():.4g} mm): a slice is missing or duplicated")
    return slices, np.stack([orientation[:3], orientation[3:], normal], axis=1)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """A series folder → (1, Z, Y, X) float32, spacing (z, y, x) in mm, RAS affine."""
    slices, direction = sorted_slices(folder)
    try:
        planes = [s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1.0))
                  + float(getattr(s, "RescaleIntercept", 0.0)) for s in slices]
    except (ValueError, AttributeError, RuntimeError) as error:
        raise UserError(folder, f"unreadable pixel data ({error})") from None
    row_spacing, column_spacing = (float(v) for v in slices[0].PixelSpacing)
    first = np.array([float(v) for v in slices[0].ImagePositionPatient])
    if len(slices) > 1:
        last = np.array([float(v) for v in slices[-1].ImagePositionPatient])
        slice_spacing = float((last - first) @ direction[:, 2]) / (len(slices) - 1)
    else:
        slice_spacing = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    affine = lps_to_affine(direction.ravel(), (column_spacing, row_spacing, slice_spacing), first)
    array = np.stack(planes)[None]  # (1, Z, Y, X): rows are y, columns x
    return np.ascontiguousarray(array), (slice_spacing, row_spacing, column_spacing), affine
