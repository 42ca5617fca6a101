"""DDP through torchrun (gloo on CPU): identical weights on every rank after every step, different
samples per rank, the global batch split, rank 0 alone writing a checkpoint that loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnlite.training import checkpoints

from test_demo import DEMO_CONFIGURATION, copy_work, fold_dir, tiny_work  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ranks_hold_identical_weights_and_draw_different_samples(tiny_work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torchrun([str(Path(__file__).with_name("ddp_worker.py")), str(tiny_work), str(out)])
    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    for step0, step1 in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert step0["checksum"] == step1["checksum"]  # bit-identical replicas after every step
        assert step0["batch_size"] == step1["batch_size"] == 1  # global batch 2 split in two
    assert [s["data_sum"] for s in ranks[0]["steps"]] != [s["data_sum"] for s in ranks[1]["steps"]]
    checksums = [s["checksum"] for s in ranks[0]["steps"]]
    assert len(set(checksums)) == len(checksums)  # the weights did change


def test_torchrun_trains_two_epochs_and_rank0_checkpoint_loads(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path / "work")
    torchrun(["-m", "nnlite.train", str(work), "--device", "cpu", "--seed", "0", "--workers", "0",
              "--epochs", "2", "--iters-per-epoch", "2", "--val-iters", "1", "--train-config", "debug",
              "--set", "validation.enabled=false"])
    folder = fold_dir(work)
    checkpoint = torch.load(folder / checkpoints.FINAL, weights_only=True)
    assert checkpoint["epoch"] == 2 and not any(k.startswith("module.") for k in checkpoint["network"])
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # written once: by rank 0 only
    assert not list(folder.rglob("*.tmp"))
