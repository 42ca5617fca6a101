"""What a dataset's labels mean, shared by every stage: the ignore label, regions, the classes
predictions are scored by and the number of network outputs (nnU-Net's LabelManager, as data).

dataset.json's `labels` maps names to integers (plain labels) or to lists of integers (regions,
see docs/regions.md). Parsing them is `data/dataset.py` and `data/regions.py`; this module holds
only the types and rules every stage needs, so that `plans.py` and the stages share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

IGNORE_KEY = "ignore"  # dataset.json name of nnU-Net's ignore label: unannotated voxels, not a class


@dataclass(frozen=True)
class Region:
    """A region of region-based training (dataset.json `"whole tumor": [1, 2, 3]`): the union of
    integer `labels`; a voxel predicted in it is written as `painted_as` (its entry of
    `regions_class_order`). Regions are painted in dataset.json order, later ones on top."""

    name: str
    labels: tuple[int, ...]
    painted_as: int
    scalar: bool = False  # written as a bare integer ("enhancing": 3): nnU-Net keys it "3", not "(3,)"


@dataclass(frozen=True)
class ScoredClass:
    """One class that evaluation scores: a plain label (key: the label, labels: just it) or a
    region (key: its name, labels: the labels whose union it is) — nnU-Net's labels_or_regions."""

    key: int | str
    labels: tuple[int, ...]
    nnunet_key: str = ""  # nnU-Net's key: str() of the label or region as its LabelManager holds it


def output_classes(labels: dict[str, int], regions: tuple[Region, ...] = ()) -> int:
    """Network outputs: one per region (sigmoid) for a region dataset, else background plus every
    foreground label (softmax); the ignore label gets none."""
    return len(regions) if regions else len(labels) - (IGNORE_KEY in labels)


def foreground_of(labels: dict[str, int]) -> list[int]:
    """The labels that are scored and sampled: all but background and the ignore label."""
    return sorted(v for v in labels.values() if v not in (0, labels.get(IGNORE_KEY)))


def label_classes(labels: Iterable[int]) -> tuple[ScoredClass, ...]:
    """Plain labels as scored classes: each the one-label set {label}, keyed by the label."""
    return tuple(ScoredClass(int(label), (int(label),), str(int(label))) for label in labels)


def region_class(region: Region) -> ScoredClass:
    """A region as a scored class, keyed by its name; nnU-Net keys it by its label tuple ("(2, 3)"),
    or by the bare integer when dataset.json wrote one ("3")."""
    nnunet_key = str(region.labels[0] if region.scalar else tuple(region.labels))
    return ScoredClass(region.name, tuple(region.labels), nnunet_key)


def scored_classes(labels: dict[str, int], regions: tuple[Region, ...] = ()) -> tuple[ScoredClass, ...]:
    """What a dataset's predictions are scored by: its regions, else every foreground label."""
    if regions:
        return tuple(region_class(region) for region in regions)
    return label_classes(foreground_of(labels))
