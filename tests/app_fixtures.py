"""A hand-made WORK for the app's tests, written in milliseconds: raw dataset, plans, a random
fold-0 model, validation predictions with known Dice, their summary.json and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.data.image_io import write_image, write_seg
from nnlite.evaluation.metrics import evaluate_folder, reference_labels, write_summary
from nnlite.training.progress import append_metrics

SHAPE = (12, 20, 16)  # (Z, Y, X)
SPACING_AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # NIfTI (x, y, z) → spacing (z, y, x) = (2, 1, 1)
CHANNELS = ("T1", "T2")
# case → how its prediction relates to its reference blob (the worst is `case_c`, Dice 0)
CASES = ("case_a", "case_b", "case_c")
EXPECTED_DICE = {"case_a": 1.0, "case_b": 2 * 4 / (8 + 8), "case_c": 0.0}
BLOB = (slice(4, 8), slice(6, 10), slice(5, 9))  # reference lesion of every case: 4×4×4 voxels
BLOB_VOXELS = 64
# the quality score of each case's validation (an uncertainty score, higher = less trustworthy):
# ordered by it the cases go case_a, case_c, case_b — not their Dice order (case_c, case_b, case_a)
SCORES = {"case_a": 0.6, "case_b": 0.05, "case_c": 0.3}
UNSURE = (slice(None), slice(0, 10), slice(None))  # where every scored case's uncertainty map is 1 (else 0)


def case_image(seed: int) -> np.ndarray:
    """(C, Z, Y, X) noise with a bright blob where the lesion is."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 10, (len(CHANNELS), *SHAPE)).astype(np.float32)
    data[(slice(None), *BLOB)] += 200
    return data


def reference() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[BLOB] = 1
    return seg


def prediction(case: str) -> np.ndarray:
    """case_a: the reference; case_b: half of the blob (shifted by half along z); case_c: a blob
    elsewhere."""
    seg = np.zeros(SHAPE, dtype=np.int16)
    if case == "case_a":
        seg[BLOB] = 1
    elif case == "case_b":
        seg[6:10, 6:10, 5:9] = 1
    else:
        seg[1:3, 14:18, 10:14] = 1
    return seg


def write_raw(raw: Path) -> Path:
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for seed, case in enumerate(CASES):
        for channel, image in enumerate(case_image(seed)):
            write_image(raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz", image, SPACING_AFFINE)
        write_seg(raw / "labelsTr" / f"{case}.nii.gz", reference(), SPACING_AFFINE)
    dataset = {"channel_names": dict(enumerate(CHANNELS)), "labels": {"background": 0, "lesion": 1},
               "numTraining": len(CASES), "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset))
    return raw


def handmade_work(root: Path, scored: bool = False) -> Path:
    """root/raw and root/work: fold 0 of CONFIG trained (random weights) and validated on every case;
    `scored`: the validation also scored each case's uncertainty (SCORES in summary.json, and
    `validation/uncertainty/<case>_uncertainty.nii.gz`: 1 in UNSURE, else 0)."""
    raw = write_raw(root / "raw")
    work = root / "work"
    plans = tiny_plans(channels=len(CHANNELS), labels=1, raw_path=str(raw.resolve()), spacing=(2.0, 1.0, 1.0))
    save_random_model(work, plans, folds=(0,))
    fold = work / "results" / CONFIG / "fold_0"
    validation = fold / "validation"
    validation.mkdir(parents=True)
    for case in CASES:
        write_seg(validation / f"{case}.nii.gz", prediction(case), SPACING_AFFINE)
    summary = evaluate_folder(validation, reference_labels(plans), plans.scored, plans.ignore_label)
    if scored:
        add_uncertainty(validation, summary)
    write_summary(summary, validation / "summary.json")
    for epoch in range(3):
        append_metrics(fold, {"epoch": epoch, "train_loss": 1.0 - 0.2 * epoch, "val_loss": 1.1 - 0.2 * epoch,
                              "pseudo_dice": [0.1 * epoch], "mean_pseudo_dice": 0.1 * epoch,
                              "ema_pseudo_dice": 0.05 * epoch, "lr": 0.01 * (1 - epoch / 3),
                              "epoch_time": 2.0})
    return work


def add_uncertainty(validation: Path, summary: dict) -> None:
    """Each case's score into summary.json (as the final validation writes it) and its map."""
    (validation / "uncertainty").mkdir(exist_ok=True)
    for entry in summary["per_case"]:
        entry["uncertainty"] = {"score": SCORES[entry["case"]], "boundary_entropy": 0.5}
        unsure = np.zeros(SHAPE, np.float32)
        unsure[UNSURE] = 1.0
        write_image(validation / "uncertainty" / f"{entry['case']}_uncertainty.nii.gz", unsure, SPACING_AFFINE)


def inputs_folder(root: Path, cases: int = 1) -> Path:
    """A `--inputs` folder of raw-layout cases `new_<k>_<CCCC>.nii.gz`."""
    folder = root / "inputs"
    folder.mkdir(parents=True)
    for k in range(cases):
        for channel, image in enumerate(case_image(10 + k)):
            write_image(folder / f"new_{k}_{channel:04d}.nii.gz", image, SPACING_AFFINE)
    return folder


TRAINED_PATCH = (8, 32, 32)  # divisible by the plan's total stride (4, 16, 16)
TRAINED_WIDTH_DIVISOR = 4  # stage widths 32, 64, … become 8, 16, … (as the demo's)


def trained_work(root: Path) -> Path:
    """A WORK made by `nnlite.train` itself: 4 demo cases, 2 folds, a small patch and narrow
    network, fold 0 trained for one iteration and validated on its 2 cases."""
    from dataclasses import replace

    from nnlite.data.demo_dataset import generate_demo_dataset
    from nnlite.plans import load_plans, save_plans
    from nnlite.preprocessing.runner import run_preprocessing
    from nnlite.train import main as train_main
    from work_fixtures import plan_small

    raw = generate_demo_dataset(root / "raw", n_cases=4, seed=0)
    work = root / "work"
    plans = plan_small(raw, work, folds=2)
    config = plans.configurations[CONFIG]
    widths = tuple(max(1, f // TRAINED_WIDTH_DIVISOR) for f in config.network.features_per_stage)
    config = replace(config, patch_size=TRAINED_PATCH,
                     network=replace(config.network, features_per_stage=widths))
    save_plans(replace(load_plans(work / "plans.json"), configurations={CONFIG: config}), work / "plans.json")
    run_preprocessing(work, workers=1)
    assert train_main([str(work), "--device", "cpu", "--workers", "0", "--train-config", "debug",
                       "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--fold", "0"]) == 0
    return work
