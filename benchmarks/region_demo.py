"""Per-region validation Dice of the region demo after a short CPU schedule, and the time it takes.

The region variant of the demo (`convert demo --regions`: lesion = enhancing rim 1 + necrotic core
2; regions "lesion" [1, 2] and "core" 2) is planned like the demo (`plan_demo`: 1 GB budget,
quarter-width network) with a 16×48×48 patch, then fold 0 trains with configs/demo.yaml for
`--epochs` × `--iters` iterations and is validated with the full sliding-window predictor.

    python benchmarks/region_demo.py [--cases 24] [--epochs 20] [--iters 25] [--root /tmp/region-demo]

Prints the validation Dice per region, their mean, and the seconds for data + planning +
preprocessing and for training + validation. Measured (2-core machine shared by several jobs, one
torch thread): mean 0.750 (lesion 0.684, core 0.816) on 5 validation cases, 77 s + 306 s
(a second run gave the same Dice to 4 digits; 95 s + 323 s under a heavier load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnlite.data.demo_dataset import generate_demo_dataset  # noqa: E402
from nnlite.plans import save_plans  # noqa: E402
from nnlite.preprocessing.runner import run_preprocessing  # noqa: E402
from nnlite.train import main as train_main  # noqa: E402
from nnlite.training.demo_run import DEMO_CONFIGURATION, plan_demo  # noqa: E402

PATCH = (16, 48, 48)  # divisible by the demo plan's total stride (4, 16, 16); ~3× fewer voxels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--root", type=Path, default=Path("/tmp/region-demo"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    started = time.perf_counter()
    raw = generate_demo_dataset(args.root / "raw", n_cases=args.cases, regions=True)
    work = args.root / "work"
    plans = plan_demo(raw, work)
    config = plans.configurations[DEMO_CONFIGURATION]
    save_plans(replace(plans, configurations={DEMO_CONFIGURATION: replace(config, patch_size=PATCH)}),
               work / "plans.json")
    run_preprocessing(work, [DEMO_CONFIGURATION], workers=1)
    prepared = time.perf_counter()
    train_main([str(work), "--train-config", "demo", "--device", "cpu", "--fold", "0", "--workers", "0",
                "--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters), "--val-iters", "5"])
    done = time.perf_counter()
    summary = json.loads((work / "results" / DEMO_CONFIGURATION / "fold_0" / "validation" /
                          "summary.json").read_text())
    for name, values in summary["mean"].items():
        print(f"{name:>10} Dice {values['dice']:.4f}")
    print(f"{'mean':>10} Dice {summary['foreground_mean']['dice']:.4f} on {len(summary['per_case'])} cases")
    print(f"data + plan + preprocess {prepared - started:.0f} s; train + validate {done - prepared:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
