"""The cascade's extra input channels in the loader: read, warped with the sample, augmented.

`preprocessing/cascade.py` stores each training case's low-resolution prediction in the cascade
stage's preprocessed space; here the loader reads a patch's box of it, warps it with the sample's
spatial parameters (as the reference warps the previous stage with the seg), turns it into one
one-hot channel per foreground label and augments those channels.

Augmentation of the extra channels (the reference's, after every other transform): with p 0.4 a
random binary operator per label (p 0.5 each; dilation, erosion, closing or opening with a ball of
radius U(1, 8) voxels), then with p 0.2 the removal of one random connected component per label
(p 0.5 each) among those smaller than 15 % of the patch. The ball is the integer voxel grid
within the radius; operators act through exact Euclidean distance transforms (`binary_operator`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from nnlite.loading.augmentation import AugmentConfig, AugmentParams, patch_source_box
from nnlite.loading.sampling import MAX_OPEN_CASES, SEG_PATCH_DTYPE, read_box
from nnlite.loading.spatial_transforms import apply_spatial
from nnlite.plans import Plans
from nnlite.preprocessing.cascade import (load_previous_stage, one_hot, previous_stage_dir,
                                          previous_stage_name, stage_labels)


P_BINARY_OPERATOR = 0.4  # probability that a sample's extra channels get binary operators
P_OPERATOR_PER_LABEL = 0.5  # ... each label, in random order
STREL_RADIUS = (1.0, 8.0)  # ball radius in voxels, U(lo, hi)
OPERATORS = ("dilation", "erosion", "closing", "opening")  # drawn uniformly
P_REMOVE_COMPONENT = 0.2  # probability that a sample loses connected components
P_REMOVE_PER_LABEL = 0.5  # ... one per label, in random order
MAX_COMPONENT_FRACTION = 0.15  # only components smaller than this share of the patch are removed
AUGMENT_STREAM = 0xCA5C  # seeds the extra channels' augmentation apart from the sample's other draws


class PreviousStageStore:
    """Memory-mapped previous-stage label maps of a folder, read box by box (picklable)."""

    def __init__(self, folder: Path, labels: Sequence[int]):
        self.folder = Path(folder)
        self.labels = tuple(int(label) for label in labels)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "labels": self.labels, "_open": OrderedDict()}

    def region(self, case: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Box [lo, hi) of a case's map as int16 (1, *box); 0 (background) outside the image."""
        if case not in self._open:
            self._open[case] = load_previous_stage(self.folder, case)
            if len(self._open) > MAX_OPEN_CASES:
                self._open.popitem(last=False)
        return read_box(self._open[case], lo, hi, 0, SEG_PATCH_DTYPE)


def previous_stage_store(work: Path, plans: Plans, config_name: str) -> PreviousStageStore | None:
    """The store a cascade configuration's loader reads; None for any other configuration."""
    if not previous_stage_name(plans, config_name):
        return None
    return PreviousStageStore(previous_stage_dir(work, plans, config_name), stage_labels(plans))


def previous_stage_patch(store: PreviousStageStore, case: str, start: tuple[int, ...],
                         params: AugmentParams, cfg: AugmentConfig,
                         rng: np.random.Generator | None) -> torch.Tensor:
    """The extra channels of one sample: float32 (L, *patch), warped with the sample's spatial
    parameters (as the reference warps the previous stage with the seg), one-hot, and augmented
    with `rng` (None: validation, no augmentation)."""
    lo, hi, centre = patch_source_box(start, params.spatial, cfg)
    region = torch.from_numpy(store.region(case, lo, hi))
    empty = torch.zeros((0, *region.shape[1:]), dtype=torch.float32)
    values = torch.unique(region)
    if params.spatial.needs_warp and len(values) == 1:
        # one label everywhere: the warp cannot change it (and a 0-channel grid_sample would fail)
        warped = torch.full((1, *cfg.patch_size), int(values[0]), dtype=torch.int16)
    else:
        _, warped = apply_spatial(empty, region, params.spatial, cfg.patch_size, cfg.spatial.planar,
                                  tuple(centre - lo))
    if cfg.squeeze:
        warped = warped[:, 0]
    channels = one_hot(warped, store.labels).numpy()
    if rng is not None:
        channels = augment_one_hot(channels, rng)
    return torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))


def augment_one_hot(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's augmentation of the previous stage's one-hot channels (L, *P), in place."""
    if rng.random() < P_BINARY_OPERATOR:
        for c in rng.permutation(len(channels)):
            if rng.random() >= P_OPERATOR_PER_LABEL:
                continue
            operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
            before = channels[c] > 0
            after = binary_operator(before, operator, float(rng.uniform(*STREL_RADIUS)))
            added = after & ~before
            channels[:, added] = 0  # a voxel added to this label leaves every other label
            channels[c] = after
    if rng.random() < P_REMOVE_COMPONENT:
        for c in rng.permutation(len(channels)):
            if rng.random() < P_REMOVE_PER_LABEL:
                channels[c][remove_random_component(channels[c] > 0, rng)] = 0
    return channels


def binary_operator(mask: np.ndarray, operator: str, radius: float) -> np.ndarray:
    """Dilation, erosion, closing or opening of a bool mask by a ball {|o| ≤ radius} (voxels).

    Exact via Euclidean distance transforms: dilation = within `radius` of the mask; erosion =
    farther than `radius` from any non-mask voxel inside the patch (the patch border does not
    erode, as the reference's zero-padded convolution of the complement).
    """
    def dilate(m: np.ndarray) -> np.ndarray:
        return m.copy() if not m.any() else ndimage.distance_transform_edt(~m) <= radius

    def erode(m: np.ndarray) -> np.ndarray:
        return m.copy() if m.all() else ndimage.distance_transform_edt(m) > radius

    if operator == "dilation":
        return dilate(mask)
    if operator == "erosion":
        return erode(mask)
    if operator == "closing":
        return erode(dilate(mask))
    if operator == "opening":
        return dilate(erode(mask))
    raise ValueError(f"unknown operator {operator!r} (one of {OPERATORS})")


def remove_random_component(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of one full-connectivity component of `mask`, drawn uniformly among those
    smaller than MAX_COMPONENT_FRACTION of the patch (all False when there is none)."""
    if not mask.any():
        return np.zeros_like(mask)
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(sizes < MAX_COMPONENT_FRACTION * mask.size) + 1
    if not len(small):
        return np.zeros_like(mask)
    return components == int(small[int(rng.integers(len(small)))])
