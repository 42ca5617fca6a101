"""Settings are typed and range-checked before anything is written; a failed run leaves nothing.

`--set KEY=VALUE` and YAML values become the field's declared type (int, float, bool, a choice)
and are range-checked; a bad one is one `error:` line naming the key, the value and what is
expected. `train` makes the fold folder only for a valid run and removes it when the run fails
before its first checkpoint; `predict` names a fold that has no finished training.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nnlite.common.errors import UserError
from nnlite.inference.options import PredictOptions
from nnlite.inference.predictor import predict_folder
from nnlite.train import main as train_main
from nnlite.plans import load_plans
from nnlite.training import run_setup, trainer
from nnlite.training.config import load_train_config
from tests.command_line import assert_one_line_error, run_command
from tests.work_fixtures import CONFIG, small_work


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    return small_work(tmp_path_factory.mktemp("settings"))


@pytest.fixture
def work(preprocessed, tmp_path) -> Path:
    return Path(shutil.copytree(preprocessed, tmp_path / "work"))


@pytest.mark.parametrize("override, expected", [
    ("training.initial_lr=abc", "expected a number, got 'abc'"),
    ("training.initial_lr=-0.1", "expected a value > 0, got -0.1"),
    ("training.initial_lr=.nan", "expected a value > 0, got nan"),
    ("training.epochs=2.5", "expected an integer, got 2.5"),
    ("training.epochs=true", "expected an integer, got True"),
    ("training.iters_per_epoch=0", "expected a value ≥ 1, got 0"),
    ("training.momentum=1", "expected a value in [0, 1), got 1.0"),
    ("training.weight_decay=-1", "expected a value ≥ 0, got -1.0"),
    ("training.grad_clip=0", "expected a value > 0, got 0.0"),
    ("training.nesterov=3", "expected true or false, got 3"),
    ("training.lr_step=sometimes", "expected one of epoch, iteration, got 'sometimes'"),
    ("training.amp=fp8", "expected one of auto, bf16, fp16, off, got 'fp8'"),
    ("data.workers=-1", "expected a value ≥ 0, got -1"),
    ("data.augment=maybe", "expected true or false, got 'maybe'"),
    ("validation.step=1.5", "expected a value in (0, 1], got 1.5"),
    ("checkpoint.every=0", "expected a value ≥ 1, got 0"),
    ("seed=-3", "expected a value ≥ 0, got -3"),
    ("fold=first", "expected a fold number of splits.json or 'all', got 'first'"),
])
def test_a_bad_value_names_the_key_the_value_and_what_is_expected(override, expected):
    with pytest.raises(UserError) as error:
        load_train_config("default", [override])
    assert error.value.where == f"--set {override}"
    assert error.value.problem == expected


@pytest.mark.parametrize("override, key, value", [
    ("training.initial_lr=1", "initial_lr", 1.0), ("training.epochs=3.0", "epochs", 3),
    ("training.batch_size=null", "batch_size", None), ("training.nesterov=false", "nesterov", False),
])
def test_values_become_the_declared_type(override, key, value):
    got = getattr(load_train_config("default", [override]).training, key)
    assert got == value and type(got) is type(value)


def test_a_bad_yaml_value_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  initial_lr: fast\n")
    with pytest.raises(UserError) as error:
        load_train_config(path)
    assert error.value.where == str(path)
    assert error.value.problem == "training.initial_lr: expected a number, got 'fast'"


def test_a_bad_set_value_is_one_line_and_writes_nothing(work):
    result = run_command("train", work, "--set", "training.initial_lr=abc", "--device", "cpu")
    assert_one_line_error(result, "--set training.initial_lr=abc", "expected a number")
    assert not (work / "results").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_fold_folder(work, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("failed while building the network")

    monkeypatch.setattr(trainer, "build_state", broken)
    with pytest.raises(RuntimeError):
        train_main([str(work), "--device", "cpu", "--train-config", "debug", "--workers", "0"])
    assert not (work / "results" / CONFIG / "fold_0").exists()


def test_a_failed_resume_keeps_the_results_it_resumed_from(work, monkeypatch):
    folder = work / "results" / CONFIG / "fold_0"
    folder.mkdir(parents=True)
    (folder / "checkpoint_latest.pt").write_bytes(b"an earlier run's checkpoint")
    monkeypatch.setattr(run_setup.checkpoints, "load_resumable", lambda folder: None)
    monkeypatch.setattr(trainer, "build_state", lambda *a, **k: (_ for _ in ()).throw(RuntimeError()))
    with pytest.raises(RuntimeError):
        train_main([str(work), "--device", "cpu", "--train-config", "debug", "--resume"])
    assert (folder / "checkpoint_latest.pt").is_file()


def test_predict_names_a_fold_without_finished_training(work, tmp_path):
    folder = work / "results" / CONFIG / "fold_0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    raw_images = Path(load_plans(work / "plans.json").extra["raw_path"]) / "imagesTr"
    with pytest.raises(UserError) as error:
        predict_folder(work, raw_images, tmp_path / "out", PredictOptions(config=CONFIG, device="cpu"))
    assert error.value.problem.startswith(f"fold 0 of {CONFIG} has no finished training")


def test_on_and_off_are_choices_not_booleans_and_the_timeout_is_positive():
    """YAML 1.1 would read `off` as False; nnlite's settings read only true/false as booleans."""
    config = load_train_config("default", ["training.compile=off", "training.amp=off",
                                           "distributed.timeout_minutes=5"])
    assert (config.training.compile, config.training.amp, config.distributed.timeout_minutes) == ("off", "off", 5.0)
    assert load_train_config("default", ["training.compile=on"]).training.compile == "on"
    assert load_train_config("default", ["validation.enabled=false"]).validation.enabled is False
    with pytest.raises(UserError, match="training.compile=yes"):
        load_train_config("default", ["training.compile=yes"])
    with pytest.raises(UserError, match="timeout_minutes"):
        load_train_config("default", ["distributed.timeout_minutes=0"])
