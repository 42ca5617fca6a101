"""NRRD, MetaImage and (on request) NIfTI through SimpleITK (nnU-Net's `SimpleITKIO`).

SimpleITK's array is already (Z, Y, X) and its spacing (x, y, z), so only the spacing is reversed.
Its geometry (origin, direction, spacing) is in LPS world coordinates; nnlite keeps every format's
geometry as one NIfTI-style RAS affine (4 × 4, voxel (i, j, k) = (x, y, z) → mm), so the record in
the preprocessing properties, the `check` comparisons and the NIfTI path all stay as they were.
RAS = diag(-1, -1, 1) · LPS, for the rotation-and-scale part and the origin alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
DETACHED_ENDINGS = (".mhd", ".nhdr")  # a header file plus a separate voxel file


def affine_from_itk(image: sitk.Image) -> np.ndarray:
    """The RAS affine (4 × 4) of a 2D or 3D SimpleITK image (2D: a unit slice axis added)."""
    ndim = image.GetDimension()
    direction = np.eye(3)
    direction[:ndim, :ndim] = np.reshape(image.GetDirection(), (ndim, ndim))
    spacing, origin = np.ones(3), np.zeros(3)
    spacing[:ndim], origin[:ndim] = image.GetSpacing(), image.GetOrigin()
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def set_itk_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    """Give a 3D SimpleITK image the spacing, origin and direction of a RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (lps[:, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in lps[:, 3]])


def _read(path: Path) -> sitk.Image:
    import SimpleITK as sitk  # imported on first use (start-up time)
    if not path.is_file():
        raise UserError(path, "file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:  # ITK reports damaged headers and truncated voxels alike
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise UserError(path, f"unreadable or truncated image ({reason})") from None


def read_itk(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """One file → (C, Z, Y, X) or (C, Y, X) float32 (C: the pixel's components), spacing, affine."""
    import SimpleITK as sitk  # imported on first use (start-up time)
    image = _read(path)
    if image.GetDimension() not in (2, 3):
        raise UserError(path, f"image must be 2D or 3D, got {image.GetDimension()} dimensions")
    array = sitk.GetArrayFromImage(image)  # ([z, ]y, x[, components])
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return np.ascontiguousarray(array, dtype=np.float32), spacing, affine_from_itk(image)


def itk_header(path: Path) -> tuple[tuple[float, ...], np.ndarray]:
    """Spacing ([z, ]y, x) and RAS affine from the header alone (no voxels read)."""
    import SimpleITK as sitk  # imported on first use (start-up time)
    if not path.is_file():
        raise UserError(path, "file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserError(path, f"unreadable image header ({str(error).strip()[-200:]})") from None
    probe = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
    probe.SetSpacing(reader.GetSpacing())
    probe.SetOrigin(reader.GetOrigin())
    probe.SetDirection(reader.GetDirection())
    return tuple(float(s) for s in reversed(reader.GetSpacing())), affine_from_itk(probe)


def write_itk(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X) array (dtype kept, compressed) with the affine's geometry, atomically."""
    import SimpleITK as sitk  # imported on first use (start-up time)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    set_itk_geometry(image, affine)
    if path.name.endswith(DETACHED_ENDINGS):
        _write_detached(path, image)
        return
    ending = path.name[path.name.rindex("."):]  # ITK picks the writer from the ending

    def write(tmp: Path) -> None:
        staged = tmp.with_name(tmp.name + ending)
        sitk.WriteImage(image, str(staged), useCompression=True)
        staged.replace(tmp)

    write_atomic(path, write)


def _write_detached(path: Path, image: sitk.Image) -> None:
    """Header and voxel file are written under their final names in a hidden staging folder and
    moved beside it, the header last, so a header never points to a missing voxel file."""
    import SimpleITK as sitk  # imported on first use (start-up time)
    staging = path.parent / f".{path.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=True)
        for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
