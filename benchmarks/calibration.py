"""ECE before and after temperature scaling on a small Hippocampus (Dataset004) cross-validation.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py [--work DIR] [--cases 30] [--held-out 20]
        [--folds 2] [--epochs 6] [--iters 50]

Takes the first `--cases` training cases (sorted by name) as a dataset of its own, plans it with
`--folds` folds, narrows the planned network (stage widths / `--width-divisor`, so a CPU shared
with other work trains it in minutes), trains every fold briefly (`--epochs` × `--iters`
iterations at batch 2, CPU, validated without mirroring: one member per case, so
p^(1/T) renormalised is exactly softmax(logits / T)), predicts the next `--held-out` cases (never
seen by any fold) with the fold ensemble (no mirroring) and `--save-probabilities
--no-temperature`, then runs `nnlite best`, which fits T on the
cross-validation probabilities (results/3d_fullres/temperature.json). Reports the ECE
(docs/uncertainty.md: 15 equal-width bins of the max-class confidence; `foreground` = voxels
within 3 voxels of predicted or reference foreground, and all voxels) before and after T:

- cross-validation, T fitted on the same cases (in-sample: what temperature.json records);
- cross-validation, cross-fitted: each fold's cases scaled by a T fitted on the other folds' cases;
- held-out cases, scaled by the cross-validation's T; and the same cases predicted again by
  `predict` applying temperature.json itself (it must give the same ECE: predict applies T).

Writes DIR/calibration_results.json and prints a markdown table for docs/uncertainty.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's nnlite, also when run as a script
RAW = ROOT.parent / "shared" / "data" / "Dataset004_Hippocampus"
CONFIG = "3d_fullres"


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def subset_dataset(raw: Path, target: Path, inputs: Path, cases: int, held_out: int) -> tuple[list[str], list[str]]:
    """target: a raw dataset of the first `cases` cases (links); inputs: the next `held_out` cases'
    images as `<case>_0000.nii.gz` (links). Returns (training cases, held-out cases)."""
    names = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    train, test = names[:cases], names[cases : cases + held_out]
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(exist_ok=True)
    inputs.mkdir(parents=True, exist_ok=True)
    for case in train:
        _link(raw / "imagesTr" / f"{case}_0000.nii.gz", target / "imagesTr" / f"{case}_0000.nii.gz")
        _link(raw / "labelsTr" / f"{case}.nii.gz", target / "labelsTr" / f"{case}.nii.gz")
    for case in test:
        _link(raw / "imagesTr" / f"{case}_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    dataset = json.loads((raw / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**dataset, "numTraining": len(train)}, indent=2))
    return train, test


def _link(source: Path, target: Path) -> None:
    if not target.exists():
        target.symlink_to(source.resolve())


def narrow_network(work: Path, divisor: int, patch: tuple[int, ...] | None) -> None:
    """plans.json's 3d_fullres stage widths divided by `divisor` (at least 1 feature), and its
    patch replaced by `patch` (when given; divisible by the network's total stride)."""
    from dataclasses import replace

    from nnlite.plans import load_plans, save_plans

    plans = load_plans(work / "plans.json")
    config = plans.configurations[CONFIG]
    widths = tuple(max(1, f // divisor) for f in config.network.features_per_stage)
    config = replace(config, network=replace(config.network, features_per_stage=widths),
                     patch_size=tuple(patch) if patch else config.patch_size)
    save_plans(replace(plans, configurations={**plans.configurations, CONFIG: config}), work / "plans.json")
    print(f"network stage widths {widths}, patch {config.patch_size}")


def train_folds(python: str, work: Path, folds: int, epochs: int, iters: int) -> None:
    for fold in range(folds):
        if (work / "results" / CONFIG / f"fold_{fold}" / "validation" / "summary.json").is_file():
            continue
        run([python, "-m", "nnlite.train", str(work), "--fold", str(fold), "--epochs", str(epochs),
             "--iters-per-epoch", str(iters), "--batch-size", "2", "--val-iters", "5", "--device", "cpu",
             "--seed", "0", "--workers", "1", "--set", "training.lr_step=iteration",
             "--set", "validation.mirroring=false", "--overwrite"])


def folder_bins(folder: Path, refs: Path, plans, temperature: float = 1.0, cases=None):
    """Merged ECE bins of the `.npz` of `folder`'s label maps (only `cases` when given)."""
    from nnlite.evaluation.calibration import case_bins, case_voxels, merge_bins
    from nnlite.evaluation.metrics import read_label_map
    from nnlite.inference.saved_probabilities import load_probabilities

    bins = []
    for case in sorted(cases if cases is not None else [p.name[:-4] for p in folder.glob("*.npz")]):
        ref = read_label_map(refs / f"{case}.nii.gz")[0]
        bins.append(case_bins(case_voxels(load_probabilities(folder / f"{case}.npz"), ref, plans), temperature))
    return merge_bins(bins)


def cross_fitted(work: Path, plans, refs: Path) -> dict:
    """Each fold's cases scaled by T fitted on the other folds' cases: ECE before/after, pooled."""
    from nnlite.evaluation.calibration import calibrate_cases, merge_bins, saved_probabilities

    crossval = work / "results" / CONFIG / "crossval"
    folds = json.loads((crossval / "summary.json").read_text())["folds"]
    before, after, temperatures = [], [], []
    for fold in sorted(set(folds.values())):
        mine = [case for case, f in folds.items() if f == fold]
        others = [(case, saved_probabilities(crossval / f"{case}.nii.gz"), refs / f"{case}.nii.gz")
                  for case, f in folds.items() if f != fold]
        fitted = calibrate_cases(others, plans, work / f"temperature_without_fold_{fold}.json", f"not fold {fold}")
        temperatures.append(fitted["temperature"])
        before.append(folder_bins(crossval, refs, plans, 1.0, mine))
        after.append(folder_bins(crossval, refs, plans, fitted["temperature"], mine))
    return {"temperatures": temperatures, "before": merge_bins(before), "after": merge_bins(after)}


def row(name: str, before, after, temperature: str) -> str:
    return (f"| {name} | {temperature} | {before['foreground'].ece():.4f} → {after['foreground'].ece():.4f} "
            f"| {before['all'].ece():.4f} → {after['all'].ece():.4f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-calibration"))
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--width-divisor", type=int, default=4)
    parser.add_argument("--patch", type=int, nargs=3, default=(24, 32, 24),
                        help="training patch (z y x) instead of the planned 40 56 40: 5x fewer voxels")
    parser.add_argument("--raw", type=Path, default=RAW, help="the Hippocampus raw dataset")
    args = parser.parse_args()
    if not (args.raw / "dataset.json").is_file():
        print(f"skipped: {args.raw} not found")
        return 0
    from nnlite.plans import load_plans

    started, python, root = time.perf_counter(), sys.executable, args.work
    raw, work, inputs = root / "raw", root / "work", root / "inputs"
    _, held_out = subset_dataset(args.raw, raw, inputs, args.cases, args.held_out)
    if not (work / "plans.json").is_file():
        run([python, "-m", "nnlite.plan", str(raw), str(work), "--configs", CONFIG, "--workers", "1",
             "--folds", str(args.folds)])
        narrow_network(work, args.width_divisor, args.patch)
        run([python, "-m", "nnlite.preprocess", str(work), "--configs", CONFIG, "--workers", "1"])
    train_folds(python, work, args.folds, args.epochs, args.iters)
    raw_preds, scaled_preds = root / "predicted_raw", root / "predicted_with_t"
    (work / "results" / CONFIG / "temperature.json").unlink(missing_ok=True)  # predicted before any T
    run([python, "-m", "nnlite.predict", str(work), str(inputs), str(raw_preds), "--config", CONFIG,
         "--save-probabilities", "--no-temperature", "--no-mirroring", "--device", "cpu", "--overwrite"])
    run([python, "-m", "nnlite.best", str(work), "--no-ensembles"])
    fitted = json.loads((work / "results" / CONFIG / "temperature.json").read_text())
    run([python, "-m", "nnlite.predict", str(work), str(inputs), str(scaled_preds), "--config", CONFIG,
         "--save-probabilities", "--no-mirroring", "--device", "cpu", "--overwrite"])
    plans, refs, t = load_plans(work / "plans.json"), args.raw / "labelsTr", fitted["temperature"]
    crossval = work / "results" / CONFIG / "crossval"
    in_before, in_after = folder_bins(crossval, refs, plans), folder_bins(crossval, refs, plans, t)
    crossfit = cross_fitted(work, plans, refs)
    held_before, held_after = folder_bins(raw_preds, refs, plans), folder_bins(raw_preds, refs, plans, t)
    by_predict = folder_bins(scaled_preds, refs, plans)
    dice = json.loads((crossval / "summary.json").read_text())["foreground_mean"]["dice"]
    lines = ["| cases | T | ECE foreground voxels (before → after) | ECE all voxels (before → after) |",
             "|---|---|---|---|",
             row(f"cross-validation, {args.cases} cases, T fitted on them (in-sample)", in_before, in_after, f"{t:.3f}"),
             row("cross-validation, cross-fitted (each fold scaled by T fitted on the other folds)", crossfit["before"],
                 crossfit["after"], "/".join(f"{x:.3f}" for x in crossfit["temperatures"])),
             row(f"{len(held_out)} held-out cases (fold ensemble), cross-validation's T", held_before, held_after, f"{t:.3f}"),
             row("the same held-out cases, T applied by `predict` itself", held_before, by_predict, f"{t:.3f}")]
    minutes = (time.perf_counter() - started) / 60
    print("\n".join(lines))
    print(f"cross-validation foreground Dice {dice:.4f}; {minutes:.1f} min in all")
    results = {"temperature": t, "crossval_dice": dice, "minutes": minutes, "table": lines,
               "crossfit_temperatures": crossfit["temperatures"],
               "held_out_predict_matches": bool(np.isclose(by_predict["foreground"].ece(), held_after["foreground"].ece(),
                                                           atol=2e-3))}
    (root / "calibration_results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
