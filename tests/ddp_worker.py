"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (gloo, CPU).

Trains a few steps with nnlite's own pieces (DDP state, per-rank loader, train_step) and writes,
per rank, the weights' checksum after every step and what each step drew, to OUT/rank_<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from nnlite.network.loss import build_loss
from nnlite.plans import load_plans
from nnlite.training.config import load_train_config
from nnlite.training.distributed import close_distributed, init_distributed
from nnlite.training.folds import fold_cases
from nnlite.training.run_setup import build_batches
from nnlite.training.trainer import build_state, train_step

STEPS = 3


def main(work: Path, out: Path) -> None:
    rank = init_distributed("cpu")
    plans = load_plans(work / "plans.json")
    config = load_train_config("debug", ["device=cpu", "seed=0", "data.workers=0"])
    config_plan = plans.configurations[config.configuration]
    state = build_state(plans, config, torch.device("cpu"), None, rank)
    train_cases, val_cases = fold_cases(work, plans, config)
    batches = build_batches(work, plans, config, train_cases, val_cases, 2, 0, rank, torch.device("cpu"))
    loss_fn = build_loss(config_plan.network, config_plan.batch_dice)
    steps = []
    for _ in range(STEPS):
        batch = next(batches.train)
        train_step(state, loss_fn, batch, config.training.grad_clip)
        checksum = sum(float(p.double().sum()) for p in state.network.parameters())
        steps.append({"checksum": checksum, "cases": batch["cases"], "data_sum": float(batch["data"].sum()),
                      "batch_size": int(batch["data"].shape[0])})
    batches.close()
    (out / f"rank_{rank.rank}.json").write_text(json.dumps({"world_size": rank.world_size, "steps": steps}))
    close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
