"""Region labels (nnU-Net's region-based training, its BraTS recipe): parsing, masks, painting.

In `dataset.json` a label whose value is a list is a *region*, the union of those integer labels:

    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3},
    "regions_class_order": [1, 2, 3]

A dataset is region-based exactly when some value is a list of more than one label (nnU-Net's
LabelManager rule); a one-element list alone (`"tumour": [1]`) is the plain label 1. Once a dataset
is region-based, every non-background entry is a region (a plain integer `3` is the region [3]).
The label files still hold one integer map (here 0–3); the network has one sigmoid output per
region, in dataset.json order. `regions_class_order[i]` is the integer written where
region i is predicted (probability > 0.5); regions are painted in order, so later ones overwrite
earlier ones (the nested BraTS regions come out as 1, 2, 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.labels import IGNORE_KEY, Region

ORDER_KEY = "regions_class_order"  # dataset.json: per region, the label it is painted as
REGION_THRESHOLD = 0.5  # a voxel is in a region when its sigmoid probability is above this
INTEGER_LABEL_PREFIX = "label_"  # names of the integer labels of a region dataset ("label_2")


def has_regions(labels: Any) -> bool:
    """Is a dataset.json `labels` object region-based? As nnU-Net's LabelManager: some value is a
    list of more than one label (a one-element list alone is a plain label)."""
    return isinstance(labels, dict) and any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())


def unwrap_single_labels(labels: Any) -> Any:
    """The labels of a dataset that is not region-based, with one-element lists as their label
    (`"tumour": [1]` → 1, as nnU-Net flattens them); the ignore label is left as written."""
    if not isinstance(labels, dict):
        return labels
    return {name: value[0] if isinstance(value, (list, tuple)) and len(value) == 1 and name != IGNORE_KEY
            else value for name, value in labels.items()}


def parse_region_labels(path: Path | str, labels: dict[str, Any],
                        order: Any) -> tuple[dict[str, int], tuple[Region, ...]]:
    """Check region `labels` and `regions_class_order`; returns the integer labels of the label
    files ({"background": 0, "label_1": 1, …, "ignore": N}) and the regions in dataset.json order."""
    if labels.get("background") != 0 or isinstance(labels.get("background"), bool):
        raise UserError(path, "key 'labels': 'background' must exist and be 0 (not a list)")
    ignore = labels.get(IGNORE_KEY)
    members = {name: _region_values(path, name, value) for name, value in labels.items()
               if name not in ("background", IGNORE_KEY)}
    if not members:
        raise UserError(path, "key 'labels': declares no region")
    values = sorted({v for region in members.values() for v in region})
    if values != list(range(1, len(values) + 1)):
        raise UserError(path, f"key 'labels': the values in the regions must be consecutive "
                              f"1…{len(values)}, got {values}")
    integer_labels = {"background": 0, **{f"{INTEGER_LABEL_PREFIX}{v}": v for v in values}}
    if ignore is not None:
        if isinstance(ignore, bool) or not isinstance(ignore, int) or ignore != values[-1] + 1:
            raise UserError(path, f"key 'labels': '{IGNORE_KEY}' must be one integer, the largest "
                                  f"region value + 1 ({values[-1] + 1}), got {ignore!r}")
        integer_labels[IGNORE_KEY] = ignore
    painted = _parse_order(path, order, members)
    regions = tuple(Region(name, region, paint, scalar=not isinstance(labels[name], (list, tuple)))
                    for (name, region), paint in zip(members.items(), painted))
    return integer_labels, regions


def _region_values(path: Path | str, name: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in items):
        raise UserError(path, f"key 'labels': region '{name}' must be a positive integer or a "
                              f"non-empty list of them, got {value!r}")
    return tuple(sorted(set(items)))


def _parse_order(path: Path | str, order: Any, members: dict[str, tuple[int, ...]]) -> list[int]:
    """One label per region, each inside its region (so painting round-trips), no label twice."""
    if order is None:
        raise UserError(path, f"key '{ORDER_KEY}': missing; region labels (a list of values) need "
                              f"it: the label painted for each of the {len(members)} regions, in order")
    if (not isinstance(order, list) or len(order) != len(members)
            or any(isinstance(v, bool) or not isinstance(v, int) for v in order)):
        raise UserError(path, f"key '{ORDER_KEY}': must list one integer per region "
                              f"({len(members)}: {', '.join(members)}), got {order!r}")
    if len(set(order)) != len(order):
        raise UserError(path, f"key '{ORDER_KEY}': names a label twice ({order})")
    for (name, region), paint in zip(members.items(), order):
        if paint not in region:
            raise UserError(path, f"key '{ORDER_KEY}': region '{name}' would be painted as {paint}, "
                                  f"which is not one of its labels {list(region)}")
    return list(order)


def region_key(labels: Sequence[int]) -> str:
    """A region's key in a case's class_locations: Python's repr of its label tuple ("(1, 2, 3)",
    "(3,)", nnU-Net's tuple key as a string). JSON-safe; never a plain label's key ("3") nor a name."""
    return str(tuple(int(label) for label in labels))


def in_region(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels of `seg` whose label is one of `labels` (numpy or torch)."""
    mask = seg == labels[0]
    for value in labels[1:]:
        mask = mask | (seg == value)
    return mask


def region_masks(seg: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """Integer label map (*S) → one boolean mask per region (R, *S)."""
    return np.stack([in_region(seg, region.labels) for region in regions])


def paint_regions(probs: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """Region probabilities (R, *S) → label map (*S) (uint8 when it fits): region i's voxels above
    the threshold get regions[i].painted_as, painted in order (later regions overwrite earlier ones)."""
    if len(probs) != len(regions):
        raise ValueError(f"{len(probs)} probability channels for {len(regions)} regions")
    seg = np.zeros(probs.shape[1:], dtype=painted_dtype(regions))
    for region, prob in zip(regions, probs):
        paint_region(seg, prob, region)
    return seg


def painted_dtype(regions: Sequence[Region]) -> type:
    """uint8 when every painted label fits, else int16."""
    return np.uint8 if max(region.painted_as for region in regions) < 256 else np.int16


def paint_region(seg: np.ndarray, prob: np.ndarray, region: Region) -> None:
    """Paint one region into `seg` (*S) in place: its voxels whose probability (*S) is above the
    threshold get region.painted_as (`paint_regions` calls this for each region in order)."""
    seg[prob > REGION_THRESHOLD] = region.painted_as
