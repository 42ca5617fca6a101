"""Sliding-window prediction of a preprocessed case with mirroring and several networks (folds).

The volume is covered by overlapping tiles of the patch size (step 0.5 of a tile); each tile's
output is weighted by a Gaussian that favours its centre, and the weighted sum is divided by the
summed weights. Unlike the reference (one tile per forward, fp16 accumulators, logits averaged over
mirrors and folds), nnlite

- batches tiles *and* their mirrored copies into one forward (`tile_batch` inputs per forward),
- accumulates in float32 (on the GPU when the volume fits, else on the CPU with a message),
- combines mirrors, folds and tiles by averaging softmax PROBABILITIES, the same rule the
  ensembling of folders uses, so "the same ensemble" gives the same answer on every path.

A region dataset (docs/regions.md) uses `output="sigmoid"`: one independent probability per
region, averaged the same way. `output="logits"` averages raw network outputs instead; it exists for regression-style networks and
for the stitching test (an add-one network must stitch back to input + 1 exactly).

A 2D network on a 3D volume (the `2d` configuration) predicts it slice by slice: the tile gets a
leading extent of 1 along axis 0, and slices are batched like tiles.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nnlite.plans import ConfigurationPlan
from nnlite.inference.uncertainty import MemberSums
from nnlite.network.hardware import inference_autocast

log = logging.getLogger(__name__)

STEP_SIZE = 0.5  # tile step as a fraction of the tile (reference: -step_size 0.5)
GAUSSIAN_SIGMA_SCALE = 1 / 8  # σ of the importance map = tile size / 8 per axis (reference)
CPU_VOXELS_PER_FORWARD = 2**21  # input voxels per forward on the CPU (≈ 1 tile of 128³)
CUDA_VOXELS_PER_FORWARD = 2**24  # input voxels per forward on a GPU (≈ 8 tiles of 128³)
MAX_TILE_BATCH = 32  # more inputs per forward stops paying off on every device we measured
GPU_ACCUMULATOR_SHARE = 0.5  # accumulators may use at most this share of the free GPU memory
OUTPUTS = ("probs", "sigmoid", "logits")  # softmax probabilities, per-region sigmoid, raw outputs


def tile_starts(size: int, tile: int, step: float = STEP_SIZE) -> list[int]:
    """Start indices of tiles along one axis: first 0, last size − tile, spacing ≤ tile·step.

    The reference formula: n = ceil((size − tile) / (tile·step)) + 1 tiles, evenly spread and
    rounded. A size smaller than the tile gives [0] (the caller pads the volume to the tile).
    """
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile * step)) + 1
    actual = (size - tile) / (n - 1)
    return sorted({int(round(actual * i)) for i in range(n)})  # tile 1 would repeat starts


def gaussian_weights(tile: Sequence[int]) -> torch.Tensor:
    """Importance map (*tile) float32: separable Gaussian, σ = tile/8, peak 1 at index tile//2.

    No entry is zero (the smallest, at a 3D corner, is about e^-24), so every voxel of the volume
    receives weight. The reference blurs a delta with scipy and rescales; this is the same shape.
    """
    weights = torch.ones((), dtype=torch.float64)
    for size in tile:
        offset = torch.arange(size, dtype=torch.float64) - size // 2
        sigma = size * GAUSSIAN_SIGMA_SCALE
        weights = weights[..., None] * torch.exp(-0.5 * (offset / sigma) ** 2)
    weights = weights / weights.max()
    return weights.float().clamp_min(torch.finfo(torch.float32).tiny)


def mirror_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `axes` including the empty one (8 in 3D, 4 in 2D)."""
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def default_tile_batch(patch: Sequence[int], device: torch.device) -> int:
    """Network inputs per forward for this patch: a voxel budget per device, at least 1."""
    budget = CUDA_VOXELS_PER_FORWARD if device.type == "cuda" else CPU_VOXELS_PER_FORWARD
    return int(max(1, min(MAX_TILE_BATCH, budget // math.prod(patch))))


def pad_to_tile(data: torch.Tensor, tile: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad data (C, *spatial) with zeros to at least `tile`, content centred (odd extra voxel on
    the high side, as the reference); returns the padded tensor and the slices that undo it."""
    pads, crop = [], []
    for size, want in zip(data.shape[1:], tile):
        before = max(0, want - size) // 2
        after = max(0, want - size) - before
        pads.append((before, after))
        crop.append(slice(before, before + size))
    flat = [value for pair in reversed(pads) for value in pair]  # F.pad wants the last axis first
    return torch.nn.functional.pad(data, flat), tuple(crop)


def _forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    return out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: full resolution


def predict_tiles(networks: Sequence[nn.Module], x: torch.Tensor, mirror_axes: Sequence[int],
                  output: str, tile_batch: int, disagreement: bool = False) -> torch.Tensor:
    """Mean over networks × mirror subsets of softmax(net(flip(x))) flipped back (or raw outputs).

    x: (N, C, *patch) on the compute device → (N, K, *patch) float32. Each network sees all
    mirrored copies of all N tiles concatenated, `tile_batch` inputs per forward.
    disagreement: one more channel, the members' mutual information in nats (inference/uncertainty).
    """
    flips = [tuple(2 + axis for axis in subset) for subset in mirror_subsets(mirror_axes)]
    inputs = torch.cat([x.flip(dims) if dims else x for dims in flips])
    members = MemberSums(output == "sigmoid", disagreement)
    for network in networks:
        with inference_autocast(x.device):
            chunks = [_forward(network, part) for part in inputs.split(tile_batch)]
        out = torch.cat(chunks).float()
        if output == "probs":
            out = torch.softmax(out, dim=1)
        elif output == "sigmoid":  # regions overlap: each channel is its own probability
            out = torch.sigmoid(out)
        for dims, part in zip(flips, out.split(len(x))):
            members.add(part.flip(dims) if dims else part)
    return members.result()


def accumulator_device(device: torch.device, nbytes: int) -> torch.device:
    """The compute device when the accumulators fit in its free memory, else the CPU (logged)."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= GPU_ACCUMULATOR_SHARE * free:
        return device
    log.info("prediction of %.1f GB does not fit on %s (%.1f GB free): accumulating on the CPU",
             nbytes / 1e9, device, free / 1e9)
    return torch.device("cpu")


def tile_slices(shape: Sequence[int], tile: Sequence[int], step: float) -> list[tuple[slice, ...]]:
    """Spatial slices of every tile covering `shape` (each axis ≥ its tile)."""
    starts = [tile_starts(size, t, step) for size, t in zip(shape, tile)]
    return [tuple(slice(s, s + t) for s, t in zip(corner, tile))
            for corner in itertools.product(*starts)]


class _Net2dOn3d(nn.Module):
    """Runs a 2D network on (B, C, 1, Y, X) tiles: drops and restores the slice axis."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self.network, x[:, :, 0])[:, :, None]


@torch.inference_mode()
def predict_sliding_window(networks: nn.Module | Sequence[nn.Module], data: torch.Tensor,
                           patch: Sequence[int], *, step: float = STEP_SIZE,
                           mirror_axes: Sequence[int] | None = None, tile_batch: int | None = None,
                           device: torch.device | str = "cpu", output: str = "probs",
                           disagreement: bool = False) -> torch.Tensor:
    """Predict data (C, *spatial) with networks in eval mode → (K, *spatial) float32 on the CPU.

    patch: the network's patch (3 axes, or 2 for a 2D network on a 3D volume: slice by slice).
    mirror_axes: network axes to mirror (all subsets are averaged); default all, () for none.
    tile_batch: network inputs (tiles × mirrors) per forward; default from a voxel budget.
    output: "probs" averages softmax probabilities, "sigmoid" per-region sigmoid probabilities,
    "logits" raw outputs. disagreement: one more channel (K + 1, *spatial), the members' (networks
    × mirrors) mutual information in nats per tile, stitched like the probabilities.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}")
    networks = [networks] if isinstance(networks, nn.Module) else list(networks)
    device = torch.device(device)
    lead = data.ndim - 1 - len(patch)  # 1 when a 2D network sees a 3D volume
    if lead:
        networks = [_Net2dOn3d(network) for network in networks]
    tile = (1,) * lead + tuple(patch)
    mirror_axes = range(len(patch)) if mirror_axes is None else mirror_axes
    mirror_axes = [lead + axis for axis in mirror_axes]
    tile_batch = tile_batch or default_tile_batch(patch, device)
    padded, crop = pad_to_tile(data.float(), tile)
    n_flips = len(mirror_subsets(mirror_axes))
    tiles = tile_slices(padded.shape[1:], tile, step)
    chunk = max(1, tile_batch // n_flips)
    padded = padded.to(device)
    stitched = None
    for first in range(0, len(tiles), chunk):
        group = tiles[first : first + chunk]
        x = torch.stack([padded[(slice(None),) + region] for region in group])
        out = predict_tiles(networks, x, mirror_axes, output, tile_batch, disagreement)
        if stitched is None:
            stitched = _Stitcher(out.shape[1], padded.shape[1:], tile, device)
        stitched.add(out, group)
    result = stitched.result()
    return result[(slice(None),) + crop].cpu()


class _Stitcher:
    """Gaussian-weighted float32 sums of tile outputs and of the weights over the volume."""

    def __init__(self, channels: int, shape: Sequence[int], tile: Sequence[int],
                 device: torch.device) -> None:
        nbytes = 4 * (channels + 1) * math.prod(shape)
        self.device = accumulator_device(device, nbytes)
        try:
            self.sums = torch.zeros((channels, *shape), device=self.device)
            self.weight = torch.zeros(tuple(shape), device=self.device)
        except torch.OutOfMemoryError:
            log.info("GPU out of memory for the accumulators: accumulating on the CPU")
            self.device = torch.device("cpu")
            self.sums = torch.zeros((channels, *shape))
            self.weight = torch.zeros(tuple(shape))
        self.gaussian = gaussian_weights(tile).to(self.device)

    def add(self, out: torch.Tensor, regions: Sequence[tuple[slice, ...]]) -> None:
        out = out.to(self.device)
        for part, region in zip(out, regions):
            self.sums[(slice(None),) + region] += part * self.gaussian
            self.weight[region] += self.gaussian

    def result(self) -> torch.Tensor:
        return self.sums / self.weight


def predict_preprocessed(networks: Sequence[nn.Module], data: np.ndarray | torch.Tensor,
                         config: ConfigurationPlan, *, mirror: bool = True, step: float = STEP_SIZE,
                         tile_batch: int | None = None,
                         device: torch.device | str = "cpu", sigmoid: bool = False,
                         disagreement: bool = False) -> torch.Tensor:
    """Probabilities (K, *spatial) float32 (CPU) of a preprocessed case (C, *spatial).

    Mirrors the configuration's `inference_mirror_axes` (default every network axis) when `mirror`;
    probabilities are averaged over networks (folds).
    sigmoid: a region network (one sigmoid probability per region) instead of softmax classes.
    disagreement: (K + 1, *spatial), the last channel the members' mutual information in nats.
    """
    if isinstance(data, np.ndarray):  # a copy: memory-mapped files are read-only
        data = torch.from_numpy(np.array(data, dtype=np.float32))
    axes = config.inference_mirror_axes if mirror else ()
    return predict_sliding_window(networks, data, config.patch_size, step=step, mirror_axes=axes,
                                  tile_batch=tile_batch, device=device,
                                  output="sigmoid" if sigmoid else "probs", disagreement=disagreement)
