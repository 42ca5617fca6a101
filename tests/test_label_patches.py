"""Label patches are int16 wherever labels are cropped, so a label above 127 survives training's
sampling, the batched device path and the cascade's previous-stage input (int8 would turn 200 into
-56, which then reads as "outside the body")."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlite.loading.augmentation import augment_config
from nnlite.loading.device_augmentation import augment_batch
from nnlite.loading.loader import BatchSpec, make_batch
from nnlite.loading.previous_stage import PreviousStageStore
from nnlite.loading.sampling import CaseStore, forced_foreground, read_region
from nnlite.network.loss import deep_supervision_scales
from nnlite.preprocessing.cascade import PREV_FILE
from tests.loader_fixtures import DATA_IDENTIFIER, toy_plans

HIGH = 200  # a label past int8's 127
PATCH = (8, 12, 12)


def high_label_case(folder: Path, name: str, rng: np.random.Generator) -> None:
    """A case whose only foreground is a block of label HIGH, stored as preprocessing stores it."""
    seg = np.zeros((1, 12, 16, 16), np.int16)
    seg[0, 3:9, 4:12, 4:12] = HIGH
    seg[0, :, :2] = -1  # outside the body
    image = rng.normal(size=(1, *seg.shape[1:])).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", image)
    np.save(folder / f"{name}_seg.npy", seg)
    locations = {str(HIGH): np.argwhere(seg[0] == HIGH).tolist()}
    (folder / f"{name}.json").write_text(json.dumps({"class_locations": locations}))


@pytest.fixture
def spec(tmp_path) -> BatchSpec:
    rng = np.random.default_rng(0)
    folder = tmp_path / "preprocessed" / DATA_IDENTIFIER
    for name in ("a", "b"):
        high_label_case(folder, name, rng)
    config = toy_plans(PATCH, batch_size=4).configurations["3d_fullres"]
    store = CaseStore(folder, ["a", "b"])
    return BatchSpec(store, augment_config(config), tuple(forced_foreground(4, 1.0)), 3, True,
                     tuple(deep_supervision_scales(config.network)))


def test_read_region_keeps_labels_above_127():
    seg = np.full((1, 4, 4, 4), HIGH, np.int16)
    _, labels = read_region(np.zeros((1, 4, 4, 4), np.float32), seg, np.array([-1, 0, 0]), np.array([3, 4, 4]))
    assert labels.dtype == np.int16 and set(np.unique(labels).tolist()) == {-1, HIGH}


@pytest.mark.parametrize("on_device", [False, True], ids=["sampler", "device path"])
def test_training_batches_keep_labels_above_127(spec, on_device):
    spec = replace(spec, on_device=on_device)
    values = set()
    for index in range(3):
        batch = make_batch(spec, index)
        if on_device:
            batch = augment_batch(batch, spec.cfg, spec.ds_scales)
        values |= set(torch.unique(batch["target"][0]).tolist())
    assert values == {0, HIGH}


def test_previous_stage_regions_keep_labels_above_127(tmp_path):
    prev = np.zeros((1, 6, 6, 6), np.int16)
    prev[0, 2:4, 2:4, 2:4] = HIGH
    np.save(tmp_path / PREV_FILE.format(case="a"), prev)
    region = PreviousStageStore(tmp_path, [1, HIGH]).region("a", np.array([0, 0, 0]), np.array([6, 6, 6]))
    assert set(np.unique(region).tolist()) == {0, HIGH}
