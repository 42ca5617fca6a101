"""`python -m nnlite.evaluate PRED_DIR REF_DIR [--labels 1 2 … | --dataset-json PATH]
[--ignore-label N] [--output summary.json] [--format nnlite|nnunet]`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run

# The library is imported in main, after the arguments are parsed: --help starts instantly.


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nnlite evaluate",
        description="Dice, IoU and PPV of predicted label maps against reference label maps.")
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of <case>.nii.gz predictions")
    parser.add_argument("ref_dir", type=Path, metavar="REF_DIR", help="folder of <case>.nii.gz reference label maps")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=int, nargs="+", default=None, metavar="N",
                        help="foreground labels to score (default: every nonzero value in the references)")
    labels.add_argument("--dataset-json", type=Path, default=None, metavar="PATH",
                        help="score the labels (or regions) this dataset.json declares (and use its "
                             "ignore label); default: REF_DIR/../dataset.json when there is one")
    parser.add_argument("--ignore-label", type=int, default=None, metavar="N",
                        help="reference value of unannotated voxels, scored nowhere (dataset.json's "
                             "'ignore')")
    parser.add_argument("--output", type=Path, default=None, metavar="SUMMARY_JSON",
                        help="summary.json path (default: PRED_DIR/summary.json; never inside REF_DIR)")
    parser.add_argument("--format", choices=("nnlite", "nnunet"), default="nnlite",
                        help="summary.json layout: nnlite's (default) or nnU-Net v2's (foreground_mean, mean, "
                             "metric_per_case with Dice, IoU, PPV, TP, FP, FN, TN, n_pred, n_ref)")
    args = parser.parse_args(argv)
    from nnlite.evaluation.class_scores import score_prediction_folder
    from nnlite.evaluation.metrics import display_name, evaluate_folder, format_table, write_summary
    from nnlite.evaluation.nnunet_summary import evaluate_folder_nnunet, format_nnunet_table
    from nnlite.evaluation.scoring_inputs import absent_labels, find_dataset_json, labels_to_score, summary_path

    dataset_json = args.dataset_json
    if args.labels is None:  # --labels decides alone; else a dataset.json (a region dataset needs one)
        dataset_json, used = find_dataset_json(args.dataset_json, args.ref_dir)
        print(used)
    label_set = labels_to_score(args.labels, dataset_json, args.ignore_label)
    output = summary_path(args.output, args.pred_dir, args.ref_dir)
    if args.format == "nnunet":
        summary = evaluate_folder_nnunet(args.pred_dir, args.ref_dir, label_set.scored, label_set.ignore_label)
        write_summary(summary, output)
        print(format_nnunet_table(summary))
        print(f"summary: {output} (nnU-Net v2 layout)")
        return 0
    summary = evaluate_folder(args.pred_dir, args.ref_dir, label_set.scored, label_set.ignore_label)
    for label in absent_labels(summary):
        logging.getLogger(__name__).warning("warning: label %s occurs in no reference: its Dice is "
                                            "null or 0", display_name(label, label_set.names))
    classification = score_prediction_folder(args.pred_dir, dataset_json)  # classification.csv
    if classification is not None:
        summary["classification"] = classification
    write_summary(summary, output)
    print(format_table(summary, label_set.names))
    if classification is not None:
        auc = classification["auc"]
        print(f"classification: AUC {'n/a' if auc is None else f'{auc:.4f}'}, balanced accuracy "
              f"{classification['balanced_accuracy']:.4f} on {classification['num_cases']} cases")
    print(f"summary: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
