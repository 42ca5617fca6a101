"""Train Hippocampus (Dataset004) fold 0 on the CPU and report wall time and validation Dice.

    python benchmarks/train_hippocampus.py [--work DIR] [--epochs 20] [--iters 25] [--batch-size 2]

Plans and preprocesses into DIR first (reused when present), then runs `nnlite.train` on fold 0
with per-iteration poly LR and 10 validation iterations per epoch, then the full sliding-window
validation of the 44 fold-0 cases. The reference point (nnunetv2 2.8.1, 2 CPU cores, 20 × 25
iterations at batch 2): 13 min, mean Dice 0.52–0.54; 40 × 25: 0.856 in 21 min 22 s. The default
here is a smaller budget (4 × 25) so the script finishes in minutes; pass --epochs 20 for the
comparison. With `--resume` an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
REFERENCE_MINUTES = {20: 13.0, 40: 21 + 22 / 60}  # nnunetv2 2.8.1, 25 iterations/epoch, batch 2
REFERENCE_DICE = {20: 0.53, 40: 0.856}


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-hippocampus"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if not (RAW / "dataset.json").is_file():
        print(f"skipped: {RAW} not found")
        return 0
    python = sys.executable
    if not (args.work / "plans.json").is_file():
        run([python, "-m", "nnlite.plan", str(RAW), str(args.work), "--configs", "3d_fullres", "--workers", "2"])
    run([python, "-m", "nnlite.preprocess", str(args.work), "--configs", "3d_fullres", "--workers", "2",
         "--raw", str(RAW)])
    started = time.perf_counter()
    run([python, "-m", "nnlite.train", str(args.work), "--fold", "0", "--epochs", str(args.epochs),
         "--iters-per-epoch", str(args.iters), "--batch-size", str(args.batch_size), "--val-iters", "10",
         "--device", "cpu", "--seed", "0", "--workers", "1", "--set", "training.lr_step=iteration",
         "--resume" if args.resume else "--overwrite"])
    minutes = (time.perf_counter() - started) / 60
    summary = json.loads((args.work / "results/3d_fullres/fold_0/validation/summary.json").read_text())
    dice = summary["foreground_mean"]["dice"]
    print(f"nnlite: {args.epochs} x {args.iters} iterations at batch {args.batch_size}: "
          f"{minutes:.1f} min, validation Dice {dice:.4f} on {len(summary['per_case'])} cases")
    if args.epochs in REFERENCE_MINUTES and args.iters == 25 and args.batch_size == 2:
        print(f"time ratio nnlite / nnunetv2: {minutes / REFERENCE_MINUTES[args.epochs]:.2f} "
              f"(Dice {dice:.3f} vs {REFERENCE_DICE[args.epochs]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
