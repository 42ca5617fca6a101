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

A region dataset (`nnlite.data.regions`) decides per region in the same way: step 1 merges every
region, step 2 keeps the largest component of each region's labels (removed voxels become
background, as in the reference) and is judged by that region's Dice; summaries name the regions.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from nnlite.inference.outputs import write_case_outputs
from nnlite.planning.splits import fold_sources
from nnlite.common.layout import (config_results, crossval_folder, plans_file, postprocessed_folder,
                                  postprocessing_file)
from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.data.image_io import read_image
from nnlite.evaluation.metrics import (Counts, json_ready, label_counts, list_segs, match_cases, read_pair,
                                       reference_labels, region_counts, summarize)
from nnlite.inference.largest_component import keep_largest_component
from nnlite.plans import Region, load_plans

log = logging.getLogger(__name__)



def save_postprocessing(decision: dict, path: str | Path) -> Path:
    return write_json_atomic(path, json_ready(decision))


def not_worse(after: float, before: float) -> bool:
    """after ≥ before, where NaN (no case defines the label) counts as equal to NaN."""
    if math.isnan(before) or math.isnan(after):
        return math.isnan(before) and math.isnan(after)
    return after >= before


def strictly_better(after: float, before: float) -> bool:
    return not math.isnan(after) and (math.isnan(before) or after > before)


CaseCounts = dict[str, dict[int | str, Counts]]


class Scored:
    """What is scored: labels (key = the label, members = [label]) or regions (key = the name,
    members = the region's labels); `count` gives TP/FP/FN per key of one case."""

    def __init__(self, labels: Sequence[int], regions: Sequence[Region], ignore_label: int | None) -> None:
        self.regions = {region.name: region for region in regions}
        self.keys = list(self.regions) if regions else [int(label) for label in labels]
        self.members = {key: list(self.regions[key].labels) if regions else [key] for key in self.keys}
        self.all_labels = sorted({v for members in self.members.values() for v in members})
        self.ignore_label = ignore_label

    def count(self, pred: np.ndarray, ref: np.ndarray, keys: Sequence) -> dict:
        if self.regions:
            return region_counts(pred, ref, [self.regions[key] for key in keys], self.ignore_label)
        return label_counts(pred, ref, keys, self.ignore_label)


def score_candidates(pairs: Sequence[tuple[str, Path, Path]], labels: Sequence[int],
                     ignore_label: int | None = None, regions: Sequence[Region] = ()) -> dict:
    """Counts per case of every candidate: "none", "all" (step 1), and per label (or region) L the
    L step on top of "none" (key (L, "none")) and of "all" (key (L, "all")). Components are found on
    the whole prediction; only the scoring leaves out the reference's `ignore_label` voxels."""
    scored = Scored(labels, regions, ignore_label)
    scores: dict = {"none": {}, "all": {}}
    for key in scored.keys:
        scores[(key, "none")], scores[(key, "all")] = {}, {}
    for case, pred_path, ref_path in pairs:
        pred, ref = read_pair(case, pred_path, ref_path)
        merged = keep_largest_component(pred, scored.all_labels)
        for base_name, base in (("none", pred), ("all", merged)):
            scores[base_name][case] = scored.count(base, ref, scored.keys)
            if len(scored.keys) > 1:
                for key in scored.keys:
                    single = keep_largest_component(base, scored.members[key])
                    scores[(key, base_name)][case] = scored.count(single, ref, [key])
    return scores


def _dice(counts: CaseCounts, labels: Sequence[int]) -> tuple[dict[int, float], float]:
    summary = summarize(counts, labels)
    per_label = {label: summary["mean"][str(label)]["dice"] for label in labels}
    return per_label, summary["foreground_mean"]["dice"]


def decide_postprocessing(pairs: Sequence[tuple[str, Path, Path]], labels: Sequence[int],
                          ignore_label: int | None = None, regions: Sequence[Region] = ()) -> dict:
    """Decide the steps on (case, prediction, reference) files; returns the JSON-ready decision.
    With `regions` the candidates and scores are per region (`labels` is then not used); a region
    step also changes the regions that share its labels, which "foreground_dice_after" ignores."""
    scored = Scored(labels, regions, ignore_label)
    if not scored.keys:
        raise UserError("labels", "no foreground label to post-process")
    scores = score_candidates(pairs, labels, ignore_label, regions)
    members, labels = scored.members, scored.keys
    before, fg_before = _dice(scores["none"], labels)
    merged, fg_merged = _dice(scores["all"], labels)
    accept_all = strictly_better(fg_merged, fg_before) and all(
        not_worse(merged[label], before[label]) for label in labels)
    decisions = [{"labels": scored.all_labels if regions else labels, "dice_before": fg_before,
                  "dice_after": fg_merged, "accepted": accept_all}]
    base_name = "all" if accept_all else "none"
    final = {case: dict(counts) for case, counts in scores[base_name].items()}
    current = merged if accept_all else before
    for label in labels if len(labels) > 1 else []:
        single, _ = _dice(scores[(label, base_name)], [label])
        accepted = strictly_better(single[label], current[label])
        decisions.append({"labels": members[label], "dice_before": current[label],
                          "dice_after": single[label], "accepted": accepted,
                          **({"region": label} if regions else {})})
        if accepted:
            for case, counts in scores[(label, base_name)].items():
                final[case][label] = counts[label]
    _, fg_final = _dice(final, labels)
    steps = [d["labels"] for d in decisions if d["accepted"]]
    for d in decisions:
        log.info("keep largest component of labels %s: Dice %.4f -> %.4f, %s", d["labels"],
                 d["dice_before"], d["dice_after"], "accepted" if d["accepted"] else "rejected")
    return {"steps": steps, "labels": scored.all_labels if regions else labels, "decisions": decisions,
            **({"regions": labels} if regions else {}), "cases": len(pairs),
            "foreground_dice_before": fg_before, "foreground_dice_after": fg_final}


def validation_predictions(work: Path, config_name: str) -> dict[str, Path]:
    """Case → file of the cross-validation predictions: `crossval/` if present, else those of the
    folds validated so far (`planning.splits.fold_sources`)."""
    crossval = crossval_folder(work, config_name)
    if crossval.is_dir() and list_segs(crossval):
        return list_segs(crossval)
    found = {case: path for case, (_, path) in fold_sources(work, config_name, complete=False).items()}
    if not found:
        raise UserError(config_results(work, config_name),
                        "no validation predictions (crossval/ or fold_<k>/validation/)")
    return found


def determine_postprocessing(work: str | Path, config_name: str = "3d_fullres",
                             reference: str | Path | None = None) -> dict:
    """Decide post-processing on WORK/results/<config>'s validation predictions; writes and
    returns `results/<config>/postprocessing.json`."""
    work = Path(work)
    plans = load_plans(plans_file(work))
    results = config_results(work, config_name)
    if not results.is_dir():
        raise UserError(results, f"no results for configuration '{config_name}'")
    ref_dir = Path(reference) if reference is not None else reference_labels(plans)
    pairs = match_cases(validation_predictions(work, config_name), list_segs(ref_dir), results, ref_dir)
    decision = decide_postprocessing(pairs, plans.foreground_labels, plans.ignore_label, plans.regions)
    decision["configuration"] = config_name
    save_postprocessing(decision, postprocessing_file(work, config_name))
    write_postprocessed([pred for _, pred, _ in pairs], decision["steps"], postprocessed_folder(work, config_name))
    return decision


def write_postprocessed(preds: Sequence[Path], steps: Sequence[Sequence[int]], out_dir: Path) -> None:
    """Apply the steps to each prediction file and write it to out_dir (same name and affine)."""
    for path in preds:
        image = read_image(path)
        write_case_outputs(out_dir / path.name, np.rint(image.array).astype(np.int16), image.affine,
                           postprocessing=steps)
