"""The models the Predict page offers, and predicting one staged case with nnlite's predictor.

A choice is `results/best.json` (its configuration or ensemble and post-processing, as
`predict --best`), or one configuration with its finished folds (all together, or one); the
prediction itself is `inference.predictor.predict_folder` / `inference.predictor.predict_best`
on a folder that holds only that case, so the app predicts exactly as `nnlite predict` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nnlite.common.layout import best_file, plans_file, trained_folds
from nnlite.common.errors import UserError
from nnlite.data.image_io import read_case, read_image
from nnlite.inference.models import CHECKPOINTS
from nnlite.inference.options import PredictOptions, find_input_cases, output_path
from nnlite.inference.outputs import dicom_seg_path
from nnlite.plans import Plans, load_plans

Progress = Callable[[float, str], None]  # fraction done in [0, 1], what happens now


@dataclass(frozen=True)
class ModelChoice:
    """What to predict with: best.json, or a configuration and folds."""

    label: str
    config: str | None = None  # None: best.json
    folds: tuple[str, ...] | None = None


@dataclass
class PredictedCase:
    """A predicted case for the viewer: data (C, Z, Y, X), spacing (z, y, x), label map (Z, Y, X)."""

    name: str
    data: np.ndarray
    spacing: tuple[float, ...]
    pred: np.ndarray
    seg_path: Path
    dicom_seg: Path | None = None  # the DICOM-SEG of a case read from DICOM series


def model_choices(work: Path, plans: Plans | None = None) -> list[ModelChoice]:
    """best.json first (when written), then every configuration's finished folds together and
    each fold alone."""
    plans = plans or load_plans(plans_file(work))
    choices = []
    if best_file(Path(work)).is_file():
        choices.append(ModelChoice("best.json (the cross-validated winner)"))
    for config in plans.configurations:
        folds = trained_folds(work, config, CHECKPOINTS["final"])  # numbered ones in order, then `all`
        numbered = tuple(f for f in folds if f.isdigit())
        if len(numbered) > 1:
            choices.append(ModelChoice(f"{config}, folds {' '.join(numbered)}", config, numbered))
        choices += [ModelChoice(f"{config}, fold {fold}", config, (fold,)) for fold in folds]
    return choices


def predict_case(work: Path, choice: ModelChoice, input_dir: Path, output_dir: Path, case: str,
                 progress: Progress = lambda fraction, text: None, device: str = "auto") -> PredictedCase:
    """Predict the one case staged in input_dir into output_dir/<case>.nii.gz and read it back."""
    from nnlite.inference.predictor import predict_best, predict_folder  # torch: only once a prediction is asked

    progress(0.1, "loading the model")
    paths = find_input_cases(Path(input_dir))[case]
    options = PredictOptions(config=choice.config or "", folds=choice.folds, device=device,
                             dicom_seg=paths[0].is_dir())  # a DICOM series also gets its SEG
    predict = predict_best if choice.config is None else predict_folder
    report = predict(work, input_dir, output_dir, options)
    if case in report.failed:  # the predictor logs a failed case and goes on: the page shows it
        raise UserError(case, report.failed[case].removeprefix(f"{case}: "))
    if case not in report.predicted:
        raise UserError(case, "was not predicted")
    progress(0.9, "reading the label map")
    seg_path = output_path(Path(output_dir), case, paths)
    raw = read_case(paths)
    pred = np.rint(read_image(seg_path).array).astype(np.int16)
    seg = dicom_seg_path(seg_path) if options.dicom_seg else None
    progress(1.0, "done")
    return PredictedCase(case, raw.data, raw.spacing, pred, seg_path, seg if seg and seg.is_file() else None)
