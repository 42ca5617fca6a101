"""End-to-end training on (tiny) demo data: artifacts, exact resume after SIGKILL, resume rules.

All slow: they share a 5-case demo work directory (generate → plan → preprocess, once per session)
and each trains for a few iterations with a small patch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.data.image_io import read_image, write_seg
from nnlite.evaluation.metrics import read_label_map
from nnlite.plans import load_plans, save_plans
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.train import main as train_main
from nnlite.training import checkpoints
from nnlite.training.demo_run import DEMO_CONFIGURATION, plan_demo
from nnlite.training.schedule import poly_lr
from tests.work_fixtures import kill_in_second_epoch

pytestmark = pytest.mark.slow

TINY_PATCH = (8, 32, 32)  # divisible by the demo plan's total stride (4, 16, 16)
SCHEDULE = ["--device", "cpu", "--seed", "0", "--workers", "0", "--train-config", "debug",
            "--set", "validation.enabled=false"]


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory) -> Path:
    """A preprocessed 5-case demo work directory with a small patch (a fast stand-in plan)."""
    root = tmp_path_factory.mktemp("demo")
    return tiny_work_from(generate_demo_dataset(root / "raw", n_cases=5), root / "work")


def tiny_work_from(raw: Path, work: Path) -> Path:
    plans = plan_demo(raw, work)
    config = plans.configurations[DEMO_CONFIGURATION]
    save_plans(replace(plans, configurations={DEMO_CONFIGURATION: replace(config, patch_size=TINY_PATCH)}),
               work / "plans.json")
    run_preprocessing(work, [DEMO_CONFIGURATION], workers=1)
    return work


def copy_work(work: Path, target: Path) -> Path:
    shutil.copytree(work, target, ignore=shutil.ignore_patterns("results"))
    return target


def fold_dir(work: Path) -> Path:
    return work / "results" / DEMO_CONFIGURATION / "fold_0"


def final_weights(work: Path) -> dict:
    return torch.load(fold_dir(work) / checkpoints.FINAL, weights_only=True)["network"]


def test_seeded_run_writes_every_artifact(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path / "work")
    assert train_main([str(work), "--epochs", "3", "--iters-per-epoch", "4", *SCHEDULE[:-2],
                       "--set", "validation.mirroring=false"]) == 0
    folder = fold_dir(work)
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "config.json",
                 "log.txt", "metrics.jsonl", "progress.png", "validation/summary.json"):
        assert (folder / name).is_file(), name
    val_cases = json.loads((work / "splits.json").read_text())[0]["val"]
    for case in val_cases:
        assert (folder / "validation" / f"{case}.nii.gz").is_file()
        assert (folder / "validation" / f"{case}.npz").is_file()
    for path in folder.glob("checkpoint_*.pt"):
        checkpoint = torch.load(path, weights_only=True)
        assert set(checkpoints.REQUIRED_KEYS) <= set(checkpoint) and "grad_scaler" not in checkpoint
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert len(summary["per_case"]) == len(val_cases) and "pseudo_dice" in summary
    assert "epoch 3/3" in (folder / "log.txt").read_text()
    assert not list(folder.rglob("*.tmp"))


def test_final_validation_mirrors_every_axis_when_configured(tiny_work, tmp_path, mirror_axes_seen):
    work = copy_work(tiny_work, tmp_path / "work")
    assert train_main([str(work), "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1",
                       *SCHEDULE[:-2], "--set", "validation.mirroring=true"]) == 0
    assert mirror_axes_seen and set(mirror_axes_seen) == {(0, 1, 2)}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_work, tmp_path):
    # The event: checkpoint_latest appears (written atomically) when the first epoch ends, so the
    # run is then inside the second one; epochs of 40 iterations (about 2 s here) leave a wide
    # window to kill it there, and the checkpoint's epoch below proves where it was killed.
    args = ["--epochs", "3", "--iters-per-epoch", "40", *SCHEDULE]
    straight = copy_work(tiny_work, tmp_path / "straight")
    assert train_main([str(straight), *args]) == 0
    killed = copy_work(tiny_work, tmp_path / "killed")
    process = subprocess.Popen([sys.executable, "-m", "nnlite.train", str(killed), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_in_second_epoch(process, fold_dir(killed), lambda: os.kill(process.pid, signal.SIGKILL))
    with pytest.raises(UserError, match="--resume"):
        train_main([str(killed), *args])  # results exist: refuse without --resume/--overwrite
    assert train_main([str(killed), *args, "--resume"]) == 0
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = (fold_dir(killed) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in records] == [0, 1, 2]


IGNORE = 2  # the demo's labels are background 0 and tumor 1


def test_sparse_annotations_with_an_ignore_label(tmp_path):
    """Every other slice unannotated (dataset.json "ignore": 2): two network outputs, no class 2
    anywhere, and unannotated voxels count in no metric."""
    raw = generate_demo_dataset(tmp_path / "raw", n_cases=5)
    meta = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**meta, "labels": {**meta["labels"], "ignore": IGNORE}}))
    for path in (raw / "labelsTr").glob("*.nii.gz"):
        image = read_image(path)
        seg = image.array.astype(np.uint8)
        seg[1::2] = IGNORE
        write_seg(path, seg, image.affine)
    work = tiny_work_from(raw, tmp_path / "work")
    assert train_main([str(work), "--epochs", "2", "--iters-per-epoch", "4", *SCHEDULE[:-2],
                       "--set", "validation.mirroring=false"]) == 0
    weights = final_weights(work)
    heads = [key for key in weights if key.endswith(".weight") and weights[key].shape[0] == 2]
    assert heads and not any(w.shape[0] == 3 for w in weights.values() if w.ndim > 2)
    records = [json.loads(line) for line in (fold_dir(work) / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["pseudo_dice"]) == 1 and np.isfinite(r["train_loss"]) for r in records)
    summary = json.loads((fold_dir(work) / "validation" / "summary.json").read_text())
    assert summary["labels"] == [1]
    for case in summary["per_case"]:
        pred = read_label_map(fold_dir(work) / "validation" / f"{case['case']}.nii.gz")[0]
        ref = read_label_map(raw / "labelsTr" / f"{case['case']}.nii.gz")[0]
        annotated = ref != IGNORE
        assert set(np.unique(pred)) <= {0, 1}
        counts = case["metrics"]["1"]
        assert counts["fp"] == np.count_nonzero((pred == 1) & (ref == 0))
        assert counts["tp"] + counts["fn"] == np.count_nonzero(ref == 1)
        assert counts["tp"] + counts["fp"] == np.count_nonzero((pred == 1) & annotated)


def test_resume_rules(tiny_work, tmp_path, caplog):
    work = copy_work(tiny_work, tmp_path / "work")
    args = ["--iters-per-epoch", "2", *SCHEDULE]
    assert train_main([str(work), "--epochs", "1", *args]) == 0
    caplog.set_level("INFO", logger="nnlite")
    assert train_main([str(work), "--epochs", "1", *args, "--resume"]) == 0
    assert "already finished" in caplog.text
    with pytest.raises(UserError, match="training.initial_lr"):
        train_main([str(work), "--epochs", "2", *args, "--resume", "--set", "training.initial_lr=0.1"])
    plans = load_plans(work / "plans.json")
    config = plans.configurations[DEMO_CONFIGURATION]
    save_plans(replace(plans, configurations={DEMO_CONFIGURATION: replace(config, batch_size=3)}),
               work / "plans.json")
    with pytest.raises(UserError, match="plans.configurations.3d_fullres"):
        train_main([str(work), "--epochs", "2", *args, "--resume"])
    save_plans(plans, work / "plans.json")
    assert train_main([str(work), "--epochs", "2", *args, "--resume"]) == 0
    assert "horizon changed from 1 to 2 epochs" in caplog.text
    assert torch.load(fold_dir(work) / checkpoints.FINAL, weights_only=True)["epoch"] == 2
    assert train_main([str(work), "--epochs", "1", *args, "--overwrite"]) == 0
    assert torch.load(fold_dir(work) / checkpoints.FINAL, weights_only=True)["epoch"] == 1


def test_a_finished_fold_continues_to_more_epochs_without_a_learning_rate_jump(tiny_work, tmp_path, caplog):
    """`--resume --epochs 4` on a finished 2-epoch fold trains epochs 3-4 with the documented
    continuation (training/schedule.py, docs/cli.md): lr(e) = lr(1) · (1 − (e − 1) / 3)^0.9, read
    back from the logged LR curve; fewer epochs than trained is one clear error."""
    work = copy_work(tiny_work, tmp_path / "work")
    args = [str(work), "--iters-per-epoch", "2", *SCHEDULE, "--set", "training.lr_step=epoch"]
    assert train_main([*args, "--epochs", "2"]) == 0
    caplog.set_level("INFO", logger="nnlite")
    assert train_main([*args, "--epochs", "4", "--resume"]) == 0
    records = [json.loads(line) for line in (fold_dir(work) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert lrs[:2] == [poly_lr(1e-2, 0, 2, 0.9), poly_lr(1e-2, 1, 2, 0.9)]  # as planned for 2 epochs
    assert lrs[2:] == pytest.approx([lrs[1] * (2 / 3) ** 0.9, lrs[1] * (1 / 3) ** 0.9], rel=1e-12)
    assert all(a > b > 0 for a, b in zip(lrs, lrs[1:]))  # no jump up, no plateau
    final = torch.load(fold_dir(work) / checkpoints.FINAL, weights_only=True)
    assert final["epoch"] == 4 and [s["end"] for s in final["lr_schedule"]] == [2, 4]
    assert final["optimizer"]["param_groups"][0]["lr"] == lrs[3]  # what epoch 4 trained with
    log_text = (fold_dir(work) / "log.txt").read_text()
    assert "epoch 3/4" in log_text and "epoch 4/4" in log_text and "learning rate continues from" in log_text
    with pytest.raises(UserError, match="cannot continue to 3 epochs: 4 are already trained"):
        train_main([*args, "--epochs", "3", "--resume"])


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_metrics_jsonl_values(tiny_work, tmp_path, monkeypatch):
    """logging.backends=[tensorboard]: per epoch (step = metrics.jsonl's `epoch`) every number of
    the record and pseudo_dice/<k>, across a resume that extends the run; the final validation's
    summary at the last epoch. A named backend that is missing is one error, before any folder."""
    work = copy_work(tiny_work, tmp_path / "work")
    args = [str(work), "--iters-per-epoch", "2", "--val-iters", "1", *SCHEDULE[:-2],
            "--set", "validation.mirroring=false", "--set", "validation.save_probabilities=false"]
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed, whether it is or not
    with pytest.raises(UserError, match="'mlflow' is named but not installed"):
        train_main([*args, "--epochs", "2", "--set", "logging.backends=[tensorboard, mlflow]"])
    assert not fold_dir(work).exists()
    board = ["--set", "logging.backends=[tensorboard]"]
    assert train_main([*args, "--epochs", "1", *board]) == 0
    assert train_main([*args, "--epochs", "2", "--resume", *board]) == 0
    records = [json.loads(line) for line in (fold_dir(work) / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        values = {key: value for key, value in record.items() if key not in ("epoch", "pseudo_dice")}
        values.update({f"pseudo_dice/{k}": dice for k, dice in enumerate(record["pseudo_dice"], start=1)})
        for tag, value in values.items():
            if value is not None:  # null in metrics.jsonl (NaN) is not logged
                expected.setdefault(tag, []).append((record["epoch"], float(np.float32(value))))
    scalars = tensorboard_scalars(fold_dir(work) / "tensorboard")
    assert [r["epoch"] for r in records] == [0, 1] and {"lr", "train_loss", "pseudo_dice/1"} <= set(expected)
    assert {tag: values for tag, values in scalars.items() if not tag.startswith("validation/")} == expected
    summary = json.loads((fold_dir(work) / "validation" / "summary.json").read_text())
    assert scalars["validation/foreground_mean/dice"][-1] == (1, float(np.float32(summary["foreground_mean"]["dice"])))


def test_fold_all_trains_on_every_case(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path / "work")
    assert train_main([str(work), "--fold", "all", "--epochs", "1", "--iters-per-epoch", "1", *SCHEDULE]) == 0
    folder = work / "results" / DEMO_CONFIGURATION / "fold_all"
    assert json.loads((folder / "config.json").read_text())["fold"] == "all"
    assert "5 training / 5 validation cases" in (folder / "log.txt").read_text()


@pytest.mark.gpu
def test_cuda_run_uses_amp_and_resumes(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path / "work")
    args = [str(work), "--device", "cuda", "--seed", "0", "--workers", "1", "--train-config", "debug",
            "--iters-per-epoch", "3"]
    assert train_main([*args, "--epochs", "1", "--set", "validation.enabled=false"]) == 0
    assert train_main([*args, "--epochs", "2", "--resume"]) == 0
    checkpoint = torch.load(fold_dir(work) / checkpoints.FINAL, weights_only=True, map_location="cpu")
    assert checkpoint["epoch"] == 2
    assert ("grad_scaler" in checkpoint) == (not torch.cuda.is_bf16_supported())  # fp16 needs the scaler
    assert (fold_dir(work) / "validation" / "summary.json").is_file()
