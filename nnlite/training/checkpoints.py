"""Checkpoints while training: atomic saves, the newest loadable one for exact resume, RNG states
as plain tensors and lists. The file names, the keys and the verified load are the network's
(`nnlite.network.checkpoints`)."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic
from nnlite.network.checkpoints import BEST, FINAL, LATEST, REQUIRED_KEYS, load_checkpoint  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` under `<path>.tmp`, then rename: a crash never leaves a torn file."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Atomic copy (checkpoint_best is the latest one, copied instead of serialised twice)."""
    return write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))


def load_resumable(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint in `folder` that loads (latest, final or best; highest epoch wins).

    A damaged file is skipped with a warning; if checkpoints exist but none loads, that is a
    UserError. Returns None when the folder holds no checkpoint at all.
    """
    present = [folder / name for name in (LATEST, FINAL, BEST) if (folder / name).is_file()]
    if not present:
        return None
    good: list[dict[str, Any]] = []
    for path in present:
        try:
            good.append(load_checkpoint(path, map_location))
        except UserError as error:
            log.warning("skipping %s", error)
    if not good:
        raise UserError(folder, "no checkpoint here loads (all truncated or corrupt); use --overwrite")
    return max(good, key=lambda checkpoint: checkpoint["epoch"])


def capture_rng() -> dict[str, Any]:
    """The global RNG states as tensors and plain lists (weights_only-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
