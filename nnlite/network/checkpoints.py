"""A trained network's checkpoint files: their names in a fold folder and the verified load.

A checkpoint is a dict of the contract's keys, all loadable with `torch.load(weights_only=True)`:
`network` (state_dict), `optimizer`, `grad_scaler` (absent without a scaler), `epoch` (epochs
completed), `metrics` (list of per-epoch dicts), `rng`, `plan` (the whole Plans as a dict) and
`config` (the resolved TrainConfig as a dict). Training writes them (`nnlite.training.checkpoints`);
prediction, export and conversion read them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnlite.common.errors import UserError

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
FINAL = "checkpoint_final.pt"
REQUIRED_KEYS = ("network", "optimizer", "epoch", "metrics", "rng", "plan", "config")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a truncated or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle: torch raises several types
        raise UserError(path, f"unreadable checkpoint (truncated or corrupt: {error})") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise UserError(path, f"not an nnlite checkpoint (needs keys {list(REQUIRED_KEYS)})")
    return checkpoint
