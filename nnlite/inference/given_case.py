"""A case given to the Python API (`nnlite.Predictor.predict`): files, or voxels in memory.

Files are read as `predict` reads its input folder (`options.read_input_case`: a `<case>_<CCCC>`
file stands for its case, whose other channel files lie beside it). An array becomes the `Case` a
file of the same voxels, spacing and affine reads as: (C, Z, Y, X) float32 in nnlite's axis order,
spacing (z, y, x) — the header's zooms, or the affine's column lengths rounded to float32 as a
NIfTI header stores them — and the affine (diag(x, y, z, 1) when only the spacing is given, the
affine `predict` writes for a file without one).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.data.image_io import SPACING_2D_FACTOR, Case, file_ending, read_case
from nnlite.data.orientation import read_oriented
from nnlite.inference.options import channel_of, find_input_cases, read_input_case

ARRAY_CASE = "array"  # the case name of an in-memory array in messages


def read_files(image: str | Path | Sequence[str | Path], num_channels: int,
               orientation: str | None) -> tuple[Case, str]:
    """A `<case>_<CCCC>` file (and the case's other channel files beside it), or the list of a
    case's channel files, read as `predict` reads its input folder; a file otherwise named is a
    one-channel case."""
    paths = [Path(image)] if isinstance(image, (str, Path)) else [Path(p) for p in image]
    for path in paths:
        if not path.exists():
            raise UserError(path, "file not found")
    named = [channel_of(path) for path in paths]
    if all(named) and len({case for case, _ in named}) == 1:
        case = named[0][0]
        if len(paths) == 1:  # the first channel's file stands for the case
            paths = find_input_cases(paths[0].parent)[case]
        return read_input_case(case, paths, num_channels, orientation), case
    raw = read_case(paths)
    if raw.data.shape[0] != num_channels:
        raise UserError(paths[0], f"holds {raw.data.shape[0]} channels, the model needs {num_channels}")
    return read_oriented(raw, orientation), paths[0].name.removesuffix(file_ending(paths[0]) or "")


def case_of_array(array: Any, spacing: Sequence[float] | None, affine: Any, num_channels: int) -> Case:
    """Voxels (C, Z, Y, X) or (Z, Y, X) and their geometry → the Case a file of them reads as."""
    data = np.asarray(array)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise UserError(ARRAY_CASE, f"holds {data.dtype} values, expected numbers")
    planar = spacing is not None and np.ndim(spacing) == 1 and len(spacing) == 2  # a 2D image, spacing (y, x)
    if data.ndim == 3 - planar and num_channels == 1:
        data = data[None]
    if data.ndim != 4 - planar or data.shape[0] != num_channels:
        wanted = ("(C, Y, X)" if planar else "(C, Z, Y, X)") + (" or without C" if num_channels == 1 else "")
        raise UserError(ARRAY_CASE, f"shape {data.shape}: expected {wanted} with C = {num_channels}, the "
                                    "model's channels")
    if planar:  # as `image_io.read_channels` reads a 2D file: one slice, a dummy slice spacing
        data = data[:, None]
        spacing = (SPACING_2D_FACTOR * max(positive(s) for s in spacing), *spacing)
    spacing, affine = array_geometry(spacing, affine)
    return Case(np.ascontiguousarray(data, dtype=np.float32), spacing, affine)


def array_geometry(spacing: Sequence[float] | None, affine: Any) -> tuple[tuple[float, ...], np.ndarray]:
    """(spacing (z, y, x), affine) of an array: as given; the spacing from the affine's column
    lengths (float32, as a NIfTI header's zooms); the affine diag(x, y, z, 1) from the spacing."""
    given = spacing
    if spacing is None and affine is None:
        raise UserError("spacing", "an array needs its voxel spacing (z, y, x) in mm, or its affine")
    if affine is not None:
        try:
            affine = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError):
            affine = np.full(np.shape(affine), np.nan)
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) == 0:
            raise UserError("affine", f"expected an invertible 4×4 matrix of numbers, got shape {affine.shape}")
    if spacing is None:
        lengths = np.linalg.norm(affine[:3, :3], axis=0)  # (x, y, z)
        spacing = [float(np.float32(s)) for s in lengths[::-1]]
    spacing = tuple(positive(s) for s in spacing) if np.ndim(spacing) == 1 else ()
    if len(spacing) != 3:
        raise UserError("spacing", f"expected 3 positive numbers (z, y, x) in mm (2D: (y, x)), got {given!r}")
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return spacing, affine


def positive(value: Any) -> float:
    """A spacing entry: a finite number > 0 in mm, else a UserError naming the spacing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise UserError("spacing", f"expected positive numbers in mm, got {value!r}")
    return number
