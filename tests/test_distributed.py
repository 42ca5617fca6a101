"""DDP through torchrun (gloo on CPU): identical weights on every rank after every step, different
samples per rank, the global batch split, rank 0 alone writing a checkpoint that loads, batch Dice
over the global batch, the final validation shared by the ranks, resume after a kill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnlite.network.loss import build_loss
from nnlite.training import checkpoints, distributed
from nnlite.training.distributed import Rank, for_each_shared, share

from test_demo import DEMO_CONFIGURATION, copy_work, fold_dir, tiny_work  # noqa: F401 - the fixture

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_batch_dice_over_two_ranks_equals_one_process_with_the_whole_batch(tmp_path):
    """2 gloo ranks × batch 1 (statistics all-gathered with gradient) == 1 process × batch 2."""
    import ddp_loss_worker as worker

    torchrun([str(Path(__file__).with_name("ddp_loss_worker.py")), str(tmp_path)], timeout=300)
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in (0, 1)]
    network = worker.tiny_network()
    data, targets = worker.fixed_batch()
    loss = build_loss(worker.PLAN, batch_dice=True)(network(data), targets)
    loss.backward()
    # each rank's CE is its sample's mean and the Dice term is global: their mean is the batch loss
    assert float((ranks[0]["loss"] + ranks[1]["loss"]) / 2) == pytest.approx(loss.item(), abs=1e-6)
    per_sample = build_loss(worker.PLAN, batch_dice=False)(network(data), targets).detach()
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
