"""2D natural images (`NaturalImage2DIO`: PNG, BMP, JPEG) and TIFF stacks (`Tiff3DIO`).

Neither format stores a trustworthy physical spacing. Natural images get 1 mm pixels; an RGB(A)
image is one file holding 3 (4) channels, as in nnU-Net. A TIFF's spacing comes from a sidecar
`<case>.json` holding {"spacing": [z, y, x]} ([y, x] for a 2D TIFF) in the array's axis order, as
nnU-Net's Tiff3DIO reads and writes it; without one it is 1 mm. Both get an axis-aligned affine.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic, write_json_atomic
from nnlite.data.file_names import split_channel_stem

UNIT_SPACING_MM = 1.0  # what a pixel measures when the file cannot say
PICTURE_SPACING = (UNIT_SPACING_MM, UNIT_SPACING_MM)  # (y, x): natural images store no spacing

# tifffile logs what it repairs in damaged files as warnings on stderr; the checks below report
# the damage as one UserError instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _axis_aligned(spacing: tuple[float, ...]) -> tuple[tuple[float, ...], np.ndarray]:
    """A spacing ([z, ]y, x) and its RAS affine: diagonal in NIfTI's (x, y, z) order."""
    zooms = list(reversed(spacing)) + [1.0] * (3 - len(spacing))
    return spacing, np.diag([*zooms, 1.0])


def read_picture(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """A PNG/BMP/JPEG → (C, Y, X) float32 (C = 1 grey, 3 RGB, 4 RGBA), 1 mm pixels, the affine."""
    from PIL import Image as PILImage  # imported on first use (start-up time)
    if not path.is_file():
        raise UserError(path, "file not found")
    try:
        with PILImage.open(path) as picture:
            pixels = np.asarray(picture)
    except (OSError, SyntaxError, ValueError, zlib.error) as error:  # PIL: truncated or not an image
        raise UserError(path, f"unreadable or truncated image ({error})") from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = np.moveaxis(pixels, -1, 0)
    else:
        raise UserError(path, f"expected a grey, RGB or RGBA picture, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels, dtype=np.float32), *_axis_aligned(PICTURE_SPACING)


def picture_header(path: Path) -> tuple[tuple[float, ...], np.ndarray]:
    return _axis_aligned(PICTURE_SPACING)


def write_picture(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (1, Y, X) label map as a grey PNG (8 bit, 16 bit when labels exceed 255)."""
    from PIL import Image as PILImage  # imported on first use (start-up time)
    if array.ndim != 3 or array.shape[0] != 1:
        raise UserError(path, f"a picture holds one slice, got shape {array.shape}")
    dtype = np.uint8 if array.max(initial=0) < 256 else np.uint16
    picture = PILImage.fromarray(np.ascontiguousarray(array[0].astype(dtype)))
    write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))


def sidecar_path(path: Path) -> Path:
    """`<case>.json` beside `<case>_CCCC.tif` (an image) or `<case>.tif` (a label map)."""
    stem = path.name[: path.name.rindex(".")]
    case_channel = split_channel_stem(stem)
    if case_channel and (path.parent / f"{case_channel[0]}.json").is_file():
        return path.parent / f"{case_channel[0]}.json"
    return path.parent / f"{stem}.json"


def _tiff_spacing(path: Path, ndim: int) -> tuple[float, ...]:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return (UNIT_SPACING_MM,) * ndim
    try:
        spacing = json.loads(sidecar.read_text())["spacing"]
        spacing = tuple(float(s) for s in spacing)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(sidecar, f"needs {{\"spacing\": [z, y, x]}} ({type(error).__name__}: {error})") from None
    if len(spacing) != ndim:
        raise UserError(sidecar, f"spacing {list(spacing)} has {len(spacing)} values, {path.name} "
                                 f"has {ndim} axes")
    return spacing


def _tiff_shape(path: Path) -> tuple[int, ...]:
    import tifffile  # imported on first use (start-up time)
    if not path.is_file():
        raise UserError(path, "file not found")
    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tuple(tiff.series[0].shape)
            declared = tiff.shaped_metadata  # tifffile's own files record the shape they hold
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise UserError(path, f"unreadable TIFF ({error})") from None
    if declared and tuple(declared[0].get("shape", shape)) != shape:
        raise UserError(path, f"truncated or damaged TIFF: holds {shape}, its header declares "
                              f"{tuple(declared[0]['shape'])}")
    return shape


def read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """A 2D or 3D TIFF → (1, [Z, ]Y, X) float32, spacing from the sidecar (else 1 mm), the affine."""
    import tifffile  # imported on first use (start-up time)
    shape = _tiff_shape(path)
    if len(shape) not in (2, 3):
        raise UserError(path, f"image must be 2D or 3D, got shape {shape}")
    try:
        voxels = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError, zlib.error, IndexError) as error:
        raise UserError(path, f"unreadable or truncated TIFF ({error})") from None
    return np.ascontiguousarray(voxels, dtype=np.float32)[None], *_axis_aligned(_tiff_spacing(path, voxels.ndim))


def tiff_header(path: Path) -> tuple[tuple[float, ...], np.ndarray]:
    return _axis_aligned(_tiff_spacing(path, len(_tiff_shape(path))))


def write_tiff(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X) array as a zlib TIFF and its spacing as the `<case>.json` sidecar."""
    import tifffile  # imported on first use (start-up time)
    zooms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)  # (x, y, z)
    spacing = [float(s) for s in reversed(zooms)]
    voxels = np.ascontiguousarray(array)
    write_atomic(path, lambda tmp: tifffile.imwrite(tmp, voxels, compression="zlib", photometric="minisblack"))
    write_json_atomic(path.parent / f"{path.name[: path.name.rindex('.')]}.json", {"spacing": spacing})
