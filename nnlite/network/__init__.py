"""Stage 4, network: a `NetworkPlan` in, the U-Net and its loss out.

`build_network(plans, config_name)` (`builders`) builds a configuration's network: the builder its
plan names by import path, by default `unet.build_unet`, the dynamic InstanceNorm/LeakyReLU U-Net
(from the `blocks`) with one segmentation head per decoder level; `loss` has Dice + CE
with the deep-supervision weighting; `geometry` computes the network's feature-map sizes and the
bytes of a training step by arithmetic. The planner reads `geometry` (the one documented crossing
into this stage from an earlier one), so it is pure arithmetic and importing it, or this package,
does not import torch: the names below load the torch modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"UNet": "unet", "build_network": "builders", "build_unet": "unet", "channels_last_input": "unet", "compile_network": "unet",
         "to_channels_last": "unet"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """`from nnlite.network import build_unet` imports `nnlite.network.unet` (and torch) only now."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
