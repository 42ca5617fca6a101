"""`python -m nnlite.visualize IMAGES_DIR REF_DIR PRED_DIR OUT_DIR [--postprocessed DIR] …`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run

# The library is imported in main, after the arguments are parsed: --help starts instantly.


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nnlite visualize",
        description="Per case a PNG: input channels, reference, prediction (and post-processed "
                    "prediction) side by side on the slices that hold foreground.")
    parser.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of <case>_<CCCC>.nii.gz images")
    parser.add_argument("ref_dir", type=Path, metavar="REF_DIR", help="folder of reference <case>.nii.gz label maps")
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted <case>.nii.gz label maps")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for <case>.png")
    parser.add_argument("--postprocessed", type=Path, default=None,
                        help="folder of post-processed predictions (an extra column)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                        help="cases to draw (default: every case in PRED_DIR)")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="rows per picture (default: evaluation/pictures.py's MAX_SLICES, 6)")
    args = parser.parse_args(argv)
    if args.max_slices is not None and args.max_slices < 1:
        parser.error("--max-slices must be ≥ 1")
    from nnlite.evaluation.pictures import MAX_SLICES, roc_of_folder, visualize_folder

    written = visualize_folder(args.images_dir, args.ref_dir, args.pred_dir, args.out_dir, args.postprocessed,
                               args.cases, MAX_SLICES if args.max_slices is None else args.max_slices)
    print(f"wrote {len(written)} pictures to {args.out_dir}")
    roc = roc_of_folder(args.pred_dir, args.out_dir)  # PRED_DIR/summary.json with a classification
    if roc is not None:
        print(f"wrote the ROC curve to {roc}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
