"""`python -m nnlite.train [WORK] …`: train a fold (or every fold); without WORK, run the demo.

Multi-GPU: `torchrun --nproc_per_node=N -m nnlite.train WORK …` (DDP; rank 0 writes the files).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run

DEMO_ROOT = "nnlite-demo"  # the demo's folder, in the current directory


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="nnlite train",
        description="Train a U-Net on a preprocessed work directory (no WORK: the built-in demo).")
    parser.add_argument("work", type=Path, nargs="?", metavar="WORK", help="work directory (plans.json, preprocessed/)")
    parser.add_argument("--config", default=None, metavar="NAME", help="configuration in plans.json (default 3d_fullres)")
    parser.add_argument("--fold", default=None, metavar="N|all|cv",
                        help="fold N of splits.json (0, 1, …: any fold the file holds), 'all' (train on "
                             "every case) or 'cv' (every fold of splits.json in turn)")
    parser.add_argument("--epochs", type=int, metavar="N", help="number of epochs (default 1000)")
    parser.add_argument("--iters-per-epoch", type=int, metavar="N", help="training iterations per epoch (default 250)")
    parser.add_argument("--val-iters", type=int, metavar="N", help="validation iterations per epoch (default 50)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="global batch size (default: the plan's)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="loader worker processes (default: the CPU count, at most 8; 0: none)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--augment-on", choices=("auto", "cpu", "device"),
                        help="augment in the loader workers (cpu) or batched on the training device "
                             "(device); default auto = device on CUDA")
    parser.add_argument("--seed", type=int, metavar="N", help="seed every random draw (CPU runs are bit-reproducible)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete the fold's results and start again")
    parser.add_argument("--train-config", default=None, metavar="NAME|FILE.yaml",
                        help="training settings: a name in nnlite/configs/ (default, debug, demo) or a "
                             "YAML file (default: 'default', and 'demo' for the demo)")
    parser.add_argument("--pretrained", type=Path, metavar="CHECKPOINT.pt",
                        help="start from the weights of an nnlite checkpoint (another dataset's too: "
                             "other labels or channels; docs/finetuning.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set training.initial_lr=3e-3 (repeatable)")
    return parser


FLAG_SETTINGS = {"config": "configuration", "epochs": "training.epochs",
                 "iters_per_epoch": "training.iters_per_epoch", "val_iters": "training.val_iters",
                 "batch_size": "training.batch_size", "workers": "data.workers", "device": "device",
                 "augment_on": "data.augment_on",
                 "seed": "seed"}


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """`--set` entries, then the dedicated flags (which win)."""
    overrides = list(args.set)
    for flag, key in FLAG_SETTINGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "pretrained", None) is not None:  # JSON-quoted: YAML reads any path as this string
        overrides.append(f"pretrained.checkpoint={json.dumps(str(args.pretrained.resolve()))}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fold is not None and not (args.fold in ("all", "cv") or args.fold.isdigit()):
        build_parser().error(f"argument --fold: expected a fold number, all or cv, got '{args.fold}'")
    from nnlite.training.config import load_train_config  # after parsing: `--help` stays fast

    default_settings = "default" if args.work is not None else "demo"
    config = load_train_config(args.train_config or default_settings, overrides_from_args(args))
    if args.work is None:
        from nnlite.training.demo_run import run_demo

        print(run_demo(Path(DEMO_ROOT), config, overwrite=args.overwrite))
        return 0
    from nnlite.training.folds import cv_folds
    from nnlite.training.trainer import train_folds

    folds = cv_folds(args.work) if args.fold == "cv" else (args.fold or config.fold,)
    train_folds(args.work, config, folds, resume=args.resume, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(run(main))
