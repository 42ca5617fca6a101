"""Ensembles of configurations: the mean of their softmax probabilities, then argmax.

As nnU-Net's `nnUNetv2_ensemble`, members are combined by averaging PROBABILITIES in
the original geometry. The cross-validation ensemble reads each member's saved validation
probabilities (`results/<config>/crossval/<case>.npz`, float16) and `predict --best` computes the
same float16 arrays from the raw images, and both go through `average_probabilities` and
`seg_from_probabilities`, so a chosen ensemble's predictions are reproduced exactly.

Files: `WORK/results/ensembles/<a>+<b>/<case>.nii.gz` and `summary.json` (docs/cli.md).
Members with a classification head: their cross-validation class probabilities are averaged too
(`classification.csv`, scored into the summary), as `predict --best` averages them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from nnlite.common.layout import SEG_ENDING, SUMMARY_FILE, crossval_folder, ensemble_folder, plans_file
from nnlite.common.errors import UserError
from nnlite.common.files import staged_dir
from nnlite.data.image_io import read_image
from nnlite.evaluation.class_scores import score_class_rows
from nnlite.evaluation.metrics import evaluate_folder, list_segs, reference_labels, write_summary
from nnlite.inference.case_classification import CLASSIFICATION_FILE, class_rows_of
from nnlite.inference.outputs import average_probabilities, npz_path_for, seg_from_probabilities, write_case_outputs
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.plans import load_plans

log = logging.getLogger(__name__)

NAME_SEPARATOR = "+"


def ensemble_name(configs: Sequence[str]) -> str:
    return NAME_SEPARATOR.join(configs)


def ensemble_crossval(work: str | Path, configs: Sequence[str]) -> dict[str, Any]:
    """Average the members' cross-validation probabilities case by case into
    results/ensembles/<a>+<b>/ (label maps + summary.json); returns the summary.

    Every member must have merged cross-validation results with probabilities for the same cases
    (`cross_validation.merge_crossval`; training saves them with validation.save_probabilities).
    """
    work = Path(work)
    plans = load_plans(plans_file(work))
    cases = _common_cases(work, configs)
    target = ensemble_folder(work, ensemble_name(configs))
    if target.exists():
        shutil.rmtree(target)
    with staged_dir(target) as staging:
        for case in tqdm(cases, desc=f"ensemble {ensemble_name(configs)}", unit="case", leave=False):
            members = [load_probabilities(crossval_folder(work, c) / f"{case}.npz") for c in configs]
            seg = seg_from_probabilities(average_probabilities(members), plans.regions)
            affine = read_image(crossval_folder(work, configs[0]) / f"{case}{SEG_ENDING}").affine
            write_case_outputs(staging / f"{case}{SEG_ENDING}", seg, affine)
        summary = evaluate_folder(staging, reference_labels(plans), plans.scored, plans.ignore_label)
        summary["members"] = list(configs)
        class_rows = averaged_class_rows(work, configs, cases, plans.case_classes)
        if class_rows is not None:
            summary["classification"] = score_class_rows(work, plans, staging, class_rows)
        write_summary(summary, staging / SUMMARY_FILE)
    log.info("ensemble %s cross-validation: foreground Dice %.4f on %d cases", ensemble_name(configs),
             summary["foreground_mean"]["dice"], len(cases))
    return summary


def averaged_class_rows(work: Path, configs: Sequence[str], cases: Sequence[str], names: tuple[str, ...]
                        ) -> dict[str, np.ndarray] | None:
    """The mean of the members' cross-validation class probabilities per case; None unless every
    member has a crossval/classification.csv."""
    paths = [crossval_folder(work, c) / CLASSIFICATION_FILE for c in configs]
    if not names or not all(path.is_file() for path in paths):
        return None
    tables = [class_rows_of(path, names, cases) for path in paths]
    return {case: np.mean([table[case] for table in tables], axis=0) for case in cases}


def _common_cases(work: Path, configs: Sequence[str]) -> list[str]:
    """The cases of the members' crossval folders; they must agree and each have a `.npz`."""
    if len(configs) < 2:
        raise UserError("ensemble", "needs at least two configurations")
    cases = None
    for config in configs:
        segs = list_segs(crossval_folder(work, config))
        for case, path in segs.items():
            if not npz_path_for(path).is_file():
                raise UserError(npz_path_for(path), "missing: ensembling needs the validation "
                                "probabilities (train with validation.save_probabilities=true)")
        if cases is not None and set(segs) != cases:
            raise UserError(crossval_folder(work, config), f"holds other cases than {configs[0]}'s "
                            "cross-validation")
        cases = set(segs)
    return sorted(cases)
