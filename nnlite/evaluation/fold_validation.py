"""After training: predict the fold's validation cases with the full sliding-window predictor.

Writes `validation/<case>.nii.gz` (+ `<case>.npz` probabilities, for ensembling) in the original
geometry and scores them against the reference labels into `validation/summary.json` — the real
Dice, next to the last pseudo-Dice measured on patches during training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from nnlite.evaluation.class_scores import classification_summary
from nnlite.evaluation.metrics import SUMMARY_FILE, evaluate_for_plans, write_summary
from nnlite.inference.case_classification import ClassCollector, write_classification
from nnlite.inference.export import export_prediction
from nnlite.inference.sliding_window import predict_preprocessed
from nnlite.planning.class_head import read_work_classes
from nnlite.plans import Plans
from nnlite.preprocessing.cascade import stage_input
from nnlite.preprocessing.pipeline import load_case_properties
from nnlite.training.config import TrainConfig
from nnlite.training.folds import preprocessed_dir
from nnlite.training.precision import resolve_device

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"


def validate_fold(work: Path, folder: Path, network: nn.Module, plans: Plans, config: TrainConfig,
                  cases: Sequence[str], metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Predict, export and score `cases`; returns the summary (also written to summary.json)."""
    out_dir = folder / VALIDATION_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    plan = plans.configurations[config.configuration]
    network.deep_supervision = False
    network.eval()
    source = preprocessed_dir(work, plans, config)
    collector, class_rows = ClassCollector([network]), {}  # a classification head: one row per case
    for case in tqdm(cases, desc="validation", unit="case"):
        data = np.load(source / f"{case}.npy", mmap_mode="r")
        data = stage_input(work, plans, config.configuration, case, np.array(data))  # + cascade input
        with collector:
            collector.reset()
            probs = predict_preprocessed([network], data, plan,
                                         mirror=config.validation.mirroring, step=config.validation.step,
                                         device=device)
        if collector.has_head:
            class_rows[case] = collector.case_probabilities()
        props = load_case_properties(source / f"{case}.json")
        export_prediction(probs, props, plans, config.configuration, out_dir / f"{case}.nii.gz",
                          save_probabilities=config.validation.save_probabilities)
    network.deep_supervision = True
    summary = evaluate_for_plans(out_dir, plans)
    summary["pseudo_dice"] = last_pseudo_dice(metrics)
    if class_rows:
        summary["classification"] = score_classes(work, plans, out_dir, class_rows)
    write_summary(summary, out_dir / SUMMARY_FILE)
    log.info("validation: Dice %.4f on %d cases (last EMA pseudo-Dice %.4f): %s",
             summary["foreground_mean"]["dice"], len(summary["per_case"]),
             metrics[-1]["ema_pseudo_dice"] if metrics else math.nan, out_dir / SUMMARY_FILE)
    return summary


def score_classes(work: Path, plans: Plans, out_dir: Path, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write out_dir/classification.csv and score it against WORK/classes.csv."""
    write_classification(out_dir, rows, plans.case_classes)
    classes = read_work_classes(work, plans)
    scores = classification_summary(classes.of_case, rows, plans.case_classes)
    log.info("validation: classification AUC %s, balanced accuracy %.3f on %d cases",
             "n/a" if scores["auc"] is None else f"{scores['auc']:.3f}", scores["balanced_accuracy"],
             scores["num_cases"])
    return scores


def is_validated(folder: Path) -> bool:
    """Has the fold in `folder` written its validation summary?"""
    return (folder / VALIDATION_DIR / SUMMARY_FILE).is_file()


def last_pseudo_dice(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's pseudo-Dice (per class, mean, EMA) for summary.json."""
    if not metrics:
        return {"per_class": [], "mean": None, "ema": None}
    last = metrics[-1]
    clean = [None if math.isnan(d) else d for d in last["pseudo_dice"]]
    return {"per_class": clean, "mean": _clean(last["mean_pseudo_dice"]),
            "ema": _clean(last["ema_pseudo_dice"])}


def _clean(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
