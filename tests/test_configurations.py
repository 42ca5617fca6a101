"""End to end on demo data: 2d, 3d_fullres, 3d_lowres and the cascade train on every fold, predict,
and `nnlite best` picks a winner whose `predict` command reproduces its cross-validation exactly.

Slow (a few minutes on 2 busy cores): 5 demo cases, planned at a 0.5 GB budget (where the demo
images hold more than 4 fullres patches, so 3d_lowres and the cascade are planned), networks
narrowed 8×, and a one-iteration schedule per fold. The Dice values are meaningless; the plumbing
is what is tested.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nnlite.best import main as best_main
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.data.image_io import read_image
from nnlite.inference.options import PredictOptions
from nnlite.inference.models import load_best
from nnlite.inference.predictor import predict_models
from nnlite.planning.work_folder import plan_dataset
from nnlite.plans import load_plans, save_plans
from nnlite.predict import main as predict_main
from nnlite.preprocessing.cascade import previous_stage_dir
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.train import main as train_main

pytestmark = pytest.mark.slow

N_CASES = 5  # one validation case per fold
GPU_MEMORY_GB = 0.5  # small enough that 3d_lowres (and so the cascade) is planned for the demo
WIDTH_DIVISOR = 8  # stage widths 32, 64, … → 4, 8, …
CONFIGS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")  # lowres before the cascade
SCHEDULE = ["--train-config", "debug", "--device", "cpu", "--seed", "0", "--epochs", "1",
            "--iters-per-epoch", "1", "--val-iters", "1", "--batch-size", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(raw, work): every configuration trained with `--fold cv`, then `nnlite best`."""
    root = tmp_path_factory.mktemp("configurations")
    raw = generate_demo_dataset(root / "raw", n_cases=N_CASES)
    work = root / "work"
    plan_dataset(raw, work, GPU_MEMORY_GB, None, workers=1)
    plans = load_plans(work / "plans.json")
    narrow = {name: replace(config, network=replace(config.network, features_per_stage=tuple(
        max(2, f // WIDTH_DIVISOR) for f in config.network.features_per_stage)))
        for name, config in plans.configurations.items()}
    save_plans(replace(plans, configurations=narrow), work / "plans.json")
    run_preprocessing(work, workers=1)
    for config in CONFIGS:
        assert train_main([str(work), "--config", config, "--fold", "cv", *SCHEDULE]) == 0
    assert best_main([str(work)]) == 0
    return raw, work


def splits(work: Path) -> list[dict]:
    return json.loads((work / "splits.json").read_text())


def copy_images(raw: Path, cases: list[str], target: Path) -> Path:
    target.mkdir(parents=True)
    for case in cases:
        for path in sorted((raw / "imagesTr").glob(f"{case}_*.nii.gz")):
            shutil.copy(path, target / path.name)
    return target


def test_every_configuration_trains_on_every_fold(trained):
    _, work = trained
    plans = load_plans(work / "plans.json")
    assert set(CONFIGS) <= set(plans.configurations)
    for config in CONFIGS:
        for fold, split in enumerate(splits(work)):
            folder = work / "results" / config / f"fold_{fold}"
            assert (folder / "checkpoint_final.pt").is_file()
            assert all((folder / "validation" / f"{case}.npz").is_file() for case in split["val"])
        summary = json.loads((work / "results" / config / "crossval" / "summary.json").read_text())
        assert len(summary["per_case"]) == N_CASES
    prev = previous_stage_dir(work, plans, "3d_cascade_fullres")
    for fold, split in enumerate(splits(work)):
        for case in split["val"]:  # the cascade's input for a case: the lowres fold that validated it
            assert json.loads((prev / f"{case}_prev.json").read_text())["fold"] == fold


def test_every_configuration_predicts_what_its_validation_predicted(trained, tmp_path):
    """`predict --folds k` on a case that fold k validated reproduces fold k's validation label map
    (another path to the same result: raw reading, preprocessing, the cascade's lowres stage, export),
    in the input's geometry."""
    raw, work = trained
    for fold in (0, 1):
        case = splits(work)[fold]["val"][0]
        images = copy_images(raw, [case], tmp_path / f"in_{fold}")
        for config in CONFIGS:
            out = tmp_path / f"{config}_{fold}"
            assert predict_main([str(work), str(images), str(out), "--config", config, "--no-mirroring",
                                 "--folds", str(fold), "--device", "cpu"]) == 0
            source, seg = read_image(images / f"{case}_0000.nii.gz"), read_image(out / f"{case}.nii.gz")
            assert seg.array.shape == source.array.shape
            np.testing.assert_allclose(seg.affine, source.affine)
            validated = read_image(work / "results" / config / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
            np.testing.assert_array_equal(seg.array, validated.array, err_msg=f"{config} {case}")


def test_the_best_predict_command_reproduces_the_winners_cross_validation(trained, tmp_path):
    raw, work = trained
    best = load_best(work)
    dice = [c["foreground_dice"] for c in best["candidates"]]
    assert best["winner"]["foreground_dice"] == max(d for d in dice if d is not None)
    assert len(best["candidates"]) == len(CONFIGS) + len(CONFIGS) * (len(CONFIGS) - 1) // 2
    print("\ncross-validated foreground Dice:",
          ", ".join(f"{c['name']} {c['foreground_dice']:.4f}" for c in best["candidates"]))
    winner = best["winner"]["configurations"]
    cv = (work / "results" / winner[0]) if len(winner) == 1 else \
        (work / "results" / "ensembles" / best["winner"]["name"])
    words = shlex.split(best["predict_command"])
    assert words[:3] == ["python", "-m", "nnlite.predict"]
    for fold, split in enumerate(splits(work)):
        images = copy_images(raw, split["val"], tmp_path / f"in_{fold}")
        out = tmp_path / f"out_{fold}"
        argv = [{"INPUT_DIR": str(images), "OUTPUT_DIR": str(out)}.get(w, w) for w in words[3:]]
        assert predict_main([*argv, "--folds", str(fold)]) == 0  # the model that validated these cases
        for case in split["val"]:
            expected = read_image(cv / "postprocessed" / f"{case}.nii.gz").array
            np.testing.assert_array_equal(read_image(out / f"{case}.nii.gz").array, expected)


def test_an_ensemble_with_the_cascade_reproduces_its_cross_validation(trained, tmp_path):
    """Whatever wins: averaging probabilities from raw images gives the CV ensemble's label maps."""
    raw, work = trained
    pair = ["3d_lowres", "3d_cascade_fullres"]
    split = splits(work)[2]
    images = copy_images(raw, split["val"], tmp_path / "in")
    report = predict_models(work, images, tmp_path / "out", pair,
                            PredictOptions(folds=("2",), mirror=False, device="cpu"), postprocessing=[])
    assert not report.failed
    for case in split["val"]:
        expected = read_image(work / "results" / "ensembles" / "+".join(pair) / f"{case}.nii.gz").array
        np.testing.assert_array_equal(read_image(tmp_path / "out" / f"{case}.nii.gz").array, expected)
