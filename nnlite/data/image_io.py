"""Image I/O with nibabel. Arrays come out as (C, Z, Y, X) float32 with spacing (z, y, x) in mm.

NIfTI stores voxels with index order (i, j, k) = (x, y, z); nnlite reverses it so the slowest
(usually the coarsest, through-plane) axis comes first, matching nnU-Net's SimpleITK order.
The affine is kept untouched so label maps can be written back in the source geometry.
See docs/conventions.md.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic

# A 2D image gets a dummy slice axis this much coarser than its in-plane spacing (as nnU-Net does),
# so the planner never pools across it.
SPACING_2D_FACTOR = 999.0
NIFTI_ENDINGS = (".nii.gz", ".nii")

# nibabel prints the header fixes it makes while loading (e.g. "setting 0 dims to 1") straight to
# stderr; that would break the one-line error contract, and dataset.check_case reports them itself.
logging.getLogger("nibabel.global").setLevel(logging.ERROR)


@dataclass
class Image:
    """One image file: array (Z, Y, X), spacing (z, y, x) in mm, the NIfTI affine."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray


@dataclass
class Case:
    """A case's channels stacked: data (C, Z, Y, X) float32, spacing (z, y, x), source affine."""

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray


def check_file_ending(path: str | Path) -> None:
    name = str(path)
    if not name.endswith(NIFTI_ENDINGS):
        raise UserError(path, "only NIfTI (.nii.gz, .nii) is supported for now")


def _load(path: Path) -> nib.Nifti1Image:
    check_file_ending(path)
    if not path.is_file():
        raise UserError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for damaged headers
        raise UserError(path, f"unreadable NIfTI ({type(error).__name__}: {error})") from None


def header_spacing(path: str | Path) -> tuple[float, ...]:
    """The raw pixdim values (z, y, x) exactly as stored on disk.

    nibabel's loader "fixes" a zero pixdim to 1 (in zooms and in the loaded header alike), which
    would hide a broken header, so the header is parsed again here with checks off.
    """
    path = Path(path)
    image = _load(path)
    try:
        with ImageOpener(str(path)) as handle:
            header = type(image.header).from_fileobj(handle, check=False)
    except Exception as error:  # same header bytes nib.load just read; kept for damaged files
        raise UserError(path, f"unreadable NIfTI header ({error})") from None
    ndim = min(len(image.shape), 3)
    pixdim = [float(v) for v in header["pixdim"][1 : ndim + 1]]
    return tuple(reversed(pixdim))


def read_image(path: str | Path) -> Image:
    """Read one NIfTI file (2D or 3D; scl_slope applied) as float32 (Z, Y, X)."""
    path = Path(path)
    image = _load(path)
    try:
        voxels = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise UserError(path, f"unreadable or truncated image data ({error})") from None
    voxels = _squeeze_trailing(voxels, path)
    zooms = [float(z) for z in image.header.get_zooms()[: voxels.ndim]]
    if voxels.ndim == 2:
        array = voxels.T[None]  # (x, y) → (1, y, x)
        spacing = (SPACING_2D_FACTOR * max(zooms), zooms[1], zooms[0])
    else:
        array = voxels.transpose(2, 1, 0)
        spacing = tuple(reversed(zooms))
    return Image(np.ascontiguousarray(array), spacing, image.affine.copy())


def _squeeze_trailing(voxels: np.ndarray, path: Path) -> np.ndarray:
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim not in (2, 3):
        raise UserError(path, f"image must be 2D or 3D, got shape {voxels.shape}")
    return voxels


def read_case(paths: Sequence[str | Path]) -> Case:
    """Read a case's channel files (in channel order) into one (C, Z, Y, X) float32 array."""
    images = [read_image(p) for p in paths]
    first = images[0]
    for path, image in zip(paths[1:], images[1:]):
        if image.array.shape != first.array.shape:
            raise UserError(path, f"shape {image.array.shape} differs from channel 0 {first.array.shape}")
        if not np.allclose(image.spacing, first.spacing, rtol=1e-3):
            raise UserError(path, f"spacing {image.spacing} differs from channel 0 {first.spacing}")
    data = np.stack([image.array for image in images])
    return Case(data, first.spacing, first.affine)


def write_seg(path: str | Path, seg: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (Z, Y, X) label map atomically with the source affine (uint8 when labels fit)."""
    dtype = np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() < 256) else np.int16
    voxels = np.ascontiguousarray(seg.astype(dtype).transpose(2, 1, 0))
    return write_image_voxels(path, voxels, affine)


def write_image(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (Z, Y, X) image atomically with the given affine (dtype kept)."""
    return write_image_voxels(path, np.ascontiguousarray(array.transpose(2, 1, 0)), affine)


def write_image_voxels(path: str | Path, voxels: np.ndarray, affine: np.ndarray) -> Path:
    """Write voxels already in NIfTI (x, y, z) order; the header's zooms come from the affine."""
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_xyzt_units("mm")
    path = Path(path)
    # nibabel picks compression from the file name, so the temporary name keeps the ending.
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"

    def write(tmp: Path) -> None:
        staged = tmp.with_name(tmp.name + ending)
        nib.save(image, str(staged))
        staged.replace(tmp)

    return write_atomic(path, write)
