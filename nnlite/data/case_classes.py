"""Case-level classes (for example benign vs malignant): which class each training case belongs to.

One documented way to label cases (docs/classification.md):

- `dataset.json` declares the class names in order: `"classes": ["benign", "malignant"]`
  (class index = position in the list);
- `classes.csv` beside dataset.json has the header `case,class` and one row per training case,
  the class given by its name.

A dataset without the `classes` key has no classes (and no classification head). `check` and
`plan` call `load_case_classes`: an unknown class, a case without a row, a row naming no case,
a case named twice, or a single class only is a `UserError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nnlite.common.errors import UserError
from nnlite.data.dataset import RawDataset

CLASSES_KEY = "classes"  # dataset.json: the ordered class names
CLASSES_FILE = "classes.csv"  # beside dataset.json: `case,class` per training case
CSV_HEADER = ("case", "class")


@dataclass(frozen=True)
class CaseClasses:
    """The class names (index = position) and each case's class index."""

    names: tuple[str, ...]
    of_case: dict[str, int]

    def counts(self, cases: Sequence[str]) -> list[int]:
        """How many of `cases` fall in each class, in class order."""
        counts = [0] * len(self.names)
        for case in cases:
            counts[self.of_case[case]] += 1
        return counts


def parse_class_names(json_path: Path, value: Any) -> tuple[str, ...]:
    """dataset.json's `classes`: at least two distinct non-empty names."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(json_path, f"key '{CLASSES_KEY}': must be a list of class names, e.g. "
                        "[\"benign\", \"malignant\"]")
    if len(set(value)) != len(value):
        raise UserError(json_path, f"key '{CLASSES_KEY}': names a class twice")
    if len(value) < 2:
        raise UserError(json_path, f"key '{CLASSES_KEY}': a classification needs at least 2 classes")
    return tuple(value)


def read_classes_csv(path: Path, names: Sequence[str]) -> dict[str, int]:
    """`case,class` rows → {case: class index}; unknown classes and repeated cases are errors."""
    if not path.is_file():
        raise UserError(path, f"file not found (dataset.json declares '{CLASSES_KEY}', so every "
                        "training case needs a row `case,class` here)")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows or tuple(cell.strip() for cell in rows[0]) != CSV_HEADER:
        raise UserError(path, "line 1: the header must be `case,class`")
    of_case: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise UserError(path, f"line {line}: needs two values `case,class`, got {len(row)}")
        case, name = row[0].strip(), row[1].strip()
        if name not in names:
            raise UserError(path, f"line {line}: unknown class '{name}' (dataset.json declares "
                            f"{', '.join(names)})")
        if case in of_case:
            raise UserError(path, f"line {line}: case '{case}' is listed twice")
        of_case[case] = names.index(name)
    return of_case


def check_case_classes(path: Path, classes: CaseClasses, cases: Sequence[str]) -> None:
    """Every training case has a class, every row is a case, and more than one class occurs."""
    missing = sorted(set(cases) - set(classes.of_case))
    if missing:
        raise UserError(path, f"case '{missing[0]}' has no class ({len(missing)} case(s) missing)")
    unknown = sorted(set(classes.of_case) - set(cases))
    if unknown:
        raise UserError(path, f"names case '{unknown[0]}' that the dataset does not have")
    used = {classes.of_case[c] for c in cases}
    if len(used) < 2:
        only = classes.names[used.pop()] if used else "none"
        raise UserError(path, f"every case is of class '{only}': a classifier needs at least two "
                        "classes among the training cases")


def load_case_classes(root: Path, meta: dict[str, Any], cases: Sequence[str]) -> CaseClasses | None:
    """The checked classes of a raw dataset (dataset.json `meta`, its case names), or None."""
    if CLASSES_KEY not in meta:
        return None
    names = parse_class_names(root / "dataset.json", meta[CLASSES_KEY])
    path = root / CLASSES_FILE
    classes = CaseClasses(names, read_classes_csv(path, names))
    check_case_classes(path, classes, cases)
    return classes


def format_classes_csv(of_case: dict[str, str]) -> str:
    """{case: class name} → the text of a classes.csv (sorted by case)."""
    lines = [",".join(CSV_HEADER)] + [f"{case},{of_case[case]}" for case in sorted(of_case)]
    return "\n".join(lines) + "\n"


def classes_of_dataset(dataset: RawDataset) -> CaseClasses | None:
    """The checked case classes of a loaded raw dataset, or None when it declares none."""
    return load_case_classes(dataset.root, dataset.extra, [case.name for case in dataset.cases])
