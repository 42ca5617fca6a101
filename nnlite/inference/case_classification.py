"""Case-level classification at prediction time: the head's outputs over tiles → one vector per case.

The sliding window runs every network on tiles (and their mirrored copies); a network with a
classification head returns case-class logits for each of those inputs as well. `ClassCollector`
records them with a forward hook, so the sliding window itself stays a segmentation tool, and
`aggregate_tiles` turns them into one probability vector per case:

- "foreground" (default): the mean of the tiles' class probabilities weighted by each tile's
  predicted foreground (the sum of its foreground probabilities, + TILE_WEIGHT_FLOOR so a case
  predicted empty still gets the plain mean). A tile that holds no lesion says nothing about the
  lesion's class; in training such patches only teach the head the prior.
- "mean": the plain mean over tiles, mirrors and folds.

benchmarks/classification.py measures both on the demo (docs/classification.md has the numbers).
Mirrored inputs and folds are averaged with the same weights, as their segmentations are.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.files import write_text_atomic
from nnlite.network.classifier import split_output

CLASSIFICATION_FILE = "classification.csv"  # beside the label maps: case, predicted_class, p_<class>…
AGGREGATIONS = ("foreground", "mean")
TILE_WEIGHT_FLOOR = 1e-3  # voxels of foreground a tile counts at least (an empty case: plain mean)


def aggregate_tiles(class_probs: np.ndarray, foreground: np.ndarray, how: str = "foreground") -> np.ndarray:
    """class_probs (N, K) of N tiles, foreground (N,) predicted foreground voxels → (K,) probabilities."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}")
    weights = np.ones(len(class_probs)) if how == "mean" else foreground + TILE_WEIGHT_FLOOR
    return (class_probs * weights[:, None]).sum(0) / weights.sum()


class ClassCollector:
    """Forward hooks on `networks` recording each input's class probabilities and foreground.

    Use as a context manager around the sliding windows of a prediction; after each case
    `case_probabilities()` aggregates what was recorded and `reset()` starts the next case. Networks without a
    head record nothing (`has_head` is False).
    """

    def __init__(self, networks: Sequence[nn.Module], how: str = "foreground") -> None:
        self.how = how
        self.has_head = any(getattr(n, "classifier", None) is not None for n in networks)
        self._networks = list(networks)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._foreground: list[np.ndarray] = []

    def _record(self, module: nn.Module, inputs: tuple, output: object) -> None:
        seg, class_logits = split_output(output)
        if class_logits is None:
            return
        seg = seg[0] if isinstance(seg, list) else seg  # (N, C, *tile)
        foreground = module.classifier.foreground(seg.float())  # (N, 1, *tile), as the head pools
        self._foreground.append(foreground.flatten(1).sum(1).cpu().numpy())
        self._probs.append(torch.softmax(class_logits.float(), dim=1).cpu().numpy())

    def case_probabilities(self, how: str | None = None) -> np.ndarray:
        """(K,) probabilities of the case predicted since the last reset (aggregated `how`,
        default the collector's own rule)."""
        if not self._probs:
            raise RuntimeError("no classification output was recorded")
        return aggregate_tiles(np.concatenate(self._probs), np.concatenate(self._foreground),
                               how or self.how)

    def __enter__(self) -> "ClassCollector":
        self._handles = [n.register_forward_hook(self._record) for n in self._networks]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def format_classification(rows: dict[str, np.ndarray], names: Sequence[str]) -> str:
    """{case: (K,) probabilities} → classification.csv text: case, predicted_class, p_<class>…"""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case", "predicted_class", *[f"p_{n}" for n in names]])
    for case in sorted(rows):
        probs = rows[case]
        writer.writerow([case, names[int(np.argmax(probs))], *[f"{p:.6f}" for p in probs]])
    return out.getvalue()


def write_classification(folder: Path, rows: dict[str, np.ndarray], names: Sequence[str]) -> Path:
    """Write (atomically) folder/classification.csv for the cases in `rows`."""
    return write_text_atomic(Path(folder) / CLASSIFICATION_FILE, format_classification(rows, names))


def update_classification(folder: Path, rows: dict[str, np.ndarray], names: Sequence[str]) -> Path:
    """Write folder/classification.csv with `rows`, keeping the rows of cases predicted earlier
    (a rerun that skips finished cases must not drop them)."""
    path = Path(folder) / CLASSIFICATION_FILE
    earlier = read_classification(path, names) if path.is_file() else {}
    return write_classification(folder, {**earlier, **rows}, names)


def class_rows_of(path: Path, names: Sequence[str], cases: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of `cases` in classification.csv at `path`; a case without a row is an error."""
    table = read_classification(path, names)
    missing = sorted(set(cases) - set(table))
    if missing:
        raise UserError(path, f"has no row for case '{missing[0]}'")
    return {case: table[case] for case in cases}


def read_classification(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """classification.csv → {case: (K,) probabilities in the order of `names`}."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        wanted = [f"p_{n}" for n in names]
        missing = [c for c in ["case", *wanted] if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(path, f"has no column '{missing[0]}' (expected case, predicted_class, "
                            f"{', '.join(wanted)})")
        try:
            return {row["case"]: np.array([float(row[c]) for c in wanted]) for row in reader}
        except ValueError as error:
            raise UserError(path, f"holds a value that is not a probability ({error})") from None
