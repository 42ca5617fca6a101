"""`python -m nnlite.convert {breastdm,demo,nnunet-model} …`: datasets into nnU-Net's raw layout, models into WORK.

    python -m nnlite.convert breastdm SRC RAW [--spacing Z Y X] [--slice-axis N] [--keep-blank-slices]
    python -m nnlite.convert demo RAW [--cases N] [--seed S] [--regions]
    python -m nnlite.convert nnunet-model MODEL_DIR WORK [--overwrite]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nnlite convert", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    breastdm = commands.add_parser("breastdm", help="BreastDM .npy folders → raw NIfTI dataset")
    breastdm.add_argument("src", type=Path, help="BreastDM root holding images/ and labels/")
    breastdm.add_argument("raw", type=Path, help="output raw dataset folder (new or empty)")
    breastdm.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                          help="voxel size in mm written to the NIfTI headers (the .npy files "
                               "carry none; default 1 1 1 with a warning)")
    breastdm.add_argument("--slice-axis", type=int, choices=(0, 1, 2), default=None,
                          help="axis of the .npy arrays that indexes slices (default: the shortest)")
    breastdm.add_argument("--keep-blank-slices", action="store_true",
                          help="keep slices that are blank in all three images")
    demo = commands.add_parser("demo", help="generate the synthetic DCE-MRI demo dataset")
    demo.add_argument("raw", type=Path, help="output raw dataset folder (new or empty)")
    demo.add_argument("--cases", type=int, default=24, help="number of cases (default 24)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--regions", action="store_true",
                      help="the region variant: rim + necrotic core labels, nested regions 'lesion' "
                           "and 'core' (docs/regions.md)")
    model = commands.add_parser("nnunet-model", help="an nnU-Net v2 trained model folder → nnlite WORK")
    model.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                       help="<Trainer>__<Plans>__<configuration>/ with plans.json, dataset.json, fold_*/")
    model.add_argument("work", type=Path, metavar="WORK", help="nnlite work folder (new, or one converted into before)")
    model.add_argument("--overwrite", action="store_true", help="replace folds WORK already holds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "nnunet-model":
        from nnlite.training.nnunet_model import convert_nnunet_model

        print(convert_nnunet_model(args.model_dir, args.work, overwrite=args.overwrite).summary(args.work))
        return 0
    if args.command == "demo":
        from nnlite.data.demo_dataset import generate_demo_dataset

        raw = generate_demo_dataset(args.raw, n_cases=args.cases, seed=args.seed, regions=args.regions)
        print(f"demo: {args.cases} cases written to {raw}")
        return 0
    from nnlite.data.breastdm import convert_breastdm

    report = convert_breastdm(args.src, args.raw, spacing=args.spacing,
                              slice_axis=args.slice_axis, keep_blank=args.keep_blank_slices)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
