"""Preprocess one case: transpose → crop to nonzero → normalize → resample; store it; undo it.

Order as nnU-Net's DefaultPreprocessor. We keep *normalize before resampling*: the masked z-score
needs the nonzero mask at the original resolution, and the resampling clips every output to the
range of its input (skimage's clip=True, see `nnlite.preprocessing.resampling`), so cubic-spline overshoot
cannot push CT values outside the clipped, normalized range.

Files per case in `WORK/preprocessed/<data_identifier>/` (flat):
  <case>.npy       float32 (C, Z, Y, X), `np.load(path, mmap_mode="r")` reads patches lazily
  <case>_seg.npy   int8 (1, Z, Y, X) (int16 when a label exceeds 127), -1 outside the body
  <case>.json      `CaseProperties`, written last: its presence marks the case as complete
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import read_json, save_npy_atomic, write_text_atomic
from nnlite.common.schema import from_dict, to_jsonable
from nnlite.data.cropping import crop_to_nonzero, uncrop
from nnlite.data.regions import region_key
from nnlite.plans import Plans
from nnlite.preprocessing.normalization import normalize
from nnlite.preprocessing.resampling import new_shape_for, resample_image, resample_seg

PROPERTIES_VERSION = 1
LOCATION_SEED = 1234  # nnU-Net's RandomState seed for foreground location sampling
MIN_LOCATIONS = 10000  # keep at least this many locations per class (or all of them)
MIN_LOCATION_FRACTION = 0.01  # ... and at least this fraction of the class's voxels
ANNOTATED_KEY = "annotated"  # class_locations key of annotated voxels (datasets with an ignore label)
INT8_MAX_LABEL = 127  # segs are stored as int8 when every label fits, else int16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseProperties:
    """What was done to a case, so predictions can be mapped back (`<case>.json`).

    Shapes, bbox and `spacing` are in the preprocessed (transposed) axis order; `original_spacing`
    and `affine` are the raw file's. class_locations: class key (a label "2", a region "(2, 3)",
    ANNOTATED_KEY) → [[z, y, x], …] preprocessed voxels.
    """

    case: str
    original_spacing: tuple[float, ...]  # raw (z, y, x) order, as read
    shape_before_crop: tuple[int, ...]  # after transpose
    bbox: tuple[tuple[int, int], ...]  # [start, stop) per axis, after transpose
    shape_after_crop: tuple[int, ...]
    spacing: tuple[float, ...]  # after resampling (2d: the first axis keeps the case's own)
    shape: tuple[int, ...]  # after resampling
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)
    affine: list[list[float]] = field(default_factory=list)
    schema_version: int = PROPERTIES_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != PROPERTIES_VERSION:
            raise UserError(self.case or "case properties",
                            f"schema_version {self.schema_version} is not supported")


def transposed_spacing(spacing: Sequence[float], plans: Plans) -> tuple[float, ...]:
    """Raw (z, y, x) spacing → preprocessed axis order."""
    return tuple(float(spacing[axis]) for axis in plans.transpose)


def target_spacing(plans: Plans, config_name: str, spacing_t: Sequence[float]) -> tuple[float, ...]:
    """The configuration's spacing; a 2d configuration keeps the case's own first-axis spacing."""
    target = tuple(float(s) for s in plans.configurations[config_name].spacing)
    if len(target) < len(spacing_t):
        target = (float(spacing_t[0]),) + target
    return target


def sample_class_locations(seg: np.ndarray, classes: Sequence[int | tuple[int, ...]], seed: int = LOCATION_SEED,
                           ignore_label: int | None = None) -> dict[str, list[list[int]]]:
    """seg (1, *spatial) → class key → [[z, y, x], …] sampled as nnU-Net does.

    A class is a label (key "2") or a region, a tuple of labels (key `region_key`, "(2, 3)"): the
    voxels holding any of its labels, taken label by label in the region's order (the reference's
    order of its union). Per class with n voxels: max(min(10000, n), ceil(0.01 n)) coordinates
    without replacement, drawn from one RandomState(seed) shared by the classes in the given order
    (same draws as the reference). An absent class gets []. With an ignore label, the annotated
    voxels (any label but the ignore label, inside the body) are sampled last, under ANNOTATED_KEY.
    """
    rng = np.random.RandomState(seed)
    locations = {}
    for cls in classes:
        members = cls if isinstance(cls, tuple) else (cls,)
        voxels = np.concatenate([np.argwhere(seg[0] == label) for label in members])
        locations[region_key(cls) if isinstance(cls, tuple) else str(cls)] = _sample_voxels(voxels, rng)
    if ignore_label is not None:
        locations[ANNOTATED_KEY] = _sample_voxels(np.argwhere((seg[0] >= 0) & (seg[0] != ignore_label)), rng)
    return locations


def location_classes(plans: Plans) -> list[int | tuple[int, ...]]:
    """What foreground locations are stored per: each region of a region dataset (as nnU-Net's
    foreground_regions), else each foreground label."""
    if plans.regions:
        return [tuple(region.labels) for region in plans.regions]
    return list(plans.foreground_labels)


def _sample_voxels(coords: np.ndarray, rng: np.random.RandomState) -> list[list[int]]:
    n = len(coords)
    if n == 0:
        return []
    count = max(min(MIN_LOCATIONS, n), int(math.ceil(n * MIN_LOCATION_FRACTION)))
    return coords[rng.choice(n, count, replace=False)].tolist()


def seg_dtype(seg: np.ndarray) -> type:
    """How a label map is stored: int8 when every label fits, else int16."""
    if seg.size == 0 or (seg.min() >= -INT8_MAX_LABEL - 1 and seg.max() <= INT8_MAX_LABEL):
        return np.int8
    return np.int16


def preprocess_case(data: np.ndarray, seg: np.ndarray | None, spacing: Sequence[float], plans: Plans,
                    config_name: str, *, case: str = "", affine: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Raw data (C, Z, Y, X) and seg (Z, Y, X) (raw axis order) → network-space arrays.

    Returns data float32 (C, *shape), seg int8/int16 (1, *shape) with -1 outside the nonzero region
    (None when `seg` is None), and the CaseProperties needed to map predictions back.
    """
    config = plans.configurations[config_name]
    perm = tuple(plans.transpose)
    # astype copies: normalization works in place and must not touch the caller's array
    data = np.asarray(data).astype(np.float32).transpose((0,) + tuple(a + 1 for a in perm))
    labels = None if seg is None else np.asarray(seg, dtype=np.int16).transpose(perm)[None]
    spacing_t = transposed_spacing(spacing, plans)
    shape_before_crop = data.shape[1:]
    crop = crop_to_nonzero(data, labels)
    new_spacing = target_spacing(plans, config_name, spacing_t)
    new_shape = new_shape_for(crop.data.shape[1:], spacing_t, new_spacing)
    normed = normalize(crop.data, crop.seg, config.normalization, config.use_mask_for_norm,
                       plans.intensity_per_channel)
    out_data = resample_image(normed, new_shape, spacing_t, new_spacing, config.resampling_order_data,
                              config.resampling_order_z)
    out_seg, locations = None, {}
    if seg is not None:
        out_seg = resample_seg(crop.seg, new_shape, spacing_t, new_spacing, config.resampling_order_seg)
        locations = sample_class_locations(out_seg, location_classes(plans), ignore_label=plans.ignore_label)
        out_seg = out_seg.astype(seg_dtype(out_seg), copy=False)
    props = CaseProperties(
        case=case, original_spacing=tuple(float(s) for s in spacing),
        shape_before_crop=tuple(int(s) for s in shape_before_crop),
        bbox=tuple((int(a), int(b)) for a, b in crop.bbox),
        shape_after_crop=tuple(int(s) for s in crop.data.shape[1:]),
        spacing=new_spacing, shape=tuple(int(s) for s in out_data.shape[1:]),
        class_locations=locations,
        affine=[] if affine is None else np.asarray(affine, dtype=float).tolist())
    return np.ascontiguousarray(out_data, dtype=np.float32), out_seg, props


def resample_to_original(probs: np.ndarray, props: CaseProperties, plans: Plans,
                         config_name: str) -> np.ndarray:
    """Logits/probabilities (K, *props.shape) in network space → float32 (K, *shape_after_crop).

    Interpolation order from the plan (`resampling_order_probabilities`, 1 by default, as nnU-Net's
    export) with the separate-z rule; the spacing actually used is recorded in `props`.
    """
    if tuple(probs.shape[1:]) != tuple(props.shape):
        raise UserError(props.case or config_name,
                        f"prediction shape {tuple(probs.shape[1:])} is not the preprocessed {props.shape}")
    spacing_t = transposed_spacing(props.original_spacing, plans)
    order = plans.configurations[config_name].resampling_order_probabilities
    return resample_image(np.asarray(probs, dtype=np.float32), props.shape_after_crop, props.spacing,
                          spacing_t, order=order)


def restore_original_geometry(array: np.ndarray, props: CaseProperties, plans: Plans,
                              fill: float | Sequence[float] = 0) -> np.ndarray:
    """(..., *shape_after_crop) → (..., *raw shape) in the raw axis order: uncrop, transpose back.

    `fill` is the value outside the crop; a sequence gives one value per leading channel (for
    probabilities: 1 for background, 0 for the other classes, as nnU-Net does).
    """
    if np.ndim(fill) == 0:
        full = uncrop(array, props.bbox, props.shape_before_crop, fill)
    else:
        full = np.stack([uncrop(a, props.bbox, props.shape_before_crop, f) for a, f in zip(array, fill)])
    lead = full.ndim - len(props.shape_before_crop)
    back = tuple(range(lead)) + tuple(lead + a for a in plans.transpose_backward)
    return np.ascontiguousarray(full.transpose(back))


def case_files(folder: str | Path, case: str) -> tuple[Path, Path, Path]:
    """(<case>.npy, <case>_seg.npy, <case>.json) in a preprocessed folder."""
    folder = Path(folder)
    return folder / f"{case}.npy", folder / f"{case}_seg.npy", folder / f"{case}.json"


def save_preprocessed(folder: str | Path, data: np.ndarray, seg: np.ndarray | None,
                      props: CaseProperties) -> None:
    """Write a case atomically; the JSON goes last so a present JSON means a complete case."""
    data_path, seg_path, json_path = case_files(folder, props.case)
    json_path.unlink(missing_ok=True)  # an overwrite must not look complete while half-written
    save_npy_atomic(data_path, np.ascontiguousarray(data, dtype=np.float32))
    if seg is not None:
        save_npy_atomic(seg_path, np.ascontiguousarray(seg))
    write_text_atomic(json_path, properties_to_json(props))


def properties_to_json(props: CaseProperties) -> str:
    """Compact one-line JSON: tens of thousands of location triples would make an indented file
    slow to write (json's C encoder only runs without indent) and several times larger."""
    fields = {name: to_jsonable(getattr(props, name)) for name in props.__dataclass_fields__
              if name != "class_locations"}
    fields["class_locations"] = props.class_locations  # already plain lists of ints
    return json.dumps(fields, separators=(",", ":")) + "\n"


def is_preprocessed(folder: str | Path, case: str, with_seg: bool = True) -> bool:
    data_path, seg_path, json_path = case_files(folder, case)
    return json_path.is_file() and data_path.is_file() and (seg_path.is_file() or not with_seg)


def load_case_properties(path: str | Path) -> CaseProperties:
    """Read `<case>.json`; a missing or malformed file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "not found (run `python -m nnlite.preprocess WORK` first)")
    try:
        fields = read_json(path)
        # the locations skip the generic (per-element, slow) schema conversion: checked in bulk
        locations = fields.pop("class_locations", {}) if isinstance(fields, dict) else {}
        props = from_dict(CaseProperties, fields)
        return replace(props, class_locations=_checked_locations(locations, len(props.shape)))
    except ValueError as error:
        raise UserError(path, f"not valid JSON ({error})") from None
    except UserError as error:
        raise UserError(path, f"{error.where}: {error.problem}") from None


def _checked_locations(locations: object, ndim: int) -> dict[str, list[list[int]]]:
    if not isinstance(locations, dict):
        raise UserError("class_locations", "expected a mapping label → [[z, y, x], …]")
    for label, points in locations.items():
        array = np.asarray(points)
        if array.size and (array.ndim != 2 or array.shape[1] != ndim or array.dtype.kind != "i"):
            raise UserError(f"class_locations.{label}", f"expected a list of {ndim} integer coordinates")
    return locations


def load_preprocessed(folder: str | Path, case: str, mmap: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """data (C, *shape) float32 and seg (1, *shape) (memory-mapped by default), properties."""
    data_path, seg_path, json_path = case_files(folder, case)
    props = load_case_properties(json_path)
    mode = "r" if mmap else None
    data = np.load(data_path, mmap_mode=mode, allow_pickle=False)
    seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    return data, seg, props
