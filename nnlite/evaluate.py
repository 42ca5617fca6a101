"""`python -m nnlite.evaluate PRED_DIR REF_DIR [--labels 1 2 …] [--ignore-label N]
[--output summary.json]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run
from nnlite.evaluation.metrics import evaluate_folder, format_table, write_summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nnlite evaluate",
        description="Dice, IoU and PPV of predicted label maps against reference label maps.")
    parser.add_argument("pred_dir", type=Path, help="folder of <case>.nii.gz predictions")
    parser.add_argument("ref_dir", type=Path, help="folder of <case>.nii.gz reference label maps")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="labels to score (default: every nonzero value in the references)")
    parser.add_argument("--ignore-label", type=int, default=None,
                        help="reference value of unannotated voxels, scored nowhere (dataset.json's "
                             "'ignore')")
    parser.add_argument("--output", type=Path, default=None,
                        help="summary.json path (default: PRED_DIR/summary.json)")
    args = parser.parse_args(argv)
    summary = evaluate_folder(args.pred_dir, args.ref_dir, args.labels, args.ignore_label)
    output = args.output or args.pred_dir / "summary.json"
    write_summary(summary, output)
    print(format_table(summary))
    print(f"summary: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
