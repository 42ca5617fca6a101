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

A region dataset decides per region in the same way (the scored classes of `metrics`: a label is
the one-label set, a region the union of its labels): step 1 merges every region, step 2 keeps the
largest component of each region's labels (removed voxels become background, as in the reference)
and is judged by that region's Dice; summaries name the regions.
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
from nnlite.data.image_io import read_image
from nnlite.evaluation.metrics import (Counts, are_regions, confusion_counts, display_name, list_segs, match_cases,
                                       read_pair, reference_labels, scored_labels, summarize, write_summary)
from nnlite.inference.largest_component import keep_largest_component
from nnlite.common.labels import ScoredClass
from nnlite.plans import Plans, load_plans

log = logging.getLogger(__name__)


def not_worse(after: float, before: float) -> bool:
    """after ≥ before, where NaN (no case defines the label) counts as equal to NaN."""
    if math.isnan(before) or math.isnan(after):
        return math.isnan(before) and math.isnan(after)
    return after >= before


def strictly_better(after: float, before: float) -> bool:
    return not math.isnan(after) and (math.isnan(before) or after > before)


def score_candidates(pairs: Sequence[tuple[str, Path, Path]], scored: Sequence[ScoredClass],
                     ignore_label: int | None = None) -> dict:
    """Counts per case of every candidate: "none", "all" (step 1), and per scored class L the
    L step on top of "none" (key (L, "none")) and of "all" (key (L, "all")). Components are found on
    the whole prediction; only the scoring leaves out the reference's `ignore_label` voxels."""
    scores: dict = {"none": {}, "all": {}}
    for cls in scored:
        scores[(cls.key, "none")], scores[(cls.key, "all")] = {}, {}
    for case, pred_path, ref_path in pairs:
        pred, ref = read_pair(case, pred_path, ref_path)
        merged = keep_largest_component(pred, scored_labels(scored))
        for base_name, base in (("none", pred), ("all", merged)):
            scores[base_name][case] = confusion_counts(base, ref, scored, ignore_label)
            if len(scored) > 1:
                for cls in scored:
                    single = keep_largest_component(base, list(cls.labels))
                    scores[(cls.key, base_name)][case] = confusion_counts(single, ref, [cls], ignore_label)
    return scores


def _dice(counts: dict[str, dict[int | str, Counts]], labels: Sequence[int | str]
          ) -> tuple[dict[int | str, float], float]:
    summary = summarize(counts, labels)
    per_label = {label: summary["mean"][str(label)]["dice"] for label in labels}
    return per_label, summary["foreground_mean"]["dice"]


def decide_postprocessing(pairs: Sequence[tuple[str, Path, Path]], scored: Sequence[ScoredClass],
                          ignore_label: int | None = None) -> dict:
    """Decide the steps on (case, prediction, reference) files; returns the JSON-ready decision.
    With regions the candidates and scores are per region; a region step also changes the regions
    that share its labels, which "foreground_dice_after" ignores."""
    if not scored:
        raise UserError("labels", "no foreground label to post-process")
    scores = score_candidates(pairs, scored, ignore_label)
    regions, labels, keys = are_regions(scored), scored_labels(scored), [cls.key for cls in scored]
    before, fg_before = _dice(scores["none"], keys)
    merged, fg_merged = _dice(scores["all"], keys)
    accept_all = strictly_better(fg_merged, fg_before) and all(not_worse(merged[key], before[key]) for key in keys)
    decisions = [{"labels": labels, "dice_before": fg_before, "dice_after": fg_merged, "accepted": accept_all}]
    base_name = "all" if accept_all else "none"
    final = {case: dict(counts) for case, counts in scores[base_name].items()}
    current = merged if accept_all else before
    for cls in scored if len(scored) > 1 else []:
        single, _ = _dice(scores[(cls.key, base_name)], [cls.key])
        accepted = strictly_better(single[cls.key], current[cls.key])
        decisions.append({"labels": list(cls.labels), "dice_before": current[cls.key],
                          "dice_after": single[cls.key], "accepted": accepted,
                          **({"region": cls.key} if regions else {})})
        if accepted:
            for case, counts in scores[(cls.key, base_name)].items():
                final[case][cls.key] = counts[cls.key]
    _, fg_final = _dice(final, keys)
    return {"steps": [d["labels"] for d in decisions if d["accepted"]], "labels": labels, "decisions": decisions,
            **({"regions": keys} if regions else {}), "cases": len(pairs),
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
    return postprocess_folder(pairs, plans, config_name, postprocessing_file(work, config_name),
                              postprocessed_folder(work, config_name))


def postprocess_folder(pairs: Sequence[tuple[str, Path, Path]], plans: Plans, name: str, decision_file: Path,
                       out_dir: Path) -> dict:
    """Decide post-processing for the configuration (or ensemble) `name` on its (case, prediction,
    reference) files; write the decision to decision_file and the post-processed predictions to
    out_dir; returns the decision."""
    decision = decide_postprocessing(pairs, plans.scored, plans.ignore_label)
    for line in describe_decisions(decision, plans.labels):
        log.info("%s", line)
    decision["configuration"] = name
    write_summary(decision, decision_file)
    for _, path, _ in pairs:  # each prediction with the accepted steps applied, same name and affine
        image = read_image(path)
        write_case_outputs(out_dir / path.name, np.rint(image.array).astype(np.int16), image.affine,
                           postprocessing=decision["steps"])
    return decision


def describe_decisions(decision: dict, labels: dict[str, int]) -> list[str]:
    """One line per decided step, naming what it keeps the largest component of as dataset.json
    does: first every foreground label (or region) merged, then each label or region."""
    names = {value: name for name, value in labels.items()}
    lines = []
    for index, step in enumerate(decision["decisions"]):
        values = ", ".join(map(str, step["labels"]))
        if index == 0:
            what = f"all foreground merged (labels {values})"
        elif "region" in step:
            what = f"region '{step['region']}' (labels {values})"
        else:
            what = f"label {display_name(step['labels'][0], names)}"
        verdict = "accepted" if step["accepted"] else "rejected"
        lines.append(f"keep the largest component of {what}: Dice {step['dice_before']:.4f} -> "
                     f"{step['dice_after']:.4f}, {verdict}")
    return lines
