"""Plan the classification head: a dataset with case classes gets one, a dataset without none.

`attach_class_head` switches the head on in every configuration's `NetworkPlan` (`class_head` =
number of classes) and records the class names in `Plans.case_classes`; `plan` copies the checked
`classes.csv` into WORK, where training and the final validation read it (`read_work_classes`),
so a WORK stays usable without the raw folder, like its dataset.json copy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nnlite.common.files import write_text_atomic
from nnlite.data.case_classes import CLASSES_FILE, CaseClasses, format_classes_csv, read_classes_csv
from nnlite.plans import Plans


def attach_class_head(plans: Plans, names: tuple[str, ...]) -> Plans:
    """Every configuration's network gets a head with len(names) outputs; names go into the plans."""
    reason = (f"classification head: the dataset declares {len(names)} case classes "
              f"({', '.join(names)}): the deepest 3 encoder stages pooled over the predicted lesion → MLP → "
              f"{len(names)} logits")
    configurations = {
        name: replace(config, network=replace(config.network, class_head=len(names)),
                      reasons=(*config.reasons, reason))
        for name, config in plans.configurations.items()
    }
    return replace(plans, configurations=configurations, case_classes=tuple(names))


def write_work_classes(work: Path, classes: CaseClasses | None) -> None:
    """WORK/classes.csv: the dataset's checked case classes; a dataset without classes leaves none
    (a stale one from an earlier plan is removed)."""
    path = Path(work) / CLASSES_FILE
    if classes is None:
        path.unlink(missing_ok=True)
        return
    by_name = {case: classes.names[index] for case, index in classes.of_case.items()}
    write_text_atomic(path, format_classes_csv(by_name))


def read_work_classes(work: Path, plans: Plans) -> CaseClasses | None:
    """The case classes `plan` copied into WORK, or None for plans without classes."""
    if not plans.case_classes:
        return None
    return CaseClasses(plans.case_classes, read_classes_csv(Path(work) / CLASSES_FILE, plans.case_classes))
