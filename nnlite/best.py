"""`python -m nnlite.best WORK [--configs C …] [--no-ensembles]`: choose the best configuration.

Merges each trained configuration's fold validations into results/<config>/crossval/, ensembles
every pair, ranks them by cross-validated foreground Dice, decides post-processing on the winner
and writes results/best.json with the `predict` command that reproduces it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nnlite best",
        description="Compare trained configurations and their pairwise ensembles by cross-validation.")
    parser.add_argument("work", type=Path, metavar="WORK", help="work directory (plans.json, splits.json, results/)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                        help="configurations to compare (default: every one with trained folds)")
    parser.add_argument("--no-ensembles", action="store_true", help="compare single configurations only")
    args = parser.parse_args(argv)
    from nnlite.evaluation.selection import find_best  # after parsing: `--help` stays fast
    from nnlite.common.layout import best_file

    best = find_best(args.work, args.configs, ensembles=not args.no_ensembles)
    for candidate in best["candidates"]:
        dice = candidate["foreground_dice"]
        print(f"{candidate['name']:>32}  cross-validated Dice {'nan' if dice is None else f'{dice:.4f}'}"
              f"  ({candidate['cases']} cases)")
    post = best["postprocessing"]
    print(f"best: {best['winner']['name']}; post-processing {post['steps'] or 'none'} "
          f"(Dice {post['foreground_dice_before']:.4f} -> {post['foreground_dice_after']:.4f}); "
          f"{best_file(args.work)}")
    print(f"predict with: {best['predict_command']}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
