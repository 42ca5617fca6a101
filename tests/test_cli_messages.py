"""What a new user reads: single-process runs name no rank and count workers in good English, a
mistyped `--set` key gets a suggestion, a raw dataset given as WORK is named as such, a case's
missing channel names the case once."""

from __future__ import annotations

import numpy as np
import pytest

from command_line import assert_one_line_error, run_command
from inference_fixtures import save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.data.image_io import write_image
from nnlite.train import main as train_main
from nnlite.training.config import load_train_config
from work_fixtures import small_work

SCHEDULE = ["--device", "cpu", "--seed", "0", "--workers", "0", "--train-config", "debug",
            "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1"]


def test_a_single_process_names_no_rank_and_one_worker_is_singular(tmp_path, caplog):
    caplog.set_level("INFO", logger="nnlite")
    work = small_work(tmp_path, n_cases=2)  # preprocessed with workers=1
    assert "(1 worker)" in caplog.text and "workers)" not in caplog.text
    caplog.clear()
    assert train_main([str(work), *SCHEDULE]) == 0
    assert "validating 1 case" in caplog.text
    assert "rank 0" not in caplog.text


@pytest.mark.parametrize(("key", "suggestion"), [
    ("training.inital_lr", "training.initial_lr"), ("initial_lr", "training.initial_lr"),
    ("validation.enable", "validation.enabled"), ("trainig.epochs", "training.epochs"),
    ("epochs", "training.epochs"), ("every", "checkpoint.every")])  # too short for difflib alone
def test_a_mistyped_set_key_gets_the_closest_setting(key, suggestion):
    with pytest.raises(UserError) as info:
        load_train_config("default", [f"{key}=1"])
    assert info.value.where == f"--set {key}"
    assert info.value.problem.endswith(f"(did you mean '{suggestion}'?)")


def test_a_far_off_set_key_gets_no_suggestion():
    with pytest.raises(UserError) as info:
        load_train_config("default", ["zzz=1"])
    assert info.value.problem == "unknown setting 'zzz'"


def test_an_unknown_yaml_key_gets_a_suggestion(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  inital_lr: 0.01\n")
    with pytest.raises(UserError, match=r"unknown key 'inital_lr'.*did you mean 'initial_lr'"):
        load_train_config(str(path), [])


@pytest.mark.parametrize("command", ["train", "preprocess", "postprocess"])
def test_a_raw_dataset_given_as_work_says_to_plan_it_first(tmp_path, command):
    raw = generate_demo_dataset(tmp_path / "raw", n_cases=1, seed=0)
    result = run_command(command, raw)
    assert_one_line_error(result, f"error: {raw}: this is a raw dataset",
                          f"run python -m nnlite.plan {raw} WORK first")


def test_a_missing_channel_names_the_case_once(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(channels=2, labels=2), folds=(0,))
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.zeros((8, 16, 16), np.float32), np.eye(4))
    result = run_command("predict", work, tmp_path / "in", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 2, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: a: has channel files ['0000'], the model needs ['0000', '0001']"), last
