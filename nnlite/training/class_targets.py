"""The class loss's inputs for a network with a classification head (docs/classification.md).

Each training patch carries its case's name (`batch["cases"]`); the class of that case comes from
WORK/classes.csv, which `plan` copied from the raw dataset. The class weights are balanced over
the fold's *training* cases, so the validation cases never influence training: the loader draws
cases uniformly, so with w_k = N / (K · n_k) every class carries the same total weight over an
epoch (`network/classifier.balanced_class_weights`). A class that only validation cases hold gets
weight 1, so its validation patches have a finite loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.layout import plans_file
from nnlite.network.classifier import ClassTargets, balanced_class_weights
from nnlite.planning.class_head import read_work_classes
from nnlite.plans import Plans
from nnlite.training.config import TrainConfig


def class_targets(work: Path, plans: Plans, config: TrainConfig, train_cases: Sequence[str]
                  ) -> ClassTargets | None:
    """Case classes, balanced weights and loss weight; None when the network has no head."""
    if not plans.configurations[config.configuration].network.class_head:
        return None
    classes = read_work_classes(work, plans)
    if classes is None:
        raise UserError(plans_file(work), "plans a classification head but names no case "
                        "classes (plans.case_classes is empty)")
    missing = sorted(set(train_cases) - set(classes.of_case))
    if missing:
        raise UserError(Path(work) / "classes.csv", f"case '{missing[0]}' has no class")
    weights = balanced_class_weights(classes.counts(train_cases))
    return ClassTargets(classes.of_case, weights, config.training.class_loss_weight)
