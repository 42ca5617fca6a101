"""Patch sampling over preprocessed cases: foreground oversampling, patch positions, region reads.

Per sample: a case drawn uniformly with replacement; a patch position, either centred on a stored
foreground voxel (the last third of each batch, the reference's exact rule: a class drawn uniformly
among the case's classes with locations — its labels, or for a region dataset its regions, each
stored under its own key by preprocessing — then one of its voxels) or uniform over the valid
positions; then only the input region the (augmented) patch needs is read from the
memory-mapped arrays, padded with image 0 / seg -1 where it leaves the image.

Positions are lower corners of the FINAL patch. The reference samples an enlarged crop (its
`get_patch_size` heuristic) and centres the final patch in it; its random positions keep the final
patch inside the image and its forced ones centre it on the voxel, which is what the bounds below
give directly. The enlargement is replaced by the exact source box of each sample's affine
(`spatial_transforms.source_box`), so rotated or zoomed-out samples read real data wherever it exists
and small rotations do not read 4× the voxels.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.data.cropping import OUTSIDE_LABEL
from nnlite.preprocessing.pipeline import ANNOTATED_KEY

SEG_PATCH_DTYPE = np.int16  # label patches hold any stored label (int16 above 127), as nnU-Net's crops

FOREGROUND_FRACTION = 0.33  # share of each batch forced to contain foreground (the last samples)
MAX_OPEN_CASES = 256  # memory-mapped cases kept open per process (2 file descriptors each)


def forced_foreground(batch_size: int, fraction: float = FOREGROUND_FRACTION,
                      samples: range | None = None) -> list[bool]:
    """Sample j of a batch of B is forced iff j ≥ round(B·(1 - fraction)) (B=2 → [1], 4 → [3],
    5 → [3, 4], 12 → [8..11]); the flags of `samples` (default every j < B). The one copy of the
    rule: the loader's default and every rank's share of a distributed batch use it."""
    threshold = round(batch_size * (1 - fraction))
    return [j >= threshold for j in (range(batch_size) if samples is None else samples)]


def start_bounds(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Inclusive [lb, ub] of a patch's lower corner per axis (the reference's formula with no
    enlargement): the patch stays inside the image, or is centred when the image is smaller."""
    need = [max(0, p - s) for s, p in zip(shape, patch)]
    lb = [-n // 2 for n in need]
    ub = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, need, patch)]
    return lb, ub


def random_start(rng: np.random.Generator, shape: tuple[int, ...],
                 patch: tuple[int, ...]) -> tuple[int, ...]:
    """A lower corner uniform over the valid positions."""
    lb, ub = start_bounds(shape, patch)
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(lb, ub))


def foreground_start(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...],
                     class_locations: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Lower corner of a patch centred on a stored voxel of a class drawn uniformly among the
    classes present (annotated voxels only when no class is), as the reference. A class is a key of
    `class_locations`: a label ("2") or, in a region dataset, a region ("(2, 3)"), so each region
    present gets an equal share of the forced patches whatever its size. A case without
    either falls back to a random position."""
    present = [label for label, voxels in class_locations.items()
               if len(voxels) and label != ANNOTATED_KEY]
    if not present and len(class_locations.get(ANNOTATED_KEY, ())):
        present = [ANNOTATED_KEY]
    if not present:
        return random_start(rng, shape, patch)
    return _centred_start(rng, shape, patch, class_locations[present[int(rng.integers(len(present)))]])


def unforced_start(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...],
                   class_locations: dict[str, np.ndarray]) -> tuple[int, ...]:
    """A sample that is not forced to foreground: centred on a stored annotated voxel when the
    dataset has an ignore label (sparse annotations: a uniform patch might hold no label at all,
    as the reference), else uniform over the valid positions."""
    annotated = class_locations.get(ANNOTATED_KEY, ())
    if len(annotated):
        return _centred_start(rng, shape, patch, annotated)
    return random_start(rng, shape, patch)


def _centred_start(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...],
                   voxels: np.ndarray) -> tuple[int, ...]:
    """Centred on one of `voxels` (N, ndim) drawn uniformly: lower = max(lb, voxel - patch//2),
    no upper clamp (padding covers it), as the reference."""
    voxel = voxels[int(rng.integers(len(voxels)))]
    lb, _ = start_bounds(shape, patch)
    return tuple(max(lo, int(v) - p // 2) for lo, v, p in zip(lb, voxel, patch))


def read_region(data: np.ndarray, seg: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy box [lo, hi) of data (C, *S) and seg (1, *S) (memory-mapped: only the box is read);
    outside the image: data 0, seg OUTSIDE_LABEL. Returns float32 (C, *box), int16 (1, *box)."""
    return read_box(data, lo, hi, 0, np.float32), read_box(seg, lo, hi, OUTSIDE_LABEL, SEG_PATCH_DTYPE)


def read_box(array: np.ndarray, lo: np.ndarray, hi: np.ndarray, fill: int, dtype: type) -> np.ndarray:
    """Box [lo, hi) of `array` (C, *S) as `dtype` (C, *box), `fill` where the box leaves the array."""
    size = tuple(int(n) for n in np.asarray(hi) - np.asarray(lo))
    box = np.full((array.shape[0], *size), fill, dtype=dtype)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, array.shape[1:])
    if np.all(src_hi > src_lo):
        src = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
        dst = (slice(None),) + tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(src_lo, src_hi, lo))
        box[dst] = array[src]
    return box


@dataclass(frozen=True)
class CaseInfo:
    """What sampling needs of a case without reading its voxels."""

    name: str
    channels: int
    shape: tuple[int, ...]  # spatial (Z, Y, X)
    class_locations: dict[str, np.ndarray]  # class key (label or region) → (N, 3) int32 voxel coordinates


class CaseStore:
    """Preprocessed cases of one folder: metadata loaded up front, arrays memory-mapped lazily.

    Picklable and cheap to send to worker processes: open memory maps are per process and are not
    pickled.
    """

    def __init__(self, folder: Path, case_names: list[str]):
        self.folder = Path(folder)
        if not case_names:
            raise UserError(self.folder, "no cases to sample from")
        self.cases = [self._load_info(name) for name in case_names]
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _load_info(self, name: str) -> CaseInfo:
        for suffix in (".npy", "_seg.npy", ".json"):
            if not (self.folder / f"{name}{suffix}").is_file():
                raise UserError(self.folder / f"{name}{suffix}", "not found (run preprocessing first)")
        channels, *shape = np.load(self.folder / f"{name}.npy", mmap_mode="r").shape
        props = read_json(self.folder / f"{name}.json")
        locations = {str(label): np.asarray(voxels, dtype=np.int32).reshape(-1, 3)
                     for label, voxels in props.get("class_locations", {}).items()}
        return CaseInfo(name, channels, tuple(shape), locations)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C, Z, Y, X) float32, seg (1, Z, Y, X)) memory maps of a case (LRU-cached)."""
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        data = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        seg = np.load(self.folder / f"{name}_seg.npy", mmap_mode="r")
        if data.shape[1:] != seg.shape[1:]:
            raise UserError(self.folder / f"{name}_seg.npy", f"shape {seg.shape} does not match "
                            f"the image {data.shape}")
        self._open[name] = (data, seg)
        if len(self._open) > MAX_OPEN_CASES:
            self._open.popitem(last=False)
        return data, seg
