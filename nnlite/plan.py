"""`python -m nnlite.plan`: fingerprint a raw dataset (or read a fingerprint) and plan the experiment.

    python -m nnlite.plan RAW WORK [--gpu-memory-gb GB|auto] [--configs 2d 3d_fullres 3d_lowres] [--workers N]
                                   [--memory-model bytes|nnunet] [--folds K] [--overwrite]
    python -m nnlite.plan --fingerprint FINGERPRINT.json WORK [--gpu-memory-gb GB|auto] [--configs ...]
                                   [--memory-model bytes|nnunet] [--folds K] [--overwrite]
    python -m nnlite.plan RAW WORK --nnunet-plans nnUNetPlans.json [--configs ...] [--workers N]
                                   [--folds K] [--overwrite]

Writes WORK/dataset.json, fingerprint.json, splits.json and plans.json; prints one line per configuration.
nnU-Net's splits_final.json in WORK or beside RAW becomes splits.json (and the command says so).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, default_workers, run
from nnlite.planning.memory_budget import DEFAULT_GPU_MEMORY_GB, MEMORY_MODELS, resolve_gpu_memory
from nnlite.planning.planner import CONFIGURATIONS
from nnlite.planning.work_folder import (SPLITS_SOURCE_KEY, plan_dataset, plan_from_fingerprint,
                                        plan_from_nnunet_plans, summarize)
from nnlite.plans import Plans

USAGE = ("nnlite plan RAW WORK [options]\n"
         "       nnlite plan --fingerprint FINGERPRINT.json WORK [options]\n"
         "       nnlite plan RAW WORK --nnunet-plans nnUNetPlans.json [options]")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nnlite plan", usage=USAGE, description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RAW WORK", help="RAW WORK, or only WORK with --fingerprint")
    parser.add_argument("--fingerprint", type=Path, help="plan from this fingerprint.json / dataset_fingerprint.json")
    parser.add_argument("--gpu-memory-gb", default=str(DEFAULT_GPU_MEMORY_GB),
                        help="memory budget in GB (GiB), or 'auto' for the present CUDA device (default 8)")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG",
                        help=f"plan only these configurations ({' '.join(CONFIGURATIONS)}; with "
                             "--nnunet-plans: any of that file)")
    parser.add_argument("--nnunet-plans", type=Path, metavar="nnUNetPlans.json",
                        help="take nnU-Net v2's plan exactly (configuration names, inherits_from resolved) "
                             "instead of planning")
    parser.add_argument("--memory-model", choices=MEMORY_MODELS, default="bytes",
                        help="'bytes': nnlite's byte estimate (default); 'nnunet': the reference's proxy, "
                             "reproducing nnU-Net v2's patch and batch exactly")
    parser.add_argument("--workers", type=int, metavar="N", default=default_workers(),
                        help=f"fingerprint processes (default: the CPU count, at most 8: {default_workers()})")
    parser.add_argument("--folds", type=int, metavar="K", default=None,
                        help="cross-validation folds in splits.json (default: 5, or one per case below 5)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start WORK afresh when it was planned from another dataset (removes its "
                             "plans, splits, preprocessed data and results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    expected = 1 if args.fingerprint else 2
    if len(args.paths) != expected:
        parser.error("expected RAW WORK" if expected == 2 else "with --fingerprint give only WORK")
    if args.nnunet_plans and args.fingerprint:
        parser.error("--nnunet-plans needs RAW WORK, not --fingerprint")
    unknown = [c for c in args.configs or () if c not in CONFIGURATIONS]
    if unknown and not args.nnunet_plans:  # nnU-Net's plans may name any configuration
        choices = ", ".join(f"'{c}'" for c in CONFIGURATIONS)
        parser.error(f"argument --configs: invalid choice: '{unknown[0]}' (choose from {choices})")
    work = Path(args.paths[-1])
    options = dict(folds=args.folds, overwrite=args.overwrite)
    if args.nnunet_plans:
        plans = plan_from_nnunet_plans(Path(args.paths[0]), work, args.nnunet_plans, args.configs,
                                       max(args.workers, 1), **options)
        print(f"planned {plans.dataset_name} from nnU-Net's {args.nnunet_plans}; wrote {work / 'plans.json'}")
        return _report(plans)
    gb = resolve_gpu_memory(args.gpu_memory_gb)
    if args.fingerprint:
        plans = plan_from_fingerprint(args.fingerprint, work, gb, args.configs, args.memory_model, **options)
    else:
        plans = plan_dataset(Path(args.paths[0]), work, gb, args.configs, max(args.workers, 1),
                             args.memory_model, **options)
    print(f"planned {plans.dataset_name} for {gb:g} GB; wrote {work / 'plans.json'}")
    return _report(plans)


def _report(plans: Plans) -> int:
    if SPLITS_SOURCE_KEY in plans.extra:
        print(f"splits: using nnU-Net's {plans.extra[SPLITS_SOURCE_KEY]} as splits.json")
    for line in summarize(plans):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
