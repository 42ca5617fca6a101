"""`python -m nnlite.plan`: fingerprint a raw dataset (or read a fingerprint) and plan the experiment.

    python -m nnlite.plan RAW WORK [--preset default|resenc-m|resenc-l|resenc-xl] [--gpu-memory-gb GB|auto]
                                   [--configs 2d 3d_fullres 3d_lowres] [--workers N]
                                   [--memory-model bytes|nnunet] [--folds K] [--overwrite]
    python -m nnlite.plan --fingerprint FINGERPRINT.json WORK [--preset ...] [--gpu-memory-gb GB|auto]
                                   [--configs ...] [--memory-model bytes|nnunet] [--folds K] [--overwrite]
    python -m nnlite.plan RAW WORK --nnunet-plans nnUNetPlans.json [--configs ...] [--workers N]
                                   [--folds K] [--overwrite]
    python -m nnlite.plan WORK --add-config NAME --from PARENT [--set KEY=VALUE ...]
    python -m nnlite.plan RAW WORK --network MODULE:FUNCTION [options]   (also with --fingerprint)
    python -m nnlite.plan RAW WORK --plans-from SOURCE_WORK [--configs ...] [--workers N] [--folds K]
                                   [--overwrite]

Writes WORK/dataset.json, fingerprint.json, splits.json and plans.json; prints one line per configuration.
nnU-Net's splits_final.json in WORK or beside RAW becomes splits.json (and the command says so).
With --add-config, adds to WORK/plans.json a configuration that inherits PARENT and changes the
`--set` fields (e.g. network.attention_gates=true, batch_size=4).
With --network, every configuration's network is built by that function instead of the built-in
U-Net (docs/architectures.md); it is imported and its outputs checked before anything is written.
With --plans-from, every configuration keeps SOURCE_WORK's spacing, patch, batch and network
topology, and takes channels, labels and normalization from RAW: a model trained in SOURCE_WORK
then fine-tunes in WORK with `train --pretrained` (docs/finetuning.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nnlite.common.layout import plans_file
from nnlite.common.cli import ArgumentParser, default_workers, run
from nnlite.planning.memory_budget import MEMORY_MODELS, resolve_gpu_memory
from nnlite.planning.planner import CONFIGURATIONS
from nnlite.planning.presets import PRESETS

if TYPE_CHECKING:
    from nnlite.plans import Plans

# The library is imported in main, after the arguments are parsed: --help starts instantly.

USAGE = ("nnlite plan RAW WORK [options]\n"
         "       nnlite plan --fingerprint FINGERPRINT.json WORK [options]\n"
         "       nnlite plan RAW WORK --nnunet-plans nnUNetPlans.json [options]\n"
         "       nnlite plan WORK --add-config NAME --from PARENT [--set KEY=VALUE ...]\n"
         "       nnlite plan RAW WORK --plans-from SOURCE_WORK [options]")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nnlite plan", usage=USAGE, description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RAW WORK", help="RAW WORK, or only WORK with --fingerprint")
    parser.add_argument("--fingerprint", type=Path, help="plan from this fingerprint.json / dataset_fingerprint.json")
    parser.add_argument("--gpu-memory-gb", default=None,
                        help="memory budget in GB (GiB), or 'auto' for the present CUDA device (default: the "
                             "preset's, 8; resenc-l 24, resenc-xl 40)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="planner: 'default' (plain U-Net) or nnU-Net's residual-encoder planners "
                             "resenc-m|resenc-l|resenc-xl")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG",
                        help=f"plan only these configurations ({' '.join(CONFIGURATIONS)}; with "
                             "--nnunet-plans: any of that file)")
    parser.add_argument("--nnunet-plans", type=Path, metavar="nnUNetPlans.json",
                        help="take nnU-Net v2's plan exactly (configuration names and inherits_from kept) "
                             "instead of planning")
    parser.add_argument("--plans-from", type=Path, metavar="SOURCE_WORK",
                        help="copy a planned WORK's spacing, patch, batch and topology (to fine-tune its "
                             "model here); channels, labels and normalization come from RAW")
    parser.add_argument("--network", metavar="MODULE:FUNCTION",
                        help="build every configuration's network with this function, called like "
                             "nnlite.network.unet:build_unet (e.g. my_package.nets:build; docs/architectures.md)")
    parser.add_argument("--memory-model", choices=MEMORY_MODELS, default="bytes",
                        help="'bytes': nnlite's byte estimate (default); 'nnunet': the reference's proxy, "
                             "reproducing nnU-Net v2's patch and batch exactly")
    parser.add_argument("--workers", type=int, metavar="N", default=default_workers(),
                        help=f"fingerprint processes (default: the CPU count, at most 8: {default_workers()})")
    parser.add_argument("--folds", type=int, metavar="K", default=None,
                        help="cross-validation folds in splits.json (default: 5, or one per case below 5)")
    parser.add_argument("--add-config", metavar="NAME", help="add configuration NAME inheriting --from PARENT")
    parser.add_argument("--from", dest="parent", metavar="PARENT", help="the configuration --add-config inherits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --add-config: change a field, e.g. --set network.attention_gates=true (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start WORK afresh when it was planned from another dataset (removes its "
                             "plans, splits, preprocessed data and results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.add_config or args.parent or args.set:
        return add_config(parser, args)
    expected = 1 if args.fingerprint else 2
    if len(args.paths) != expected:
        parser.error("expected RAW WORK" if expected == 2 else "with --fingerprint give only WORK")
    if args.nnunet_plans and args.fingerprint:
        parser.error("--nnunet-plans needs RAW WORK, not --fingerprint")
    if args.nnunet_plans and args.network:
        parser.error("--nnunet-plans keeps nnU-Net's network; add a configuration built by another with "
                     "--add-config NAME --from PARENT --set network.architecture=MODULE:FUNCTION")
    unknown = [c for c in args.configs or () if c not in CONFIGURATIONS]
    if unknown and not (args.nnunet_plans or args.plans_from):  # these plans may name any configuration
        choices = ", ".join(f"'{c}'" for c in CONFIGURATIONS)
        parser.error(f"argument --configs: invalid choice: '{unknown[0]}' (choose from {choices})")
    from nnlite.planning.work_folder import plan_dataset, plan_from_fingerprint, plan_from_nnunet_plans

    work = Path(args.paths[-1])
    if args.plans_from:
        return plans_from_work(parser, args, work)
    if args.nnunet_plans:
        plans = plan_from_nnunet_plans(Path(args.paths[0]), work, args.nnunet_plans, args.configs,
                                       max(args.workers, 1), folds=args.folds, overwrite=args.overwrite)
        print(f"planned {plans.dataset_name} from nnU-Net's {args.nnunet_plans}; wrote {plans_file(work)}")
        return _report(plans)
    gb = None if args.gpu_memory_gb is None else resolve_gpu_memory(args.gpu_memory_gb)
    options = dict(folds=args.folds, overwrite=args.overwrite, preset=args.preset, architecture=args.network,
                   check_network=network_check(args.network))
    if args.fingerprint:
        plans = plan_from_fingerprint(args.fingerprint, work, gb, args.configs, args.memory_model, **options)
    else:
        plans = plan_dataset(Path(args.paths[0]), work, gb, args.configs, max(args.workers, 1),
                             args.memory_model, **options)
    print(f"planned {plans.dataset_name} for {plans.gpu_memory_gb:g} GB ({args.preset} preset); "
          f"wrote {plans_file(work)}")
    return _report(plans)


def plans_from_work(parser: ArgumentParser, args, work: Path) -> int:
    """`plan RAW WORK --plans-from SOURCE_WORK`: the source's plan for this dataset."""
    if args.fingerprint or args.nnunet_plans:
        parser.error("--plans-from needs RAW WORK (not --fingerprint or --nnunet-plans)")
    if args.preset != "default" or args.gpu_memory_gb is not None or args.memory_model != "bytes":
        parser.error("--plans-from copies SOURCE_WORK's plan: --preset, --gpu-memory-gb and --memory-model "
                     "do not apply")
    from nnlite.planning.work_folder import plan_from_work

    plans = plan_from_work(Path(args.paths[0]), work, args.plans_from, args.configs, max(args.workers, 1),
                           folds=args.folds, overwrite=args.overwrite)
    print(f"planned {plans.dataset_name} with the plans of {args.plans_from}; wrote {plans_file(work)}")
    return _report(plans)


def network_check(architecture: str | None):
    """`--network MODULE:FUNCTION`: imported now (before the long fingerprint); the returned function
    checks every planned network's outputs, before anything is written."""
    if architecture is None:
        return None
    from nnlite.network.builders import check_networks, resolve_builder

    resolve_builder(architecture, "--network")
    return check_networks


def check_added_network(plans: Plans, name: str) -> None:
    """--add-config: a configuration built by another builder is imported and checked before it is saved."""
    from nnlite.network.builders import check_configuration, is_builtin

    if not is_builtin(plans.configurations[name].network):
        check_configuration(plans, name, "--set network.architecture")


def _report(plans: Plans) -> int:
    from nnlite.planning.work_folder import SPLITS_SOURCE_KEY, summarize

    if SPLITS_SOURCE_KEY in plans.extra:
        print(f"splits: using nnU-Net's {plans.extra[SPLITS_SOURCE_KEY]} as splits.json")
    for line in summarize(plans):
        print(line)
    return 0


def add_config(parser: ArgumentParser, args) -> int:
    """`plan WORK --add-config NAME --from PARENT [--set KEY=VALUE ...]`."""
    if not (args.add_config and args.parent):
        parser.error("--add-config NAME and --from PARENT go together (--set only with them)")
    if len(args.paths) != 1 or args.fingerprint:
        parser.error("with --add-config give only WORK")
    if args.preset != "default" or args.gpu_memory_gb is not None or args.configs or args.network:
        parser.error("--preset, --gpu-memory-gb, --configs and --network plan a dataset; --add-config changes "
                     "fields with --set (e.g. --set network.architecture=my_package.nets:build)")
    from nnlite.planning.inheritance import add_configuration
    from nnlite.planning.work_folder import summarize

    work = Path(args.paths[0])
    plans = add_configuration(work, args.add_config, args.parent, args.set, check=check_added_network)
    config = plans.configurations[args.add_config]
    print(f"added {args.add_config} (inherits {args.parent}; preprocessed data: {config.data_identifier}) "
          f"to {plans_file(work)}")
    for line in summarize(plans):
        if line.lstrip().startswith(f"{args.add_config}:"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
