"""Choosing the best configuration or pair by cross-validated Dice (nnlite.best, nnlite.evaluation.selection)."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference_fixtures import tiny_plans
from nnlite.common.layout import POSTPROCESSED_DIR, POSTPROCESSING_FILE
from nnlite.best import main as best_main
from nnlite.common.cli import run
from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.planning.splits import make_splits
from nnlite.data.image_io import write_seg
from nnlite.evaluation.selection import predict_command, rank
from nnlite.inference.outputs import seg_from_probabilities
from nnlite.inference.saved_probabilities import write_probabilities
from nnlite.inference.models import load_best
from nnlite.plans import save_plans

SHAPE = (6, 10, 10)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
CASES = [f"case_{i}" for i in range(6)]


def reference(case: str) -> np.ndarray:
    """Two boxes: label 1 in the left half, label 2 in the right half."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[1:5, 2:8, 1:4] = 1
    seg[1:5, 2:8, 6:9] = 2
    return seg


def probabilities(ref: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Confident and right where `good`; elsewhere foreground is narrowly called background."""
    probs = np.full((3, *SHAPE), 0.05, np.float32)
    for label in range(3):
        probs[label][ref == label] = 0.9
    miss = ~good & (ref > 0)
    probs[:, miss] = 0.0
    probs[0][miss] = 0.55
    for label in (1, 2):
        probs[label][miss & (ref == label)] = 0.45
    return probs.astype(np.float16)


def left_half() -> np.ndarray:
    good = np.zeros(SHAPE, bool)
    good[..., :5] = True
    return good


def write_config(work: Path, config: str, good: np.ndarray, mirroring: bool = True) -> None:
    """Validation folders of every fold (+ config.json) whose predictions are right where `good`."""
    splits = json.loads((work / "splits.json").read_text())
    for fold, split in enumerate(splits):
        folder = work / "results" / config / f"fold_{fold}"
        write_json_atomic(folder / "config.json", {"validation": {"step": 0.5, "mirroring": mirroring}})
        for case in split["val"]:
            probs = probabilities(reference(case), good)
            write_seg(folder / "validation" / f"{case}.nii.gz", seg_from_probabilities(probs), AFFINE)
            write_probabilities(folder / "validation" / f"{case}.npz", probs)


@pytest.fixture
def work(tmp_path) -> Path:
    raw = tmp_path / "raw"
    for case in CASES:
        write_seg(raw / "labelsTr" / f"{case}.nii.gz", reference(case), AFFINE)
    work = tmp_path / "work"
    plans = tiny_plans(labels=2, raw_path=str(raw))
    full = plans.configurations["3d_fullres"]
    configs = {"2d": full, "3d_fullres": full, "3d_lowres": full}  # names are all that matters here
    save_plans(replace(plans, configurations=configs), work / "plans.json")
    write_json_atomic(work / "splits.json", make_splits(CASES, n_folds=3))
    return work


def test_an_ensemble_that_recovers_both_halves_wins(work):
    write_config(work, "2d", left_half(), mirroring=False)
    write_config(work, "3d_fullres", ~left_half(), mirroring=False)
    assert run(best_main, [str(work)]) == 0
    best = load_best(work)
    names = [c["name"] for c in best["candidates"]]
    assert names[0] == "2d+3d_fullres" and set(names) == {"2d", "3d_fullres", "2d+3d_fullres"}
    assert best["winner"]["foreground_dice"] == pytest.approx(1.0)
    assert best["candidates"][1]["foreground_dice"] < 1.0
    folder = work / "results" / "ensembles" / "2d+3d_fullres"
    assert json.loads((folder / POSTPROCESSING_FILE).read_text())["steps"] == best["postprocessing"]["steps"]
    assert len(list((folder / POSTPROCESSED_DIR).glob("*.nii.gz"))) == len(CASES)
    words = shlex.split(best["predict_command"])
    assert words[:3] == ["python", "-m", "nnlite.predict"] and "--best" in words
    assert "--no-mirroring" in words  # the folds were validated without mirroring


def test_ties_go_to_the_simpler_candidate(work):
    for config in ("3d_lowres", "3d_fullres", "2d"):
        write_config(work, config, left_half())
    assert run(best_main, [str(work)]) == 0
    best = load_best(work)
    assert best["winner"]["name"] == "2d"  # equal Dice everywhere: single 2d is simplest
    assert [c["name"] for c in best["candidates"]][:3] == ["2d", "3d_fullres", "3d_lowres"]
    assert json.loads((work / "results" / "2d" / POSTPROCESSING_FILE).read_text())["steps"] == \
        best["postprocessing"]["steps"]
    assert "--no-mirroring" not in best["predict_command"]


def test_only_the_requested_configurations_and_no_ensembles(work):
    write_config(work, "2d", left_half())
    write_config(work, "3d_fullres", ~left_half())
    assert run(best_main, [str(work), "--configs", "3d_fullres", "--no-ensembles"]) == 0
    assert [c["name"] for c in load_best(work)["candidates"]] == ["3d_fullres"]


def test_rank_puts_undefined_dice_last_and_keeps_order_on_ties():
    candidates = [{"name": n, "_score": s} for n, s in
                  [("a", 0.5), ("b", -np.inf), ("c", 0.7), ("d", 0.5)]]
    assert [c["name"] for c in rank(candidates)] == ["c", "a", "d", "b"]


def test_user_errors_exit_2(work, capsys):
    assert run(best_main, [str(work)]) == 2  # nothing trained
    assert "error:" in capsys.readouterr().err
    assert run(best_main, [str(work), "--configs", "3d_cascade_fullres"]) == 2
    with pytest.raises(UserError, match="best.json"):
        load_best(work)
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / "best.json").write_text('{"winner": {}}')
    with pytest.raises(UserError, match="not a best-configuration file"):
        load_best(work)


def test_predict_command_carries_the_validation_settings(tmp_path):
    command = predict_command(tmp_path, {"step": 0.25, "mirroring": True})
    assert shlex.split(command)[-3:] == ["--best", "--step", "0.25"]
