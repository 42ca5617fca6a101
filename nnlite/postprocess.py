"""`python -m nnlite.postprocess WORK [--config 3d_fullres] [--reference LABELS_DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.layout import postprocessed_folder, postprocessing_file
from nnlite.common.cli import ArgumentParser, run

# The library is imported in main, after the arguments are parsed: --help starts instantly.


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nnlite postprocess",
        description="Decide keep-largest-component post-processing on cross-validation results.")
    parser.add_argument("work", type=Path, metavar="WORK", help="work directory (plans.json, results/)")
    parser.add_argument("--config", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("--reference", type=Path, default=None, metavar="LABELS_DIR",
                        help="reference label maps (default: <raw_path from plans>/labelsTr)")
    args = parser.parse_args(argv)
    from nnlite.evaluation.postprocessing import determine_postprocessing

    decision = determine_postprocessing(args.work, args.config, args.reference)  # logs each step once
    print(f"foreground Dice {decision['foreground_dice_before']:.4f} -> "
          f"{decision['foreground_dice_after']:.4f} on {decision['cases']} cases; "
          f"{postprocessing_file(args.work, args.config)}; post-processed CV "
          f"predictions in {postprocessed_folder(args.work, args.config)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
