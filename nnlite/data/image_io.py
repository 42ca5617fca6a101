"""Image I/O for every format, chosen by file ending from one closed table.

Every reader gives the same thing: a float32 array (C, Z, Y, X), the spacing (z, y, x) in mm and
the geometry as one NIfTI-style RAS affine (4 × 4, voxel (x, y, z) index → mm), whatever the
format; the affine is JSON-able and goes into the preprocessing properties unchanged, and a label
map is written back with it in the format of its source. The readers, by nnU-Net's names (the
values `overwrite_image_reader_writer` in dataset.json may take):

  NibabelIO         .nii.gz .nii                        (the default for NIfTI)
  SimpleITKIO       .nrrd .nhdr .mha .mhd (+ NIfTI)     `itk_files`
  NaturalImage2DIO  .png .bmp .jpg .jpeg (RGB: 3 channels in one file)   `picture_files`
  Tiff3DIO          .tif .tiff (spacing from `<case>.json`)              `picture_files`

A folder is a DICOM series (`dicom_series`, read only). A 2D image becomes (1, Y, X) with a dummy
slice spacing of 999 × its largest in-plane spacing, as in nnU-Net. See docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.data.dicom_series import read_dicom_series
from nnlite.data.itk_files import itk_header, read_itk, write_itk
from nnlite.data.nifti_files import nifti_header, read_nifti, write_nifti
from nnlite.data.picture_files import (picture_header, read_picture, read_tiff, tiff_header, write_picture,
                                       write_tiff)

# A 2D image gets a dummy slice axis this much coarser than its in-plane spacing (as nnU-Net does),
# so the planner never pools across it.
SPACING_2D_FACTOR = 999.0
NIFTI_ENDINGS = (".nii.gz", ".nii")

Voxels = tuple[np.ndarray, tuple[float, ...], np.ndarray]  # (C, [Z, ]Y, X) array, spacing, affine


@dataclass(frozen=True)
class ImageFormat:
    """A reader/writer: nnU-Net's name for it, its endings, and how it reads and writes."""

    name: str
    endings: tuple[str, ...]
    read: Callable[[Path], Voxels]
    header: Callable[[Path], tuple[tuple[float, ...], np.ndarray]]  # spacing, affine; no voxels
    write: Callable[[Path, np.ndarray, np.ndarray], None]  # (path, (Z, Y, X) array, affine)
    label_ending: str | None = None  # the ending label maps are written in (None: the input's)
    packs_channels: bool = False  # one file may hold several channels (RGB), so fewer files


FORMATS = {
    "NibabelIO": ImageFormat("NibabelIO", NIFTI_ENDINGS, read_nifti, nifti_header, write_nifti),
    "SimpleITKIO": ImageFormat("SimpleITKIO", (".nrrd", ".nhdr", ".mha", ".mhd", *NIFTI_ENDINGS),
                               read_itk, itk_header, write_itk),
    "NaturalImage2DIO": ImageFormat("NaturalImage2DIO", (".png", ".bmp", ".jpg", ".jpeg"), read_picture,
                                    picture_header, write_picture, label_ending=".png",
                                    packs_channels=True),
    "Tiff3DIO": ImageFormat("Tiff3DIO", (".tif", ".tiff"), read_tiff, tiff_header, write_tiff),
}
# The reader of each file ending unless dataset.json names another (the closed table).
FORMAT_BY_ENDING = {ending: FORMATS[name] for name in ("SimpleITKIO", "NibabelIO", "NaturalImage2DIO",
                                                         "Tiff3DIO") for ending in FORMATS[name].endings}
SUPPORTED_ENDINGS = tuple(sorted(FORMAT_BY_ENDING, key=len, reverse=True))  # ".nii.gz" before ".gz"
# files that belong to an image file of an ending: a TIFF's <case>.json spacing sidecar, the voxel
# file of a detached MetaImage or NRRD header
COMPANION_ENDINGS = {".tif": (".json",), ".tiff": (".json",), ".mhd": (".raw", ".zraw"),
                     ".nhdr": (".raw", ".raw.gz")}
READER_KEY = "overwrite_image_reader_writer"  # dataset.json: nnU-Net's key naming the reader
DICOM_FOLDER_OUTPUT = ".nii.gz"  # a DICOM series' label map is written as NIfTI


@dataclass
class Image:
    """One image file: array (Z, Y, X), spacing (z, y, x) in mm, the RAS affine."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray


@dataclass
class Case:
    """A case's channels stacked: data (C, Z, Y, X) float32, spacing (z, y, x), source affine."""

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray


def file_ending(path: str | Path) -> str | None:
    """The table's ending of a file name (".nii.gz", ".mha", …), or None when it has none."""
    name = str(path).lower()
    return next((ending for ending in SUPPORTED_ENDINGS if name.endswith(ending)), None)


def image_format(path: str | Path, reader: str | None = None) -> ImageFormat:
    """The format that reads `path`: `reader` (a FORMATS name) if given, else by its ending."""
    ending = file_ending(path)
    if reader is not None:
        if reader not in FORMATS:
            raise UserError(reader, f"unknown image reader; choose one of {', '.join(FORMATS)}")
        if ending not in FORMATS[reader].endings:
            raise UserError(path, f"{reader} reads {', '.join(FORMATS[reader].endings)} only")
        return FORMATS[reader]
    if ending is None:
        raise UserError(path, f"unsupported image format; supported endings: {', '.join(FORMAT_BY_ENDING)}"
                              " (or a folder holding one DICOM series)")
    return FORMAT_BY_ENDING[ending]


def dataset_reader(where: str | Path, reader: object, ending: str) -> str | None:
    """dataset.json's `overwrite_image_reader_writer`: honoured when it names a reader of the
    table that reads `ending`; None (no key) chooses by ending."""
    if reader is None:
        return None
    readers = ", ".join(name for name, fmt in FORMATS.items() if ending in fmt.endings)
    if reader not in FORMATS:  # e.g. NibabelIOWithReorient: honoured only for converted nnU-Net models
        raise UserError(where, f"key '{READER_KEY}': nnlite does not train with the reader {reader!r}; "
                               f"readers of '{ending}' files: {readers}")
    if ending not in FORMATS[str(reader)].endings:
        raise UserError(where, f"key '{READER_KEY}': {reader!r} cannot read '{ending}' files; "
                               f"readers for them: {readers}")
    return str(reader)


def label_path_for(folder: Path, case: str, source: str | Path) -> Path:
    """Where the label map of a case read from `source` is written: the same format (a DICOM
    series folder: NIfTI; natural images: PNG)."""
    if Path(source).is_dir():
        return folder / f"{case}{DICOM_FOLDER_OUTPUT}"
    return folder / f"{case}{image_format(source).label_ending or file_ending(source)}"


def read_channels(path: str | Path, reader: str | None = None) -> Voxels:
    """One file (or DICOM series folder) → (C, Z, Y, X) float32, spacing (z, y, x), RAS affine."""
    path = Path(path)
    array, spacing, affine = read_dicom_series(path) if path.is_dir() else image_format(path, reader).read(path)
    if array.ndim == 3:  # 2D: (C, Y, X) → (C, 1, Y, X) with a dummy slice spacing
        array, spacing = array[:, None], (SPACING_2D_FACTOR * max(spacing), *spacing)
    return array, tuple(spacing), affine


def read_image(path: str | Path, reader: str | None = None) -> Image:
    """Read one single-channel image (2D or 3D) as float32 (Z, Y, X)."""
    array, spacing, affine = read_channels(path, reader)
    if array.shape[0] != 1:
        raise UserError(path, f"holds {array.shape[0]} channels, expected one")
    return Image(array[0], spacing, affine)


def read_header(path: str | Path, reader: str | None = None) -> tuple[tuple[float, ...], np.ndarray]:
    """The spacing ([z, ]y, x) exactly as stored (no fixes) and the RAS affine, from the header
    alone (cheap: no voxels are read)."""
    return image_format(path, reader).header(Path(path))


def read_case(paths: Sequence[str | Path], reader: str | None = None) -> Case:
    """Read a case's channel files (in channel order) into one (C, Z, Y, X) float32 array."""
    images = [read_channels(p, reader) for p in paths]
    first = images[0]
    for path, (array, spacing, _) in zip(paths[1:], images[1:]):
        if array.shape[1:] != first[0].shape[1:]:
            raise UserError(path, f"shape {array.shape[1:]} differs from channel 0 {first[0].shape[1:]}")
        if not np.allclose(spacing, first[1], rtol=1e-3):
            raise UserError(path, f"spacing {spacing} differs from channel 0 {first[1]}")
    data = images[0][0] if len(images) == 1 else np.concatenate([array for array, _, _ in images])
    return Case(data, first[1], first[2])


def write_seg(path: str | Path, seg: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (Z, Y, X) label map atomically with the source affine (uint8 when labels fit), in
    the format of the path's ending."""
    return write_image(path, as_written_labels(seg), affine)


def as_written_labels(seg: np.ndarray) -> np.ndarray:
    """A label map in the dtype `write_seg` writes it with: uint8 when the labels fit, else int16."""
    dtype = np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() < 256) else np.int16
    return seg.astype(dtype)


def write_raw_case(raw: Path, case: str, images: Sequence[np.ndarray], seg: np.ndarray,
                   affine: np.ndarray) -> None:
    """A training case in nnU-Net's raw layout: `imagesTr/<case>_<CCCC>.nii.gz` per channel (dtype
    kept) and `labelsTr/<case>.nii.gz` (what the converters and the demo generator write)."""
    for channel, image in enumerate(images):
        write_image(Path(raw) / "imagesTr" / f"{case}_{channel:04d}.nii.gz", image, affine)
    write_seg(Path(raw) / "labelsTr" / f"{case}.nii.gz", seg, affine)


def write_image(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (Z, Y, X) image atomically with the given affine (dtype kept)."""
    path = Path(path)
    image_format(path).write(path, np.asarray(array), np.asarray(affine, dtype=np.float64))
    return path
