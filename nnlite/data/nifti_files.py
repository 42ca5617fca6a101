"""NIfTI through nibabel (nnU-Net's `NibabelIO`): the default reader of `.nii.gz` and `.nii`.

NIfTI stores voxels with index order (i, j, k) = (x, y, z); they are reversed here so the slowest
(usually the coarsest, through-plane) axis comes first, matching nnU-Net's SimpleITK order.
The affine is kept untouched so label maps can be written back in the source geometry.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic

# nibabel prints the header fixes it makes while loading (e.g. "setting 0 dims to 1") straight to
# stderr; that would break the one-line error contract, and dataset.check_case reports them itself.
logging.getLogger("nibabel.global").setLevel(logging.ERROR)


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise UserError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for damaged headers
        raise UserError(path, f"unreadable NIfTI ({type(error).__name__}: {error})") from None


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """One NIfTI file (scl_slope applied) → (1, Z, Y, X) or (1, Y, X) float32, spacing, affine."""
    image = _load(path)
    try:
        voxels = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise UserError(path, f"unreadable or truncated image data ({error})") from None
    voxels = _squeeze_trailing(voxels, path)
    zooms = [float(z) for z in image.header.get_zooms()[: voxels.ndim]]
    array = voxels.transpose(tuple(reversed(range(voxels.ndim))))  # (x, y[, z]) → ([z, ]y, x)
    return np.ascontiguousarray(array)[None], tuple(reversed(zooms)), image.affine.copy()


def _squeeze_trailing(voxels: np.ndarray, path: Path) -> np.ndarray:
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim not in (2, 3):
        raise UserError(path, f"image must be 2D or 3D, got shape {voxels.shape}")
    return voxels


def nifti_header(path: Path) -> tuple[tuple[float, ...], np.ndarray]:
    """The raw pixdim values ([z, ]y, x) exactly as stored on disk, and the affine (no voxels read).

    nibabel's loader "fixes" a zero pixdim to 1 (in zooms and in the loaded header alike), which
    would hide a broken header, so the header is parsed again here with checks off.
    """
    image = _load(path)
    try:
        with ImageOpener(str(path)) as handle:
            header = type(image.header).from_fileobj(handle, check=False)
    except Exception as error:  # same header bytes nib.load just read; kept for damaged files
        raise UserError(path, f"unreadable NIfTI header ({error})") from None
    ndim = min(len(image.shape), 3)
    pixdim = [float(v) for v in header["pixdim"][1 : ndim + 1]]
    return tuple(reversed(pixdim)), image.affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X) array (dtype kept) atomically; the header's zooms come from the affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    # nibabel picks compression from the file name, so the temporary name keeps the ending.
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"

    def write(tmp: Path) -> None:
        staged = tmp.with_name(tmp.name + ending)
        nib.save(image, str(staged))
        staged.replace(tmp)

    write_atomic(path, write)
