"""After training: predict the fold's validation cases with the full sliding-window predictor.

The cases go through inference's one per-case path (`inference.predictor.CasePredictor` and
`write_prediction`, the same as `predict`), read from the preprocessed folder instead of raw files.
Writes `validation/<case>.nii.gz` (+ `<case>.npz` probabilities, for ensembling) in the original
geometry and scores them against the reference labels into `validation/summary.json` — the real
Dice, next to the last pseudo-Dice measured on patches during training, each case's uncertainty
score (maps in `validation/uncertainty/`, docs/uncertainty.md), and (with probabilities)
the expected calibration error of the saved probabilities (`calibration`, docs/uncertainty.md).

Under torchrun the cases are shared: rank r predicts and scores cases r, r + N, … and the ranks
meet after every round of N cases (`distributed.for_each_shared`), so none waits in a collective
longer than one case takes; rank 0 gathers every rank's per-case counts, checks that every case
was predicted exactly once, and writes summary.json. One process takes the same path with N = 1,
so its summary is the same.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from nnlite.common.files import json_ready
from nnlite.common.errors import UserError
from nnlite.common.layout import SEG_ENDING, SUMMARY_FILE, UNCERTAINTY_DIR, VALIDATION_DIR
from nnlite.evaluation.calibration import case_bins, ece_report, merge_bins, read_case_voxels
from nnlite.evaluation.class_scores import score_class_rows
from nnlite.evaluation.quality import add_quality
from nnlite.evaluation.metrics import (Counts, checked_counts, list_segs, read_pair, reference_labels,
                                       summarize, write_summary)
from nnlite.inference.predictor import (CaseInput, CasePrediction, CasePredictor, PredictOptions, StageModel,
                                       write_prediction)
from nnlite.network.hardware import resolve_device
from nnlite.plans import Plans
from nnlite.preprocessing.cascade import stage_input
from nnlite.preprocessing.pipeline import load_case_properties
from nnlite.training.config import TrainConfig
from nnlite.training.distributed import Rank, for_each_shared, gather_objects, share
from nnlite.training.folds import preprocessed_dir

log = logging.getLogger(__name__)


def validate_fold(work: Path, folder: Path, network: nn.Module, plans: Plans, config: TrainConfig,
                  cases: Sequence[str], metrics: Sequence[dict[str, Any]], rank: Rank = Rank()) -> dict[str, Any]:
    """Predict, export and score `cases` (this rank's share of them); returns the summary, which
    rank 0 also writes to summary.json (other ranks return it too, unwritten)."""
    out_dir = folder / VALIDATION_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = sorted(cases)
    if rank.world_size == 1:
        log.info("validating %d %s", len(cases), "case" if len(cases) == 1 else "cases")
    elif rank.is_main:
        for r in range(rank.world_size):
            log.info("rank %d: validating %d of %d cases", r, len(share(cases, Rank(r, rank.world_size))),
                     len(cases))
    network.deep_supervision = False
    network.eval()
    refs = list_segs(reference_labels(plans))
    read, write = validation_case_io(work, out_dir, plans, config)
    options = validation_options(config)
    class_rows: dict[str, np.ndarray] = {}  # case → (K,) class probabilities (a classification head)
    quality: dict[str, dict[str, float]] = {}  # case → its uncertainty.csv row (inference/uncertainty)
    calibration: dict[str, dict] = {}  # case → its ECE bins per voxel set (with saved probabilities)
    with CasePredictor([StageModel(config.configuration, [network])], plans, options,
                       resolve_device(config.device)) as predict, \
            tqdm(total=len(share(cases, rank)), desc="validation", unit="case", disable=not rank.is_main) as bar:
        def predict_and_score(case: str) -> dict[int, Counts]:
            prediction = predict(case, read(case))
            if prediction.class_probs is not None:
                class_rows[case] = prediction.class_probs
            written = write(case, prediction)
            quality[case] = prediction.uncertainty.row
            counts = score_case(case, written, refs, plans)
            if (voxels := read_case_voxels(written, refs[case], plans)) is not None:
                calibration[case] = case_bins(voxels)
            bar.update(1)
            return counts

        mine = for_each_shared(cases, rank, predict_and_score)
    network.deep_supervision = True
    counts = merge_counts(gather_objects({cases[i]: c for i, c in mine.items()}, rank), cases)
    summary = summarize(counts, [cls.key for cls in plans.scored])
    summary["pseudo_dice"] = last_pseudo_dice(metrics)
    class_rows = merge_class_rows(gather_objects(class_rows, rank))
    add_quality(summary, merge_class_rows(gather_objects(quality, rank)))
    calibration = merge_class_rows(gather_objects(calibration, rank))
    if calibration:
        summary["calibration"] = ece_report(merge_bins(list(calibration.values())))
    if class_rows and rank.is_main:
        summary["classification"] = score_class_rows(work, plans, out_dir, class_rows)
    if rank.is_main:
        write_summary(summary, out_dir / SUMMARY_FILE)
        log.info("validation: Dice %.4f on %d cases (last EMA pseudo-Dice %.4f): %s",
                 summary["foreground_mean"]["dice"], len(summary["per_case"]),
                 metrics[-1]["ema_pseudo_dice"] if metrics else math.nan, out_dir / SUMMARY_FILE)
    return summary


def validation_options(config: TrainConfig) -> PredictOptions:
    """The sliding window of the final validation: the run's `validation` settings."""
    return PredictOptions(config=config.configuration, mirror=config.validation.mirroring,
                          step=config.validation.step, save_probabilities=config.validation.save_probabilities,
                          device=config.device, uncertainty=True)


def validation_case_io(work: Path, out_dir: Path, plans: Plans, config: TrainConfig
                       ) -> tuple[Callable[[str], CaseInput], Callable[[str, CasePrediction], Path]]:
    """How the validation reads a case (its preprocessed array, + the stored cascade input) and
    writes it (`<case>.nii.gz`, + `<case>.npz` when the run saves probabilities)."""
    source = preprocessed_dir(work, plans, config)

    def read(case: str) -> CaseInput:
        data = np.load(source / f"{case}.npy", mmap_mode="r")
        data = stage_input(work, plans, config.configuration, case, np.array(data))  # + cascade input
        return CaseInput({config.configuration: (data, load_case_properties(source / f"{case}.json"))})

    def write(case: str, prediction: CasePrediction) -> Path:
        return write_prediction(out_dir / f"{case}{SEG_ENDING}", prediction, plans,
                                save_probabilities=config.validation.save_probabilities,
                                uncertainty_dir=out_dir / UNCERTAINTY_DIR)

    return read, write


def score_case(case: str, prediction: Path, refs: dict[str, Path], plans: Plans) -> dict[int | str, Counts]:
    """TP/FP/FN per scored class (foreground label, or region keyed by name) of one exported
    prediction against its raw reference."""
    if case not in refs:
        raise UserError(case, "has no reference label map in labelsTr")
    pred, ref = read_pair(case, prediction, refs[case])
    return checked_counts(case, pred, ref, plans.scored, plans.ignore_label)


def merge_counts(per_rank: Sequence[dict[str, dict[int, Counts]]], cases: Sequence[str]) -> dict[str, dict[int, Counts]]:
    """One {case: counts} from every rank's, in the order of `cases`; each case exactly once."""
    merged: dict[str, dict[int, Counts]] = {}
    for counts in per_rank:
        for case, value in counts.items():
            if case in merged:
                raise RuntimeError(f"validation case {case} was predicted by two ranks")
            merged[case] = value
    missing = [case for case in cases if case not in merged]
    if missing:
        raise RuntimeError(f"validation case {missing[0]} was predicted by no rank")
    return {case: merged[case] for case in cases}


def merge_class_rows(per_rank: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One {case: class probabilities} from every rank's share (empty without a head)."""
    return {case: row for rows in per_rank for case, row in rows.items()}


def is_validated(folder: Path) -> bool:
    """Has the fold in `folder` written its validation summary?"""
    return (folder / VALIDATION_DIR / SUMMARY_FILE).is_file()


def last_pseudo_dice(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's pseudo-Dice (per class, mean, EMA) for summary.json."""
    if not metrics:
        return {"per_class": [], "mean": None, "ema": None}
    last = metrics[-1]
    return json_ready({"per_class": list(last["pseudo_dice"]), "mean": last["mean_pseudo_dice"],
                       "ema": last["ema_pseudo_dice"]})
