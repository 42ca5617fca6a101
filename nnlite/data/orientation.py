"""Cases reoriented to the closest RAS orientation and back: nnU-Net's `NibabelIOWithReorient`.

nnU-Net reads the cases of a model whose plans name that reader with nibabel's
`as_reoriented(io_orientation(affine))` — voxel axes permuted and flipped so that they run as close
as possible to +x (Right), +y (Anterior), +z (Superior) — and writes each label map back in the
file's own orientation. A converted model of such a training must see its inputs the same way:
`to_ras` is applied to a case after reading (any format: every reader gives a RAS affine) and
`from_ras` to the label map and probabilities before writing. The case keeps its file's affine,
which is what its outputs are written with.

Spacing of a reoriented case: the column lengths of the reoriented affine (what nibabel puts in the
reoriented header); a case already in RAS order is returned as read (nibabel returns the image
itself, header zooms and all).
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    io_orientation,
    ornt_transform,
)

from nnlite.common.errors import UserError
from nnlite.common.layout import PLANS_FILE
from nnlite.data.image_io import Case

RAS = "RAS"
PLANS_KEY = "orientation"  # plans.extra: "RAS" = cases are reoriented on reading, back on writing
# nnU-Net's reader classes (plans' `image_reader_writer`, dataset.json's
# `overwrite_image_reader_writer`) → the orientation nnlite gives a model trained with them
# (None: voxels as stored, which is how nnlite's reader of every file ending gives them).
NNUNET_READERS = {"SimpleITKIO": None, "NibabelIO": None, "NaturalImage2DIO": None, "Tiff3DIO": None,
                  "NibabelIOWithReorient": RAS}


def reader_orientation(where: str, reader: str) -> str | None:
    """The orientation a model trained with nnU-Net's `reader` needs, or a UserError naming it."""
    if reader not in NNUNET_READERS:
        raise UserError(where, f"image reader {reader!r} cannot be converted (nnlite reads as "
                        f"{', '.join(NNUNET_READERS)})")
    return NNUNET_READERS[reader]


def _voxel_orientation(affine: np.ndarray) -> np.ndarray:
    """Per voxel axis (i, j, k) of the file: [RAS axis it becomes, +1 or -1 (flipped)]."""
    return io_orientation(np.asarray(affine, dtype=np.float64))


def _is_identity(ornt: np.ndarray) -> bool:
    return bool(np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]))


def _oriented(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """(..., Z, Y, X) in nnlite's order = reversed (i, j, k) → the same with `ornt` applied."""
    lead = array.ndim - 3
    ijk_first = np.moveaxis(array, (-1, -2, -3), (0, 1, 2))  # (i, j, k, ...)
    moved = apply_orientation(ijk_first, ornt)
    return np.ascontiguousarray(np.moveaxis(moved, (0, 1, 2), (lead + 2, lead + 1, lead)))


def to_ras(case: Case) -> Case:
    """A case (C, Z, Y, X) read from its file → its voxels and spacing in the closest RAS
    orientation; the affine stays the file's (see the module docstring)."""
    ornt = _voxel_orientation(case.affine)
    if _is_identity(ornt):
        return case
    column_lengths = np.linalg.norm(np.asarray(case.affine, dtype=np.float64)[:3, :3], axis=0)
    ras_lengths = np.empty(3)
    ras_lengths[ornt[:, 0].astype(int)] = column_lengths
    spacing = tuple(float(np.float32(s)) for s in ras_lengths[::-1])  # header zooms are float32
    return Case(_oriented(case.data, ornt), spacing, case.affine)


def from_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """An array (..., Z, Y, X) in the RAS orientation of a case read from a file with `affine` →
    the file's own orientation (the inverse of `to_ras`)."""
    ornt = _voxel_orientation(affine)
    if _is_identity(ornt):
        return array
    return _oriented(array, ornt_transform(axcodes2ornt(RAS), ornt))


def _checked(orientation: str | None) -> str | None:
    if orientation not in (None, RAS):
        raise UserError(PLANS_FILE, f"extra.{PLANS_KEY} = {orientation!r}: nnlite reorients to {RAS} only")
    return orientation


def read_oriented(case: Case, orientation: str | None) -> Case:
    """A case as read from its files → as the model needs it (plans.extra "orientation")."""
    return case if _checked(orientation) is None else to_ras(case)


def written_oriented(array: np.ndarray, affine: np.ndarray, orientation: str | None) -> np.ndarray:
    """An output array (..., Z, Y, X) of a case read with `read_oriented` → its file's orientation."""
    return array if _checked(orientation) is None else from_ras(array, affine)
