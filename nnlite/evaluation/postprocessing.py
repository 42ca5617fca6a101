"""Post-processing: keep the largest connected component, decided on cross-validation results.

The reference's rule (postprocessing/remove_connected_components.py):
1. Merge every foreground label into one mask and keep only its largest 26-connected component
   (removed voxels become background). Accepted when the foreground-mean Dice improves STRICTLY and
   no label's mean Dice gets worse.
2. With more than one label, per label (in label order), starting from the result of step 1 when it
   was accepted: keep the largest component of that label. Accepted when that label's mean Dice
   improves strictly.

A per-label step only changes that label's voxels (they become background), so it changes no other
label's counts: one pass over the cases scores every candidate. The decision is stored as JSON
(`results/<config>/postprocessing.json`, `"steps"`: a list of label lists, each meaning "keep the
largest component of the union of these labels"); no pickled functions. Prediction applies the
stored steps with `inference/largest_component.py`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.data.image_io import read_image, write_seg
from nnlite.evaluation.metrics import (Counts, json_ready, label_counts, list_segs, match_cases, read_pair,
                                       reference_labels, summarize)
from nnlite.inference.largest_component import (POSTPROCESSING_FILE, apply_postprocessing,
                                                keep_largest_component)
from nnlite.plans import load_plans

log = logging.getLogger(__name__)

POSTPROCESSED_DIR = "postprocessed"  # results/<config>/postprocessed/: CV predictions after the steps


def save_postprocessing(decision: dict, path: str | Path) -> Path:
    return write_json_atomic(path, json_ready(decision))


def not_worse(after: float, before: float) -> bool:
    """after ≥ before, where NaN (no case defines the label) counts as equal to NaN."""
    if math.isnan(before) or math.isnan(after):
        return math.isnan(before) and math.isnan(after)
    return after >= before


def strictly_better(after: float, before: float) -> bool:
    return not math.isnan(after) and (math.isnan(before) or after > before)


CaseCounts = dict[str, dict[int, Counts]]


def score_candidates(pairs: Sequence[tuple[str, Path, Path]], labels: Sequence[int],
                     ignore_label: int | None = None) -> dict:
    """Counts per case of every candidate: "none", "all" (step 1), and per label L the label-L step
    on top of "none" (key (L, "none")) and of "all" (key (L, "all")). Components are found on the
    whole prediction; only the scoring leaves out the reference's `ignore_label` voxels."""
    scores: dict = {"none": {}, "all": {}}
    for label in labels:
        scores[(label, "none")], scores[(label, "all")] = {}, {}
    for case, pred_path, ref_path in pairs:
        pred, ref = read_pair(case, pred_path, ref_path)
        merged = keep_largest_component(pred, labels)
        for base_name, base in (("none", pred), ("all", merged)):
            scores[base_name][case] = label_counts(base, ref, labels, ignore_label)
            if len(labels) > 1:
                for label in labels:
                    single = keep_largest_component(base, [label])
                    scores[(label, base_name)][case] = label_counts(single, ref, [label], ignore_label)
    return scores


def _dice(counts: CaseCounts, labels: Sequence[int]) -> tuple[dict[int, float], float]:
    summary = summarize(counts, labels)
    per_label = {label: summary["mean"][str(label)]["dice"] for label in labels}
    return per_label, summary["foreground_mean"]["dice"]


def decide_postprocessing(pairs: Sequence[tuple[str, Path, Path]], labels: Sequence[int],
                          ignore_label: int | None = None) -> dict:
    """Decide the steps on (case, prediction, reference) files; returns the JSON-ready decision."""
    labels = [int(label) for label in labels]
    if not labels:
        raise UserError("labels", "no foreground label to post-process")
    scores = score_candidates(pairs, labels, ignore_label)
    before, fg_before = _dice(scores["none"], labels)
    merged, fg_merged = _dice(scores["all"], labels)
    accept_all = strictly_better(fg_merged, fg_before) and all(
        not_worse(merged[label], before[label]) for label in labels)
    decisions = [{"labels": labels, "dice_before": fg_before, "dice_after": fg_merged,
                  "accepted": accept_all}]
    base_name = "all" if accept_all else "none"
    final = {case: dict(counts) for case, counts in scores[base_name].items()}
    current = merged if accept_all else before
    for label in labels if len(labels) > 1 else []:
        single, _ = _dice(scores[(label, base_name)], [label])
        accepted = strictly_better(single[label], current[label])
        decisions.append({"labels": [label], "dice_before": current[label],
                          "dice_after": single[label], "accepted": accepted})
        if accepted:
            for case, counts in scores[(label, base_name)].items():
                final[case][label] = counts[label]
    _, fg_final = _dice(final, labels)
    steps = [d["labels"] for d in decisions if d["accepted"]]
    for d in decisions:
        log.info("keep largest component of labels %s: Dice %.4f -> %.4f, %s", d["labels"],
                 d["dice_before"], d["dice_after"], "accepted" if d["accepted"] else "rejected")
    return {"steps": steps, "labels": labels, "decisions": decisions, "cases": len(pairs),
            "foreground_dice_before": fg_before, "foreground_dice_after": fg_final}


def validation_predictions(results: Path) -> dict[str, Path]:
    """Case → file of the cross-validation predictions: `crossval/` if present, else the
    `fold_<k>/validation/` folders (a case predicted by two folds is an error)."""
    crossval = results / "crossval"
    if crossval.is_dir() and list_segs(crossval):
        return list_segs(crossval)
    found: dict[str, Path] = {}
    for fold in sorted(results.glob("fold_[0-9]*")):
        if not (fold / "validation").is_dir():
            continue
        for case, path in list_segs(fold / "validation").items():
            if case in found:
                raise UserError(case, f"predicted twice: {found[case]} and {path}")
            found[case] = path
    if not found:
        raise UserError(results, "no validation predictions (crossval/ or fold_<k>/validation/)")
    return found


def determine_postprocessing(work: str | Path, config_name: str = "3d_fullres",
                             reference: str | Path | None = None) -> dict:
    """Decide post-processing on WORK/results/<config>'s validation predictions; writes and
    returns `results/<config>/postprocessing.json`."""
    work = Path(work)
    plans = load_plans(work / "plans.json")
    results = work / "results" / config_name
    if not results.is_dir():
        raise UserError(results, f"no results for configuration '{config_name}'")
    ref_dir = Path(reference) if reference is not None else reference_labels(plans)
    pairs = match_cases(validation_predictions(results), list_segs(ref_dir), results, ref_dir)
    decision = decide_postprocessing(pairs, plans.foreground_labels, plans.ignore_label)
    decision["configuration"] = config_name
    save_postprocessing(decision, results / POSTPROCESSING_FILE)
    write_postprocessed([pred for _, pred, _ in pairs], decision["steps"], results / POSTPROCESSED_DIR)
    return decision


def write_postprocessed(preds: Sequence[Path], steps: Sequence[Sequence[int]], out_dir: Path) -> None:
    """Apply the steps to each prediction file and write it to out_dir (same name and affine)."""
    for path in preds:
        image = read_image(path)
        seg = apply_postprocessing(np.rint(image.array).astype(np.int16), steps)
        write_seg(out_dir / path.name, seg, image.affine)
