"""A small planned and preprocessed demo WORK (3 cases, one configuration), made in seconds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.planning import fingerprint as fingerprint_module
from nnlite.planning.work_folder import plan_dataset
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.training import checkpoints

CONFIG = "3d_fullres"
CASES = ["demo_001", "demo_002", "demo_003"]  # the demo's names for 3 cases
FEW_SAMPLES = 1e4  # foreground voxels the fingerprint samples per channel (nnU-Net: 1e8)


def plan_small(raw: Path, work: Path, **options):
    """plan_dataset for CONFIG with few fingerprint samples (the statistics barely change)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", FEW_SAMPLES)
        return plan_dataset(raw, work, 8.0, [CONFIG], 1, **options)


def small_work(root: Path, n_cases: int = 3) -> Path:
    """root/raw (the demo's first n_cases) planned and preprocessed into root/work."""
    raw = generate_demo_dataset(root / "raw", n_cases=n_cases, seed=0)
    plan_small(raw, root / "work")
    run_preprocessing(root / "work", workers=1)
    return root / "work"


def kill_in_second_epoch(process: subprocess.Popen, fold: Path, kill: Callable[[], None]) -> None:
    """Wait for a training run's first latest-checkpoint (end of epoch 1), kill it with `kill`, and
    check it died in its second epoch, before any final checkpoint."""
    latest = fold / checkpoints.LATEST
    deadline = time.monotonic() + 600
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    kill()
    process.wait()
    assert torch.load(latest, weights_only=True)["epoch"] == 1, "not killed during the second epoch"
    assert not (fold / checkpoints.FINAL).exists()
