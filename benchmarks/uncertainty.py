"""Does the per-case uncertainty score find the bad cases? Spearman(score, 1 − Dice) and the share of
the total Dice error held by the worst-scored 20 % of held-out cases (docs/uncertainty.md).

    python benchmarks/uncertainty.py [--work DIR] [--epochs 8] [--iters 30] [--augment] [--mirror]
                                     [--dataset hippocampus|demo]

Plans, preprocesses and trains fold 0 of the dataset's `2d` configuration into DIR (each step
reused when its output is there; `--resume` continues an interrupted training): a short schedule
(epochs × iters at batch 32; without `--augment` no augmentation) that fits a 2-core machine. Then
predicts fold 0's validation cases — 44 of Hippocampus's 220, never seen in training — from the
raw images with `predict --uncertainty --folds 0 --no-mirroring` (one member; `--mirror` predicts
the 4 mirrored members, for a model trained with `--augment`), scores them
with `nnlite evaluate` and compares `uncertainty.csv`'s score (and its boundary columns) with each
case's Dice error. `--dataset demo` does the same on a generated demo dataset (--demo-cases cases).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from nnlite.evaluation.quality import WORST_SHARE, case_dice_errors, oracle_share, quality_report, spearman, worst_share
from nnlite.inference.uncertainty import CSV_COLUMNS, read_rows

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
CONFIG = "2d"  # trains in minutes on a CPU where 3d_fullres needs hours to leave Dice 0
RANDOM_DRAWS = 10000  # random 20 % picks averaged for the "random" share


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def prepare(raw: Path, work: Path, args: argparse.Namespace) -> None:
    python = sys.executable
    if not (work / "plans.json").is_file():
        run([python, "-m", "nnlite.plan", str(raw), str(work), "--configs", CONFIG, "--workers", "1"])
        run([python, "-m", "nnlite.preprocess", str(work), "--configs", CONFIG, "--workers", "1",
             "--raw", str(raw)])
    fold = work / "results" / CONFIG / "fold_0"
    if not (fold / "checkpoint_final.pt").is_file():
        run([python, "-m", "nnlite.train", str(work), "--config", CONFIG, "--fold", "0", "--epochs", str(args.epochs),
             "--iters-per-epoch", str(args.iters), "--batch-size", "32", "--val-iters", "3", "--device", "cpu",
             "--seed", "0", "--workers", str(args.workers), "--set", "training.lr_step=iteration",
             *([] if args.augment else ["--set", "data.augment=false"]), "--resume" if args.resume else "--overwrite"])


def held_out_inputs(raw: Path, work: Path, folder: Path) -> list[str]:
    """Links to fold 0's validation cases' images (every channel file `<case>_CCCC.<ending>`) in
    `folder`; their names."""
    cases = json.loads((work / "splits.json").read_text())[0]["val"]
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted((raw / "imagesTr").iterdir()):
        channel = re.match(r"(.+)_\d{4}\.", image.name)
        case = channel.group(1) if channel else None
        link = folder / image.name
        if case in cases and not link.exists():
            link.symlink_to(image)
    return sorted(cases)


def random_share(errors: list[float], share: float = WORST_SHARE) -> float:
    """Mean share of the total error held by a random pick of ceil(share · n) cases (sampled)."""
    rng = random.Random(0)
    n = max(1, math.ceil(share * len(errors)))
    total = sum(errors)
    return sum(sum(rng.sample(errors, n)) for _ in range(RANDOM_DRAWS)) / RANDOM_DRAWS / total


def measure(raw: Path, work: Path, label: str, mirror: bool = False) -> dict:
    python = sys.executable
    inputs, out = work / "heldout_images", work / "heldout_predictions"
    cases = held_out_inputs(raw, work, inputs)
    started = time.perf_counter()
    run([python, "-m", "nnlite.predict", str(work), str(inputs), str(out), "--config", CONFIG, "--folds", "0",
         "--device", "cpu", "--uncertainty", "--overwrite",
         *([] if mirror else ["--no-mirroring"])])  # trained without augmentation: mirrored inputs are unseen
    seconds = time.perf_counter() - started
    run([python, "-m", "nnlite.evaluate", str(out), str(raw / "labelsTr"), "--dataset-json",
         str(raw / "dataset.json"), "--output", str(work / "heldout_summary.json")])
    errors = case_dice_errors(json.loads((work / "heldout_summary.json").read_text()))
    rows = read_rows(out / "uncertainty.csv")
    report = quality_report(rows, errors)
    ordered = sorted(set(rows) & set(errors))
    error = [errors[c] for c in ordered]
    report["random_20_share_of_dice_error_sampled"] = random_share(error)
    report["mean_dice"] = 1 - sum(error) / len(error)
    report["predict_seconds"] = seconds
    report["other_columns"] = {column: {"spearman": spearman([rows[c][column] for c in ordered], error),
                                        "worst_20_share": worst_share([rows[c][column] for c in ordered], error)}
                               for column in CSV_COLUMNS[2:4]}
    report["oracle_check"] = oracle_share(error)
    print(f"{label}: {len(cases)} held-out cases, mean Dice {report['mean_dice']:.3f}; "
          f"Spearman(score, 1 − Dice) {report['spearman_score_vs_dice_error']:.3f}; worst-scored 20 % hold "
          f"{100 * report['worst_20_share_of_dice_error']:.1f} % of the Dice error (random 20 %: "
          f"{100 * report['random_20_share_of_dice_error_sampled']:.1f} %, oracle "
          f"{100 * report['oracle_20_share_of_dice_error']:.1f} %)")
    for column, values in report["other_columns"].items():
        print(f"  {column}: Spearman {values['spearman']:.3f}, worst 20 % hold {100 * values['worst_20_share']:.1f} %")
    (work / "uncertainty_report.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-uncertainty"))
    parser.add_argument("--dataset", choices=("hippocampus", "demo"), default="hippocampus")
    parser.add_argument("--demo-cases", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--augment", action="store_true",
                        help="train with nnU-Net's augmentation (default: none, which trains faster per step)")
    parser.add_argument("--workers", type=int, default=1, help="loader workers of the training (0: none)")
    parser.add_argument("--mirror", action="store_true",
                        help="predict with test-time mirroring (4 members in 2d; only meaningful with --augment, "
                             "which mirrors the training patches)")
    args = parser.parse_args()
    if args.dataset == "demo":
        from nnlite.data.demo_dataset import generate_demo_dataset

        raw = args.work.parent / f"{args.work.name}-raw"
        if not (raw / "dataset.json").is_file():
            generate_demo_dataset(raw, n_cases=args.demo_cases, seed=0)
    else:
        raw = RAW
        if not (raw / "dataset.json").is_file():
            print(f"skipped: {raw} not found")
            return 0
    prepare(raw, args.work, args)
    measure(raw, args.work, args.dataset, args.mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main())
