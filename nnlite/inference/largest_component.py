"""Post-processing at prediction time: keep the largest connected component of chosen labels.

Which steps to apply is decided on cross-validation results (`evaluation/postprocessing.py`) and
stored as JSON (`results/<config>/postprocessing.json`, `"steps"`: a list of label lists, each
meaning "keep the largest component of the union of these labels"); here they are read and
applied to a label map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnlite.common.errors import UserError
from nnlite.common.files import read_json


def keep_largest_component(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Set to 0 every voxel of `labels` outside the largest full-connectivity component of their
    union (26-neighbourhood in 3D, as skimage's `label` with full connectivity)."""
    mask = np.isin(seg, labels)
    structure = np.ones((3,) * seg.ndim, dtype=bool)
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return seg
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = seg.copy()
    out[mask & (components != int(sizes.argmax()))] = 0
    return out


def apply_postprocessing(seg: np.ndarray, steps: Sequence[Sequence[int]]) -> np.ndarray:
    """Apply the accepted steps in order (each: keep the largest component of these labels)."""
    for labels in steps:
        seg = keep_largest_component(seg, list(labels))
    return seg


def load_postprocessing(path: str | Path) -> list[list[int]]:
    """The accepted steps of a `postprocessing.json`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "not found: run `python -m nnlite.postprocess WORK` first")
    try:
        steps = read_json(path)["steps"]
        return [[int(label) for label in step] for step in steps]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(path, f"not a post-processing file ({error})") from None
