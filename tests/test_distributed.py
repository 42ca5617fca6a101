"""DDP through torchrun (gloo on CPU): identical weights on every rank after every step, different
samples per rank, the global batch split, rank 0 alone writing a checkpoint that loads, batch Dice
over the global batch, the final validation shared by the ranks, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnlite.network.loss import build_loss
from nnlite.training import checkpoints, distributed
from nnlite.training.distributed import Rank, for_each_shared, share

from test_demo import DEMO_CONFIGURATION, copy_work, fold_dir, tiny_work  # noqa: F401 - the fixture
from tests.work_fixtures import kill_in_second_epoch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
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


# 3 validation cases (2 + 1 between the ranks); epochs of 12 iterations leave time to kill a run
THREE_VAL_SPLITS = [{"train": ["demo_004", "demo_005"], "val": ["demo_001", "demo_002", "demo_003"]},
                    {"train": ["demo_001", "demo_002", "demo_003"], "val": ["demo_004", "demo_005"]}]
DDP_TRAIN = ["--fold", "0", "--device", "cpu", "--seed", "0", "--workers", "0", "--epochs", "3",
             "--iters-per-epoch", "12", "--val-iters", "1", "--train-config", "debug"]


def three_val_work(tiny_work: Path, target: Path) -> Path:
    work = copy_work(tiny_work, target)
    (work / "splits.json").write_text(json.dumps(THREE_VAL_SPLITS))
    return work


@pytest.fixture(scope="module")
def ddp_run(tiny_work, tmp_path_factory) -> Path:
    """The demo trained to the end, final validation included, by 2 ranks under torchrun."""
    work = three_val_work(tiny_work, tmp_path_factory.mktemp("ddp") / "work")
    torchrun(["-m", "nnlite.train", str(work), *DDP_TRAIN])
    return work


@pytest.mark.slow
def test_torchrun_trains_to_the_end_and_rank0_checkpoint_loads(ddp_run):
    folder = fold_dir(ddp_run)
    checkpoint = torch.load(folder / checkpoints.FINAL, weights_only=True)
    assert checkpoint["epoch"] == 3 and not any(k.startswith("module.") for k in checkpoint["network"])
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]  # written once: by rank 0 only
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.slow
def test_ranks_share_the_final_validation_and_score_as_one_process(ddp_run, tmp_path):
    """Each rank predicts its share (2 + 1 of 3 cases), every case once; the summary equals the one
    a single process writes when it validates the same checkpoint."""
    folder = fold_dir(ddp_run)
    log = (folder / "log.txt").read_text()
    assert "rank 0: validating 2 of 3 cases" in log and "rank 1: validating 1 of 3 cases" in log
    validation = folder / "validation"
    assert sorted(p.name for p in validation.glob("*.nii.gz")) == [f"demo_00{i}.nii.gz" for i in (1, 2, 3)]
    summary = json.loads((validation / "summary.json").read_text())
    assert [c["case"] for c in summary["per_case"]] == ["demo_001", "demo_002", "demo_003"]
    single = tmp_path / "single"
    shutil.copytree(ddp_run, single)
    shutil.rmtree(fold_dir(single) / "validation")
    # the finished run only validates; one thread as each torchrun worker has, for identical sums
    subprocess.run([sys.executable, "-m", "nnlite.train", str(single), *DDP_TRAIN, "--resume"], check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert "validating 3 cases" in (fold_dir(single) / "log.txt").read_text()  # one process: no rank
    assert json.loads((fold_dir(single) / "validation" / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_torchrun_resumes_exactly_after_a_kill(ddp_run, tiny_work, tmp_path):
    """SIGKILL the whole torchrun job during its second epoch, resume it under torchrun: the final
    weights equal the uninterrupted run's."""
    killed = three_val_work(tiny_work, tmp_path / "killed")
    args = ["-m", "nnlite.train", str(killed), *DDP_TRAIN, "--set", "validation.enabled=false"]
    process = subprocess.Popen([*TORCHRUN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # its own process group: the workers die with it
    kill_in_second_epoch(process, fold_dir(killed), lambda: os.killpg(process.pid, signal.SIGKILL))
    torchrun([*args, "--resume"])
    a = torch.load(fold_dir(ddp_run) / checkpoints.FINAL, weights_only=True)["network"]
    b = torch.load(fold_dir(killed) / checkpoints.FINAL, weights_only=True)["network"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = (fold_dir(killed) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in records] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["labels", "regions"])
def test_batch_dice_over_two_ranks_equals_one_process_with_the_whole_batch(tmp_path, kind):
    """2 gloo ranks × batch 1 (statistics all-gathered with gradient) == 1 process × batch 2, for
    Dice + CE and for the region loss (Dice + BCE)."""
    import ddp_loss_worker as worker

    torchrun([str(Path(__file__).with_name("ddp_loss_worker.py")), str(tmp_path), kind], timeout=300)
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in (0, 1)]
    network = worker.tiny_network(kind)
    data, targets = worker.fixed_batch()
    targets = worker.the_targets(kind, targets)
    loss = worker.the_loss(kind)(network(data), targets)
    loss.backward()
    # each rank's CE (BCE) is its sample's mean and the Dice term is global: their mean is the batch loss
    assert float((ranks[0]["loss"] + ranks[1]["loss"]) / 2) == pytest.approx(loss.item(), abs=1e-6)
    per_sample = worker.the_loss(kind, batch_dice=False)(network(data), targets).detach()
    assert abs(float(per_sample) - float(loss)) > 1e-3  # the data tells batch and per-sample Dice apart
    for name, param in network.named_parameters():
        if param.grad is None:
            continue
        for rank in ranks:  # DDP averaged: every rank holds the gradient of the whole batch
            torch.testing.assert_close(rank["grads"][name], param.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n_items", [0, 1, 2, 5, 8])
def test_shares_cover_every_item_exactly_once(world_size, n_items, monkeypatch):
    """The shared validation's split: every item on exactly one rank, and every rank meets the same
    number of barriers (one per round), so no rank is left waiting for a collective that never comes."""
    items = [f"case_{i}" for i in range(n_items)]
    barriers = []
    done = []
    for r in range(world_size):
        rank = Rank(r, world_size)
        monkeypatch.setattr(distributed, "barrier", lambda rank: barriers.append(rank.rank))
        results = for_each_shared(items, rank, lambda item: done.append(item) or item.upper())
        assert [items[i] for i in results] == share(items, rank)
        assert all(results[i] == items[i].upper() for i in results)
    assert sorted(done) == sorted(items)  # each item once, on some rank
    rounds = -(-n_items // world_size)
    assert all(barriers.count(r) == rounds for r in range(world_size))
    assert max(len(share(items, Rank(r, world_size))) for r in range(world_size)) <= rounds
