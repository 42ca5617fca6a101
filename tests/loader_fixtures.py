"""Tiny preprocessed datasets for the loader tests, written the way preprocessing writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnlite.loading.sampling import CaseStore
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans

DATA_IDENTIFIER = "toy_3d"


def toy_plans(patch: tuple[int, ...] = (8, 12, 12), batch_size: int = 2, channels: int = 1,
              use_mask: bool = False, name: str = "3d_fullres") -> Plans:
    """Plans with one configuration: 3 stages (strides 1, 2, 2 where the patch allows): 2 DS levels."""
    ndim = len(patch)
    down = tuple(2 if p % 4 == 0 else 1 for p in patch)  # any patch size works in the tests
    net = NetworkPlan(strides=((1,) * ndim, down, down),
                      kernel_sizes=((3,) * ndim,) * 3, features_per_stage=(4, 8, 16))
    config = ConfigurationPlan(spacing=(1.0,) * ndim, patch_size=tuple(patch), median_shape=(20,) * ndim,
                               batch_size=batch_size, network=net,
                               normalization=("zscore",) * channels, use_mask_for_norm=(use_mask,) * channels,
                               batch_dice=False, data_identifier=DATA_IDENTIFIER)
    stats = IntensityStats(0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0)
    return Plans(dataset_name="Dataset999_Toy", transpose=(0, 1, 2), original_median_spacing=(1.0,) * 3,
                 original_median_shape=(20.0,) * 3, configurations={name: config},
                 intensity_per_channel={str(c): stats for c in range(channels)},
                 channel_names={str(c): f"ch{c}" for c in range(channels)},
                 labels={"background": 0, "a": 1, "b": 2}, gpu_memory_gb=8.0)


def write_case(folder: Path, name: str, image: np.ndarray, seg: np.ndarray) -> None:
    """image (C, Z, Y, X) float32, seg (Z, Y, X) int with -1 outside; class_locations of every label."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", image.astype(np.float32))
    np.save(folder / f"{name}_seg.npy", seg[None].astype(np.int8))
    locations = {str(label): np.argwhere(seg == label).tolist() for label in (1, 2)}
    (folder / f"{name}.json").write_text(json.dumps({"class_locations": locations}))


def blob_case(rng: np.random.Generator, shape=(20, 24, 22), channels: int = 1,
              radius: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one small ball of label 1 and one of label 2, -1 on a border slab."""
    grid = np.indices(shape).astype(float)
    seg = np.zeros(shape, dtype=np.int8)
    for label in (1, 2):
        centre = [rng.uniform(radius + 1, s - radius - 1) for s in shape]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        seg[ball] = label
    seg[:, :2] = np.where(seg[:, :2] == 0, -1, seg[:, :2])
    image = rng.normal(size=(channels, *shape)).astype(np.float32) + seg[None].clip(0)
    return image, seg


def toy_dataset(work: Path, n_cases: int = 4, seed: int = 0, **kwargs) -> list[str]:
    """Write n_cases blob cases under work/preprocessed/<DATA_IDENTIFIER>/; returns their names."""
    rng = np.random.default_rng(seed)
    names = [f"case_{i:03d}" for i in range(n_cases)]
    for name in names:
        write_case(work / "preprocessed" / DATA_IDENTIFIER, name, *blob_case(rng, **kwargs))
    return names


class ExplodingStore(CaseStore):
    """A case store whose reads crash with a bug (not a user error). The loader pickles its store
    into the workers by reference to this class, so the crash happens inside a worker under any
    start method (fork, spawn or forkserver), without patching anything in the workers."""

    def arrays(self, name: str):
        raise ZeroDivisionError("boom in the worker")
