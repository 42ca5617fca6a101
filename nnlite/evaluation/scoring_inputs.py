"""What `nnlite evaluate` is given, checked before any label map is read.

The labels to score come from `--labels` (foreground values only), else from `--dataset-json`
(its `labels`, less background and the ignore label, which it also supplies; for region labels its
regions, scored by name), else from the raw dataset's dataset.json found beside REF_DIR
(`RAW/labelsTr` → `RAW/dataset.json`: a region dataset is only recognisable through it), else from
the values present in the references, as plain labels. The summary may go to PRED_DIR (the default)
or anywhere else outside REF_DIR, to a file name, never onto a folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnlite.common.layout import DATASET_FILE, SUMMARY_FILE
from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir, read_json_checked
from nnlite.data.dataset import integer_labels, labels_and_regions
from nnlite.common.labels import IGNORE_KEY, Region, ScoredClass, label_classes, scored_classes


@dataclass(frozen=True)
class LabelSet:
    """The labels to score (None: those of the references) and the ignore label; or, for a region
    dataset.json, the regions to score (labels None)."""

    labels: list[int] | None
    ignore_label: int | None
    regions: tuple[Region, ...] = ()
    names: dict[int, str] = field(default_factory=dict)  # a plain label's dataset.json name

    @property
    def scored(self) -> tuple[ScoredClass, ...] | None:
        """The classes to score: the regions, else the labels; None when the references decide."""
        if self.labels is None:  # a region dataset.json, or nothing given
            return scored_classes({}, self.regions) or None
        return label_classes(self.labels)


def labels_to_score(labels: Sequence[int] | None, dataset_json: Path | None,
                    ignore_label: int | None) -> LabelSet:
    """--labels, else --dataset-json, else None (the references decide)."""
    if labels is not None:
        bad = [v for v in labels if v <= 0]
        if bad:
            raise UserError("--labels", f"{bad[0]} is not a foreground label (background is 0; labels "
                            "are positive)")
        if ignore_label is not None and ignore_label in labels:
            raise UserError("--labels", f"{ignore_label} is the --ignore-label; it cannot be scored")
        return LabelSet(sorted(set(labels)), ignore_label)
    if dataset_json is None:
        return LabelSet(None, ignore_label)
    meta = read_json_checked(dataset_json) if dataset_json.is_file() else {}
    declared, regions = labels_and_regions(dataset_json, meta if isinstance(meta, dict) else {}, integer_labels(
        "needs \"labels\": {name: integer value or list of values}"))
    ignore = declared.get(IGNORE_KEY) if ignore_label is None else ignore_label
    if regions:
        return LabelSet(None, ignore, regions)
    foreground = sorted(v for name, v in declared.items() if v != 0 and name != IGNORE_KEY and v != ignore)
    if not foreground:
        raise UserError(dataset_json, "declares no foreground label")
    return LabelSet(foreground, ignore, names={v: name for name, v in declared.items() if v in foreground})


def find_dataset_json(dataset_json: Path | None, ref_dir: Path) -> tuple[Path | None, str]:
    """--dataset-json, else the raw dataset's beside REF_DIR (`RAW/labelsTr/../dataset.json`) when
    it declares labels; and a line saying which one is used (or that none is)."""
    if dataset_json is not None:
        return dataset_json, f"dataset.json: {dataset_json}"
    beside = ref_dir.absolute().parent / DATASET_FILE
    if not beside.is_file():
        return None, (f"dataset.json: none at {beside}; scoring the values found in the references "
                      "as plain labels (a region dataset needs --dataset-json)")
    meta = read_json_checked(beside)
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        return None, (f"dataset.json: {beside} declares no labels, not used; scoring the values "
                      "found in the references as plain labels")
    return beside, f"dataset.json: {beside} (beside REF_DIR; --dataset-json or --labels to choose)"


def summary_path(output: Path | None, pred_dir: Path, ref_dir: Path) -> Path:
    """Where summary.json goes: a file name outside REF_DIR in a writable folder."""
    path = output if output is not None else pred_dir / SUMMARY_FILE
    where = "--output" if output is not None else str(path)
    if path.is_dir():
        raise UserError(where, f"{path} is a folder; give a file name such as {path / SUMMARY_FILE}")
    if path.resolve().is_relative_to(ref_dir.resolve()):
        raise UserError(where, f"would write into the reference folder {ref_dir}; give --output "
                        "outside it")
    ensure_writable_dir(path.parent, "output folder")
    return path


def absent_labels(summary: dict) -> list[int | str]:
    """Scored labels that no reference holds (a typo in --labels, or a rare class)."""
    return [label for label in summary["labels"]
            if all(case["metrics"][str(label)]["tp"] + case["metrics"][str(label)]["fn"] == 0
                   for case in summary["per_case"])]
