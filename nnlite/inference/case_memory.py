"""predict --memory-gb: what one case holds while it is predicted, and whether cases may overlap.

`predict` reads the next case while one is predicted and the previous one is exported: up to
three cases in memory at once. Each case's footprint is estimated once it is read, from its
shapes: the raw image (kept for its geometry), each member's network input, sliding-window
accumulators and probabilities (K + 1 float32 channels twice, network space), and the export's
one-class-at-a-time working set in the original geometry (outputs.py), plus, when probabilities are
saved, the streaming writer's working set (saved_probabilities.py: one channel, not K). When three
such cases do not fit the budget, cases run one after another (no read-ahead, the export waited
for); a case whose estimate alone exceeds an explicit `--memory-gb` fails with one line naming it,
and the other cases are still predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nnlite.common.errors import UserError
from nnlite.common.host_memory import GIB, MemoryBudget

RAW_BYTES = 4 + 8  # per raw voxel and channel: the float32 image, the reader's float64 transient
NETWORK_BYTES = 4 * 2  # per network voxel and output channel (+1 for the weights): sums and probabilities
EXPORT_BYTES = 4 * 3 + 2  # per original voxel: a class channel resampled, its intermediate, the running
# maximum (float32), the label map and the mask of where a class wins (1 byte each)
SAVED_BYTES = 2 + 3 * 4  # per original voxel, any K: the float16 channel streamed into the .npz and, with a
# temperature, its float32 powers, their running sum over the classes and the scaled channel
CASES_IN_FLIGHT = 3  # one read ahead, one predicted, one exported


@dataclass(frozen=True)
class CaseShapes:
    """What the footprint depends on: raw voxels and channels, each member's network voxels."""

    raw_voxels: int
    channels: int
    network_voxels: tuple[int, ...]


def case_footprint(shapes: CaseShapes, classes: int, save_probabilities: bool) -> int:
    """Estimated peak bytes of predicting and exporting one case."""
    network = sum(voxels * (shapes.channels * 4 + (classes + 1) * NETWORK_BYTES) for voxels in shapes.network_voxels)
    saved = SAVED_BYTES * shapes.raw_voxels if save_probabilities else 0
    return shapes.raw_voxels * (shapes.channels * RAW_BYTES + EXPORT_BYTES) + network + saved


class MemoryGate:
    """Decides, case by case, whether predict may overlap cases, and refuses a case that cannot
    fit an explicit budget. `used`: what the process holds before the first case (models, imports)."""

    def __init__(self, budget: MemoryBudget, used: int, classes: int, save_probabilities: bool) -> None:
        self.budget, self.usable = budget, max(0, budget.total - used)
        self.classes, self.save_probabilities = classes, save_probabilities

    def footprint(self, shapes: CaseShapes) -> int:
        return case_footprint(shapes, self.classes, self.save_probabilities)

    def check(self, case: str, footprint: int) -> None:
        if self.budget.explicit and footprint > self.usable:
            raise UserError(case, f"needs about {footprint / GIB:.3g} GB to predict, more than "
                                  f"{self.budget.describe()} leaves ({self.usable / GIB:.3g} GB after the models); "
                                  "raise --memory-gb")

    def may_overlap(self, footprint: int) -> bool:
        return CASES_IN_FLIGHT * footprint <= self.usable


def shapes_of(raw_shape: tuple[int, ...], network_shapes: list[tuple[int, ...]]) -> CaseShapes:
    """(C, *raw spatial) and each member's (C', *network spatial) → CaseShapes."""
    return CaseShapes(math.prod(raw_shape[1:]), raw_shape[0], tuple(math.prod(s[1:]) for s in network_shapes))
