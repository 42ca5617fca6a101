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
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
DETACHED_ENDINGS = (".mhd", ".nhdr")  # a header file plus a separate voxel file
METAIMAGE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                   "MET_UINT": 4, "MET_FLOAT": 4, "MET_LONG": 8, "MET_ULONG": 8, "MET_DOUBLE": 8}


def _sitk() -> ModuleType:
    """SimpleITK, imported on first use (a second of start-up most runs never need), its warnings
    off: ITK prints them to stderr, which would break the one-line error contract."""
    import SimpleITK

    SimpleITK.ProcessObject.SetGlobalWarningDisplay(False)
    return SimpleITK


def lps_to_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]
                  ) -> np.ndarray:
    """The RAS affine (4 × 4) of ITK's 2D or 3D geometry (2D: a unit slice axis added)."""
    ndim = len(spacing)
    rotation, zooms, shift = np.eye(3), np.ones(3), np.zeros(3)
    rotation[:ndim, :ndim] = np.reshape(direction, (ndim, ndim))
    zooms[:ndim], shift[:ndim] = spacing, origin
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ rotation @ np.diag(zooms)
    affine[:3, 3] = LPS_TO_RAS @ shift
    return affine


def affine_from_itk(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    return lps_to_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())


def set_itk_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    """Give a 3D SimpleITK image the spacing, origin and direction of a RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (lps[:, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in lps[:, 3]])


def check_metaimage_size(path: Path) -> None:
    """A truncated MetaImage (.mha/.mhd) is a UserError before ITK reads it: ITK's MetaIO would
    print its own complaint to stderr first, breaking the one-line error contract."""
    header: dict[str, str] = {}
    with open(path, "rb") as handle:
        while "ElementDataFile" not in header and (line := handle.readline()):
            key, _, value = line.decode("latin-1").partition("=")
            header[key.strip()] = value.strip()
        start = handle.tell()
    source = header.get("ElementDataFile", "LOCAL")
    data = path if source == "LOCAL" else path.parent / source
    if header.get("CompressedData", "False") == "True":
        expected = int(header.get("CompressedDataSize", "0") or 0)
    else:
        per_voxel = METAIMAGE_BYTES.get(header.get("ElementType", ""), 0)
        expected = per_voxel * int(header.get("ElementNumberOfChannels", "1"))
        expected *= int(np.prod([int(v) for v in header.get("DimSize", "0").split()]))
    available = data.stat().st_size - (start if data == path else 0) if data.is_file() else 0
    if available < expected:
        raise UserError(path, f"truncated image: {available} of {expected} voxel bytes")


def _read(path: Path) -> sitk.Image:
    sitk = _sitk()
    if not path.is_file():
        raise UserError(path, "file not found")
    if path.name.lower().endswith((".mha", ".mhd")):
        check_metaimage_size(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:  # ITK reports damaged headers and truncated voxels alike
        raise UserError(path, f"unreadable or truncated image ({_itk_reason(error)})") from None


def _itk_reason(error: RuntimeError) -> str:
    """The line of an ITK exception that says what went wrong, without source paths and addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = next((line for line in lines if "ERROR" in line or line.startswith("[")), lines[-1] if lines else "")
    return said.split("): ", 1)[-1][:200] or "SimpleITK could not read it"


def read_itk(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """One file → (C, Z, Y, X) or (C, Y, X) float32 (C: the pixel's components), spacing, affine."""
    sitk = _sitk()
    image = _read(path)
    if image.GetDimension() not in (2, 3):
        raise UserError(path, f"image must be 2D or 3D, got {image.GetDimension()} dimensions")
    array = sitk.GetArrayFromImage(image)  # ([z, ]y, x[, components])
    array = np.moveaxis(array, -1, 0) if image.GetNumberOfComponentsPerPixel() > 1 else array[None]
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return np.ascontiguousarray(array, dtype=np.float32), spacing, affine_from_itk(image)


def itk_header(path: Path) -> tuple[tuple[float, ...], np.ndarray]:
    """Spacing ([z, ]y, x) and RAS affine from the header alone (no voxels read)."""
    sitk = _sitk()
    if not path.is_file():
        raise UserError(path, "file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserError(path, f"unreadable image header ({_itk_reason(error)})") from None
    return tuple(float(s) for s in reversed(reader.GetSpacing())), affine_from_itk(reader)


def write_itk(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X) array (dtype kept, compressed) with the affine's geometry, atomically."""
    sitk = _sitk()
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
    sitk = _sitk()
    staging = path.parent / f".{path.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=True)
        for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
