"""Experiment tracking (training/tracking.py): each backend gets what metrics.jsonl logs.

TensorBoard is real (its event files read back with tensorboard's EventAccumulator); MLflow and
W&B are fakes put in sys.modules that record the documented calls. The end-to-end check on a real
run is tests/test_demo.py::test_tensorboard_event_files_hold_the_metrics_jsonl_values.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.training.config import load_train_config
from nnlite.training.tracking import (TENSORBOARD_DIR, TRACKING_FILE, check_installed, epoch_scalars,
                                      open_trackers, summary_scalars)

PLAN = {"dataset_name": "Demo", "configurations": {"3d_fullres": {"patch_size": [8, 32, 32]}}}
SETTINGS = {"seed": 0, "training": {"epochs": 3, "initial_lr": 0.01}, "logging": {"backends": ["mlflow"]}}
SUMMARY = {"labels": [1, 2], "foreground_mean": {"dice": 0.75, "iou": math.nan},
           "mean": {"1": {"dice": 0.5}, "2": {"dice": 1.0}}, "per_case": [{"case": "a", "metrics": {}}],
           "pseudo_dice": {"per_class": [0.4, None], "mean": 0.4, "ema": 0.3}}


def records(n: int = 3, first: int = 0, scale: float = 1.0) -> list[dict]:
    """metrics.jsonl-like records; epoch 1 has an absent class (NaN) and no val loss."""
    out = []
    for epoch in range(first, first + n):
        dice = [0.1 * epoch * scale, math.nan if epoch == 1 else 0.2 * scale]
        out.append({"epoch": epoch, "train_loss": scale / (epoch + 1), "val_loss": math.nan if epoch == 1 else 0.5,
                    "pseudo_dice": dice, "mean_pseudo_dice": 0.15, "ema_pseudo_dice": 0.1 + epoch / 100,
                    "lr": 0.01 * (1 - epoch / 10) ** 0.9, "epoch_time": 1.5 + epoch})
    return out


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(value: float) -> float:
    return float(np.float32(value))  # what an event file stores


# --- what is logged -------------------------------------------------------------------------------

def test_epoch_scalars_are_the_records_numbers_with_pseudo_dice_per_class():
    record = records()[1]
    assert epoch_scalars(record) == {"train_loss": 0.5, "pseudo_dice/1": 0.1, "mean_pseudo_dice": 0.15,
                                     "ema_pseudo_dice": 0.11, "lr": record["lr"], "epoch_time": 2.5}
    assert epoch_scalars({**record, "class_loss": 0.7, "val_loss": None})["class_loss"] == 0.7


def test_summary_scalars_leave_out_per_case_rows_label_values_and_nan():
    assert summary_scalars(SUMMARY) == {
        "validation/foreground_mean/dice": 0.75, "validation/mean/1/dice": 0.5, "validation/mean/2/dice": 1.0,
        "validation/pseudo_dice/per_class/0": 0.4, "validation/pseudo_dice/mean": 0.4,
        "validation/pseudo_dice/ema": 0.3}


# --- TensorBoard ----------------------------------------------------------------------------------

def test_tensorboard_holds_each_epochs_values_at_its_step_and_the_summary_at_the_last(tmp_path):
    trackers = open_trackers(["tensorboard"], tmp_path, "demo 3d_fullres fold 0", PLAN, SETTINGS, 0)
    for record in records():
        trackers.log_epoch(record)
    trackers.log_summary(SUMMARY)
    trackers.close()
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR)
    for record in records():
        for tag, value in epoch_scalars(record).items():
            assert (record["epoch"], as_float32(value)) in scalars[tag]
    assert scalars["val_loss"] == [(0, 0.5), (2, 0.5)]  # epoch 1's NaN is not logged
    assert scalars["pseudo_dice/2"] == [(0, as_float32(0.2)), (2, as_float32(0.2))]
    assert scalars["validation/foreground_mean/dice"] == [(2, 0.75)]
    assert not (tmp_path / TRACKING_FILE).exists()  # nothing to continue: TensorBoard appends by step


def test_a_resumed_run_replaces_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    killed = open_trackers(["tensorboard"], tmp_path, "run", PLAN, SETTINGS, 0)
    for record in records(3):  # epochs 0-2 logged; the checkpoint holds epoch 0 only
        killed.log_epoch(record)
    killed.close()
    resumed = open_trackers(["tensorboard"], tmp_path, "run", PLAN, SETTINGS, 1)
    for record in records(2, first=1, scale=2.0):
        resumed.log_epoch(record)
    resumed.close()
    assert read_scalars(tmp_path / TENSORBOARD_DIR)["train_loss"] == [(0, 1.0), (1, 1.0), (2, as_float32(2 / 3))]


# --- MLflow and W&B (fakes recording the documented calls) -----------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for call, args, kwargs in self.calls if call == name]


def fake_mlflow(recorder: Recorder) -> types.ModuleType:
    module = types.ModuleType("mlflow")

    def start_run(run_id=None, run_name=None):
        recorder.calls.append(("start_run", (), {"run_id": run_id, "run_name": run_name}))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlflow-run-1"))

    module.start_run = start_run
    for name in ("log_metrics", "log_params", "log_dict", "end_run"):
        setattr(module, name, lambda *args, _name=name, **kwargs: recorder.calls.append((_name, args, kwargs)))
    return module


def fake_wandb(recorder: Recorder) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs):
        recorder.calls.append(("init", (), kwargs))
        run = types.SimpleNamespace(id=kwargs.get("id") or "wandb-run-1")
        run.config = types.SimpleNamespace(update=lambda *a, **k: recorder.calls.append(("config.update", a, k)))
        run.summary = types.SimpleNamespace(update=lambda *a, **k: recorder.calls.append(("summary.update", a, k)))
        run.log = lambda *a, **k: recorder.calls.append(("log", a, k))
        run.finish = lambda *a, **k: recorder.calls.append(("finish", a, k))
        return run

    module.init = init
    return module


def run_fold(tmp_path: Path, backends: list[str], first_epoch: int = 0) -> None:
    trackers = open_trackers(backends, tmp_path, "demo 3d_fullres fold 0", PLAN, SETTINGS, first_epoch)
    for record in records(3 - first_epoch, first=first_epoch):
        trackers.log_epoch(record)
    trackers.log_summary(SUMMARY)
    trackers.close()


def test_mlflow_gets_metrics_per_epoch_step_settings_as_parameters_and_plan_and_summary_as_files(
        tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(recorder))
    run_fold(tmp_path, ["mlflow"])
    assert recorder.named("start_run") == [((), {"run_id": None, "run_name": "demo 3d_fullres fold 0"})]
    assert recorder.named("log_params") == [(({"seed": 0, "training.epochs": 3, "training.initial_lr": 0.01,
                                               "logging.backends": ["mlflow"]},), {})]
    files = {args[1]: args[0] for args, _ in recorder.named("log_dict")}
    assert files == {"plans.json": PLAN, "config.json": SETTINGS, "validation/summary.json": SUMMARY}
    metrics = recorder.named("log_metrics")
    assert [(args[0], kwargs["step"]) for args, kwargs in metrics[:3]] == \
        [(epoch_scalars(r), r["epoch"]) for r in records()]
    assert metrics[3] == ((summary_scalars(SUMMARY),), {"step": 2})
    assert recorder.calls[-1][0] == "end_run"
    assert json.loads((tmp_path / TRACKING_FILE).read_text()) == {"mlflow": "mlflow-run-1"}

    recorder.calls.clear()  # resumed after epoch 1: the same run, no parameters again (they cannot change)
    run_fold(tmp_path, ["mlflow"], first_epoch=1)
    assert recorder.named("start_run") == [((), {"run_id": "mlflow-run-1", "run_name": None})]
    assert not recorder.named("log_params")
    assert [kwargs["step"] for _, kwargs in recorder.named("log_metrics")] == [1, 2, 2]


def test_wandb_gets_the_same_values_and_a_resumed_fold_continues_its_run(tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(recorder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_fold(tmp_path, ["wandb"])
    [(_, init)] = recorder.named("init")
    assert (init["project"], init["name"], init["id"], init["resume"], init["mode"]) == \
        ("nnlite", "demo 3d_fullres fold 0", None, None, "offline")
    assert recorder.named("config.update")[0][0] == ({"settings": SETTINGS, "plan": PLAN},)
    assert [(args[0], kwargs["step"]) for args, kwargs in recorder.named("log")] == \
        [(epoch_scalars(r), r["epoch"]) for r in records()]
    assert recorder.named("summary.update") == [((summary_scalars(SUMMARY),), {})]
    assert recorder.calls[-1][0] == "finish"
    recorder.calls.clear()
    run_fold(tmp_path, ["wandb"], first_epoch=2)
    [(_, init)] = recorder.named("init")
    assert (init["id"], init["resume"]) == ("wandb-run-1", "allow")


def test_every_backend_gets_the_same_epoch_values(tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(recorder))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(recorder))
    run_fold(tmp_path, ["tensorboard", "mlflow", "wandb"])
    mlflow = [args[0] for args, _ in recorder.named("log_metrics")][:3]
    wandb = [args[0] for args, _ in recorder.named("log")]
    assert mlflow == wandb == [epoch_scalars(r) for r in records()]
    board = read_scalars(tmp_path / TENSORBOARD_DIR)
    assert {tag: [step for step, _ in values] for tag, values in board.items()}["lr"] == [0, 1, 2]
    assert json.loads((tmp_path / TRACKING_FILE).read_text()) == {"mlflow": "mlflow-run-1", "wandb": "wandb-run-1"}


# --- errors ---------------------------------------------------------------------------------------

def test_a_named_backend_that_is_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError) as error:
        check_installed(["wandb"])
    assert str(error.value) == "logging.backends: 'wandb' is named but not installed (pip install \"nnlite[wandb]\")"
    check_installed([])  # none named: nothing imported


def test_a_backend_that_cannot_start_is_one_line_and_the_others_are_closed(tmp_path, monkeypatch):
    module = fake_mlflow(Recorder())
    module.start_run = lambda **_: (_ for _ in ()).throw(ConnectionError("tracking server unreachable"))
    monkeypatch.setitem(sys.modules, "mlflow", module)
    with pytest.raises(UserError, match="mlflow: could not start a run .ConnectionError: tracking server unreachable"):
        open_trackers(["tensorboard", "mlflow"], tmp_path, "run", PLAN, SETTINGS, 0)


def test_backends_are_settings_checked_by_name():
    assert load_train_config("default").logging.backends == ()
    assert load_train_config("default", ["logging.backends=[tensorboard, wandb]"]).logging.backends == \
        ("tensorboard", "wandb")
    with pytest.raises(UserError, match="expected one of tensorboard, mlflow, wandb, got 'tensorbord'"):
        load_train_config("default", ["logging.backends=[tensorbord]"])


def test_without_backends_nothing_is_written(tmp_path):
    trackers = open_trackers([], tmp_path, "run", PLAN, SETTINGS, 0)
    trackers.log_epoch(records()[0])
    trackers.log_summary(SUMMARY)
    trackers.close()
    assert list(tmp_path.iterdir()) == []
