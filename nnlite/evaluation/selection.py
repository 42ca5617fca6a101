"""Choose the best configuration (or pair of configurations) by cross-validation.

nnU-Net's `find_best_configuration`: every trained configuration's fold validations
are merged (`cross_validation`), every pair of them is ensembled by averaging the saved validation
probabilities (`ensembles`), and all candidates are ranked by the foreground mean Dice of their
cross-validation. Ties go to the simpler candidate: single configurations before pairs, and
2d < 3d_fullres < 3d_lowres < 3d_cascade_fullres. Post-processing is decided on the winner's
cross-validation (`postprocessing`), and `WORK/results/best.json` records the winner, the steps,
the prediction settings the validation used, the winner's temperature (`calibration`, fitted on
its cross-validation probabilities; `predict --best` applies it) and the `predict` command that
reproduces it.
"""

from __future__ import annotations

import itertools
import logging
import math
import shlex
from pathlib import Path
from typing import Any, Sequence

from nnlite.common.layout import (FOLD_PREFIX, POSTPROCESSED_DIR, POSTPROCESSING_FILE, VALIDATION_DIR,
                                  best_file, config_results, crossval_folder, ensemble_folder, plans_file,
                                  postprocessing_file, results_root)
from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.evaluation.calibration import winner_calibration
from nnlite.evaluation.cross_validation import has_probabilities, merge_crossval
from nnlite.evaluation.ensembles import ensemble_crossval, ensemble_name
from nnlite.evaluation.metrics import matched_cases, reference_labels, write_summary
from nnlite.evaluation.postprocessing import determine_postprocessing, postprocess_folder
from nnlite.inference.sliding_window import STEP_SIZE
from nnlite.plans import Plans, load_plans

log = logging.getLogger(__name__)

SIMPLICITY = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")  # on a tie the earlier wins
FOLD_CONFIG_FILE = "config.json"  # the resolved training settings of a fold (training_setup)


def candidate_configs(work: Path, plans: Plans, configs: Sequence[str] | None) -> list[str]:
    """The configurations to compare, simplest first: the given ones (each must be planned), or
    every planned configuration that has trained folds."""
    order = [c for c in SIMPLICITY if c in plans.configurations]
    order += [c for c in plans.configurations if c not in order]
    if configs:
        unknown = [c for c in configs if c not in plans.configurations]
        if unknown:
            raise UserError("--configs", f"'{unknown[0]}' is not planned (planned: {', '.join(order)})")
        return [c for c in order if c in configs]
    trained = [c for c in order if any(config_results(work, c).glob(f"{FOLD_PREFIX}*/{VALIDATION_DIR}"))]
    skipped = [c for c in order if c not in trained]
    if skipped:
        log.info("not compared (no trained folds): %s", ", ".join(skipped))
    if not trained:
        raise UserError(results_root(work), "no configuration has validated folds; train with "
                        "`python -m nnlite.train WORK --config C --fold cv` first")
    return trained


def validation_settings(work: Path, config: str) -> dict[str, Any]:
    """Step and mirroring the fold validations of `config` used (from each fold's config.json)."""
    settings = []
    for path in sorted(config_results(work, config).glob(f"{FOLD_PREFIX}*/{FOLD_CONFIG_FILE}")):
        validation = read_json(path).get("validation", {})
        settings.append({"step": float(validation.get("step", STEP_SIZE)),
                         "mirroring": bool(validation.get("mirroring", True))})
    if not settings:
        return {"step": STEP_SIZE, "mirroring": True}
    if any(s != settings[0] for s in settings):
        log.warning("%s: folds were validated with different settings %s; using the first", config, settings)
    return settings[0]


def evaluate_candidates(work: Path, configs: Sequence[str], ensembles: bool) -> list[dict[str, Any]]:
    """Every configuration's merged CV and every pair's ensemble, in simplicity order."""
    candidates = [_candidate([c], merge_crossval(work, c), crossval_folder(work, c)) for c in configs]
    with_npz = [c for c in configs if has_probabilities(work, c)]
    if ensembles and len(with_npz) < len(configs):
        log.warning("no validation probabilities (.npz) for %s: not ensembled",
                    ", ".join(c for c in configs if c not in with_npz))
    for pair in itertools.combinations(with_npz, 2) if ensembles else []:
        summary = ensemble_crossval(work, pair)
        candidates.append(_candidate(list(pair), summary, ensemble_folder(work, ensemble_name(pair))))
    return candidates


def _candidate(configs: list[str], summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A ranked candidate: its cross-validated Dice (the score) and, with a classification head,
    its cross-validated classification AUC and balanced accuracy (reported, not ranked by)."""
    dice = summary["foreground_mean"]["dice"]
    candidate = {"name": ensemble_name(configs), "configurations": configs, "foreground_dice": dice,
                 "dice_per_label": {label: values["dice"] for label, values in summary["mean"].items()},
                 "cases": len(summary["per_case"]), "crossval": str(folder),
                 "_score": -math.inf if dice is None or math.isnan(dice) else float(dice)}  # undefined: last
    if "classification" in summary:
        scores = summary["classification"]
        candidate["classification"] = {key: scores[key] for key in ("auc", "auc_ci95", "balanced_accuracy")}
    return candidate


def rank(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first; Python's sort is stable, so equal scores keep simplicity order."""
    return sorted(candidates, key=lambda c: -c["_score"])


def decide_winner_postprocessing(work: Path, plans: Plans, winner: dict[str, Any]) -> dict[str, Any]:
    """Post-processing decided on the winner's CV predictions (written next to them)."""
    configs = winner["configurations"]
    if len(configs) == 1:
        decision = determine_postprocessing(work, configs[0])
        return {**decision, "file": str(postprocessing_file(work, configs[0]))}
    folder = ensemble_folder(work, winner["name"])
    decision = postprocess_folder(matched_cases(folder, reference_labels(plans)), plans, winner["name"],
                                  folder / POSTPROCESSING_FILE, folder / POSTPROCESSED_DIR)
    return {**decision, "file": str(folder / POSTPROCESSING_FILE)}


def predict_command(work: Path, settings: dict[str, Any]) -> str:
    """The exact command that reproduces the winner (its validation's step and mirroring)."""
    words = ["python", "-m", "nnlite.predict", str(Path(work).resolve()), "INPUT_DIR", "OUTPUT_DIR", "--best"]
    if not settings["mirroring"]:
        words.append("--no-mirroring")
    if settings["step"] != STEP_SIZE:
        words += ["--step", repr(settings["step"])]
    return shlex.join(words)


def find_best(work: str | Path, configs: Sequence[str] | None = None,
              ensembles: bool = True) -> dict[str, Any]:
    """Compare, choose, decide post-processing; writes and returns results/best.json's content."""
    work = Path(work)
    plans = load_plans(plans_file(work))
    names = candidate_configs(work, plans, configs)
    ranked = rank(evaluate_candidates(work, names, ensembles))
    winner = ranked[0]
    if winner["_score"] == -math.inf:
        raise UserError(results_root(work), "no candidate has a defined cross-validated Dice")
    postprocessing = decide_winner_postprocessing(work, plans, winner)
    settings = validation_settings(work, winner["configurations"][0])
    for config in winner["configurations"][1:]:
        if validation_settings(work, config) != settings:
            log.warning("%s was validated with other settings than %s: predict uses %s",
                        config, winner["configurations"][0], settings)
    best = {
        "winner": {key: value for key, value in winner.items() if not key.startswith("_")},
        "postprocessing": {key: postprocessing[key] for key in ("steps", "file", "foreground_dice_before",
                                                                 "foreground_dice_after")},
        "prediction": {"checkpoint": "final", **settings},
        "calibration": winner_calibration(work, plans, winner["configurations"], winner["name"]),
        "candidates": [{k: v for k, v in c.items() if not k.startswith("_")} for c in ranked],
        "predict_command": predict_command(work, settings),
    }
    write_summary(best, best_file(work))
    return best
