"""Fine-tuning vs training from scratch at equal budgets, on 20 Hippocampus cases (CPU).

    OMP_NUM_THREADS=1 python benchmarks/finetune.py [--out DIR] [--seeds 0 1] [--epochs 6] [--iters 25]

The pretrained model comes from another task: the same anatomy with its two labels merged into one
("hippocampus", trained on `--source-cases` other cases), fine-tuned into the real task (anterior
and posterior, 3 outputs: the segmentation heads are re-initialised, everything else loads).
The cases are split once (seeded): source cases, 20 training and 20 validation cases, disjoint.
Steps, each the nnlite command printed with `$`:

1. raw folders: the merged-label source dataset and the 40-case target (images linked, not copied);
2. plan the source (3d_fullres), narrowed to CPU size (widths / 4, patch 24 × 32 × 24), preprocess,
   train it on every source case (fold all);
3. plan the target with `--plans-from` the source WORK (splits.json: one fold, 20 / 20), preprocess;
4. every arm × seed trains fold 0 for the same epochs × iterations at batch 2 in its own copy of
   the target WORK: `scratch`, `pretrained` (`--pretrained` the source's checkpoint_final.pt) and
   `pretrained+warmup` (the encoder frozen for the first epoch, initial LR 3e-3).

Reported: the pseudo-Dice of every epoch (metrics.jsonl: validation patches of the 20 validation
cases) and the final sliding-window validation Dice (validation/summary.json), per arm, mean over
seeds; everything is written to DIR/finetune_<epochs>x<iters>.json. A second call with other
`--epochs` reuses the source and target WORKs. The numbers in docs/finetuning.md come from this
script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
CONFIG = "3d_fullres"
PATCH = (24, 32, 24)  # CPU-sized patch (divisible by the plan's total stride 8 × 8 × 8)
WIDTH_DIVISOR = 4  # stage widths 32, 64, … → 8, 16, …
SPLIT_SEED = 0
ARMS = {  # name → extra train arguments (the pretrained checkpoint is added where PRETRAINED is)
    "scratch": [],
    "pretrained": ["PRETRAINED"],
    "pretrained+warmup": ["PRETRAINED", "--set", "pretrained.frozen_encoder_epochs=1",
                          "--set", "training.initial_lr=3e-3"],
}


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True, stderr=subprocess.DEVNULL)


def split_cases(n_source: int, n_train: int, n_val: int) -> tuple[list[str], list[str], list[str]]:
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (RAW / "imagesTr").glob("*_0000.nii.gz"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(cases))
    picked = [cases[i] for i in order[: n_source + n_train + n_val]]
    return picked[:n_source], picked[n_source:n_source + n_train], picked[n_source + n_train:]


def make_raw(target: Path, cases: list[str], merge_labels: bool) -> Path:
    """A raw dataset of `cases` (images linked); `merge_labels`: labels 1 and 2 become one label 1."""
    if (target / "dataset.json").is_file():
        return target
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    meta = json.loads((RAW / "dataset.json").read_text())
    for case in cases:
        os.symlink(RAW / "imagesTr" / f"{case}_0000.nii.gz", target / "imagesTr" / f"{case}_0000.nii.gz")
        label = RAW / "labelsTr" / f"{case}.nii.gz"
        if merge_labels:
            image = nib.load(label)
            merged = (np.asarray(image.dataobj) > 0).astype(np.uint8)
            nib.save(nib.Nifti1Image(merged, image.affine, image.header), target / "labelsTr" / f"{case}.nii.gz")
        else:
            os.symlink(label, target / "labelsTr" / f"{case}.nii.gz")
    if merge_labels:
        meta["labels"] = {"background": 0, "hippocampus": 1}
        meta["name"] = "Hippocampus_merged"
    meta["numTraining"] = len(cases)
    (target / "dataset.json").write_text(json.dumps(meta, indent=2))
    return target


def narrow_plan(work: Path) -> None:
    """The source plan at CPU size: widths / WIDTH_DIVISOR, patch PATCH (printed)."""
    from nnlite.plans import load_plans, save_plans

    plans = load_plans(work / "plans.json")
    config = plans.configurations[CONFIG]
    network = replace(config.network, features_per_stage=tuple(max(4, f // WIDTH_DIVISOR)
                                                                for f in config.network.features_per_stage))
    config = replace(config, network=network, patch_size=PATCH)
    save_plans(replace(plans, configurations={CONFIG: config}), work / "plans.json")
    print(f"narrowed {CONFIG}: widths {network.features_per_stage}, strides {network.strides}, patch {PATCH}")


def train_args(work: Path, fold: str, epochs: int, iters: int, seed: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "nnlite.train", str(work), "--config", CONFIG, "--fold", fold,
            "--epochs", str(epochs), "--iters-per-epoch", str(iters), "--val-iters", "10",
            "--batch-size", "2", "--device", "cpu", "--seed", str(seed), "--workers", "1",
            "--set", "training.lr_step=iteration", "--set", "validation.mirroring=false",
            "--set", "validation.save_probabilities=false", "--overwrite", *extra]


def prepare(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Source WORK trained, target WORK planned from it and preprocessed; returns (checkpoint, target)."""
    python = sys.executable
    source_cases, train, val = split_cases(args.source_cases, args.train_cases, args.val_cases)
    raw_source = make_raw(out / "raw_source", source_cases, merge_labels=True)
    raw_target = make_raw(out / "raw_target", train + val, merge_labels=False)
    source = out / "source"
    checkpoint = source / "results" / CONFIG / "fold_all" / "checkpoint_final.pt"
    if not checkpoint.is_file():
        run([python, "-m", "nnlite.plan", str(raw_source), str(source), "--configs", CONFIG, "--workers", "2"])
        narrow_plan(source)
        run([python, "-m", "nnlite.preprocess", str(source), "--workers", "2"])
        started = time.perf_counter()
        run(train_args(source, "all", args.source_epochs, args.iters, 0, ["--set", "validation.enabled=false"]))
        print(f"source trained in {(time.perf_counter() - started) / 60:.1f} min")
    target = out / "target"
    if not (target / "preprocessed").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        (target / "splits.json").write_text(json.dumps([{"train": train, "val": val}], indent=1))
        run([python, "-m", "nnlite.plan", str(raw_target), str(target), "--plans-from", str(source),
             "--configs", CONFIG, "--workers", "2"])
        run([python, "-m", "nnlite.preprocess", str(target), "--workers", "2"])
    return checkpoint, target


def train_arm(target: Path, out: Path, arm: str, seed: int, checkpoint: Path, args: argparse.Namespace) -> dict:
    """One arm × seed in its own copy of the target WORK; returns its curve and final Dice."""
    work = out / "arms" / f"{arm}_{args.epochs}x{args.iters}_seed{seed}"
    fold = work / "results" / CONFIG / "fold_0"
    if not (fold / "validation" / "summary.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(target, work, ignore=shutil.ignore_patterns("results"))
        extra = [a for x in ARMS[arm] for a in (["--pretrained", str(checkpoint)] if x == "PRETRAINED" else [x])]
        started = time.perf_counter()
        run(train_args(work, "0", args.epochs, args.iters, seed, extra))
        print(f"{arm} seed {seed}: {(time.perf_counter() - started) / 60:.1f} min")
    records = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    return {"pseudo_dice": [r["mean_pseudo_dice"] for r in records],
            "final_dice": summary["foreground_mean"]["dice"],
            "final_dice_per_label": {k: v["dice"] for k, v in summary["mean"].items()}}


def table(results: dict[str, list[dict]], epochs: int) -> list[str]:
    """Markdown: pseudo-Dice per epoch and the final validation Dice, mean over seeds per arm."""
    arms = list(results)
    lines = ["| epoch | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for epoch in range(epochs):
        cells = [f"{np.mean([r['pseudo_dice'][epoch] for r in results[a]]):.3f}" for a in arms]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    finals = []
    for arm in arms:
        dice = [r["final_dice"] for r in results[arm]]
        finals.append(f"**{np.mean(dice):.3f}** ({', '.join(f'{d:.3f}' for d in dice)})")
    lines.append("| final validation Dice (per seed) | " + " | ".join(finals) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-finetune"))
    parser.add_argument("--source-cases", type=int, default=60)
    parser.add_argument("--train-cases", type=int, default=20)
    parser.add_argument("--val-cases", type=int, default=20)
    parser.add_argument("--source-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS))
    args = parser.parse_args()
    if not (RAW / "dataset.json").is_file():
        print(f"skipped: {RAW} not found")
        return 0
    started = time.perf_counter()
    checkpoint, target = prepare(args.out, args)
    results = {arm: [train_arm(target, args.out, arm, seed, checkpoint, args) for seed in args.seeds]
               for arm in args.arms}
    record = {"arguments": vars(args) | {"out": str(args.out)}, "results": results}
    (args.out / f"finetune_{args.epochs}x{args.iters}.json").write_text(json.dumps(record, indent=1))
    print("\n".join(table(results, args.epochs)))
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
