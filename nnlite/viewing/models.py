"""The models the Predict page offers, and predicting one staged case with nnlite's predictor.

A choice is `results/best.json` (its configuration or ensemble and post-processing, as
`predict --best`), or one configuration with its finished folds (all together, or one); the
prediction itself is `inference.predictor.predict_folder` / `inference.predictor.predict_best`
on a folder that holds only that case, so the app predicts exactly as `nnlite predict` does,
with `--uncertainty`: the case's quality score (uncertainty.csv) and uncertainty map come back
with it, and `review_hint` turns the score into a plain-language hint (docs/app.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nnlite.common.layout import UNCERTAINTY_FILE, best_file, plans_file, trained_folds
from nnlite.common.errors import UserError
from nnlite.data.image_io import read_case, read_image
from nnlite.inference.models import CHECKPOINTS
from nnlite.inference.options import PredictOptions, find_input_cases, output_path
from nnlite.inference.outputs import dicom_seg_path
from nnlite.plans import Plans, load_plans

Progress = Callable[[float, str], None]  # fraction done in [0, 1], what happens now
# The quality score is the Dice error the model expects of itself (docs/uncertainty.md); from
# this score on (an expected Dice of 0.8 or less) the Predict page says to review the case first.
REVIEW_SCORE = 0.2


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
    score: float | None = None  # its quality score (uncertainty.csv; higher = less trustworthy)
    uncertainty: np.ndarray | None = None  # (Z, Y, X) in [0, 1]: its uncertainty map


def review_hint(score: float) -> tuple[bool, str]:
    """(review first?, the sentence the Predict page shows) for a quality score."""
    expected = f"the model expects a Dice of about {1 - score:.2f} on this case"
    if score >= REVIEW_SCORE:
        return True, f"Review this case first: {expected}, below {1 - REVIEW_SCORE:.2f}."
    return False, f"No sign of trouble: {expected}. It can wait behind cases flagged for review."


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
                             dicom_seg=paths[0].is_dir(),  # a DICOM series also gets its SEG
                             uncertainty=True)
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
    score, uncertainty = read_quality(Path(output_dir), case, seg_path)
    progress(1.0, "done")
    return PredictedCase(case, raw.data, raw.spacing, pred, seg_path, seg if seg and seg.is_file() else None,
                         score, uncertainty)


def read_quality(output_dir: Path, case: str, seg_path: Path) -> tuple[float | None, np.ndarray | None]:
    """The case's score from output_dir/uncertainty.csv and its map `<case>_uncertainty<ending>`
    (an 8-bit picture's 0 … 255 read back as 0 … 1); None for what was not written."""
    from nnlite.inference.uncertainty import PICTURE_ENDINGS, read_rows, uncertainty_files

    table = output_dir / UNCERTAINTY_FILE
    row = read_rows(table).get(case) if table.is_file() else None
    score = None if row is None else row["score"]
    path, ending = uncertainty_files(seg_path)[0]
    if not path.is_file():
        return score, None
    scale = 255.0 if ending.lower() in PICTURE_ENDINGS else 1.0
    return score, np.asarray(read_image(path).array, np.float32) / np.float32(scale)
