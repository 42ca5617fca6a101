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

from nnlite.evaluation.metrics import SUMMARY_FILE, evaluate_for_plans, write_summary
from nnlite.inference.export import export_prediction
from nnlite.inference.sliding_window import predict_preprocessed
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
    for case in tqdm(cases, desc="validation", unit="case"):
        data = np.load(source / f"{case}.npy", mmap_mode="r")
        data = stage_input(work, plans, config.configuration, case, np.array(data))  # + cascade input
        probs = predict_preprocessed([network], data, plan,
                                     mirror=config.validation.mirroring, step=config.validation.step,
                                     device=device, sigmoid=bool(plans.regions))
        props = load_case_properties(source / f"{case}.json")
        export_prediction(probs, props, plans, config.configuration, out_dir / f"{case}.nii.gz",
                          save_probabilities=config.validation.save_probabilities)
    network.deep_supervision = True
    summary = evaluate_for_plans(out_dir, plans)
    summary["pseudo_dice"] = last_pseudo_dice(metrics)
    write_summary(summary, out_dir / SUMMARY_FILE)
    log.info("validation: Dice %.4f on %d cases (last EMA pseudo-Dice %.4f): %s",
             summary["foreground_mean"]["dice"], len(summary["per_case"]),
             metrics[-1]["ema_pseudo_dice"] if metrics else math.nan, out_dir / SUMMARY_FILE)
    return summary


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
