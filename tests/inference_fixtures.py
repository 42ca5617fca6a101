"""Hand-made plans and random-weight checkpoints for the inference/post-processing tests."""

from __future__ import annotations

from pathlib import Path

import torch

from nnlite.common.schema import to_jsonable
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans, save_plans

CONFIG = "3d_fullres"


def tiny_plans(channels: int = 1, labels: int = 2, raw_path: str = "",
               spacing: tuple[float, ...] = (2.0, 1.0, 1.0),
               patch: tuple[int, ...] = (8, 16, 16),
               transpose: tuple[int, ...] = (0, 1, 2)) -> Plans:
    """A 3-stage 3D plan small enough to run in milliseconds on a CPU."""
    network = NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                          kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                          features_per_stage=(4, 8, 8))
    config = ConfigurationPlan(spacing=spacing, patch_size=patch, median_shape=patch, batch_size=2,
                               network=network, normalization=("zscore",) * channels,
                               use_mask_for_norm=(False,) * channels, batch_dice=False,
                               data_identifier=CONFIG)
    stats = IntensityStats(0.0, 1.0, 0.0, -3.0, 3.0, -2.5, 2.5)
    return Plans(dataset_name="Tiny", transpose=transpose, original_median_spacing=spacing,
                 original_median_shape=patch, configurations={CONFIG: config},
                 intensity_per_channel={str(c): stats for c in range(channels)},
                 channel_names={str(c): f"ch{c}" for c in range(channels)},
                 labels={"background": 0, **{f"l{v}": v for v in range(1, labels + 1)}},
                 gpu_memory_gb=8.0, extra={"raw_path": raw_path} if raw_path else {})


def save_random_model(work: Path, plans: Plans, folds=(0,), seed: int = 0, config_name: str = CONFIG) -> None:
    """plans.json + checkpoint_final.pt per fold with random weights, in the contract's format."""
    from nnlite.network import build_unet

    save_plans(plans, work / "plans.json")
    config = plans.configurations[config_name]
    for fold in folds:
        torch.manual_seed(seed + int(fold) if str(fold).isdigit() else seed)
        net = build_unet(config.network, plans.num_channels, plans.num_classes)
        folder = work / "results" / config_name / f"fold_{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"network": net.state_dict(), "optimizer": {}, "epoch": 1, "metrics": [],
                    "rng": {}, "plan": to_jsonable(plans),
                    "config": {"configuration": config_name, "fold": fold}},
                   folder / "checkpoint_final.pt")


def rgb_picture_model(root: Path, rng, monkeypatch) -> tuple[Path, Path, list]:
    """A raw dataset of three RGB PNG pictures (40 × 32, one bright "tool" per picture) at
    root/raw, planned 2d into root/work with a random-weight fold 0; returns (work, raw, the
    pictures as (Y, X, 3) uint8 arrays) so a test can write its own inputs from them."""
    import json

    import numpy as np
    from PIL import Image as PILImage

    from nnlite.data.dataset import load_dataset
    from nnlite.planning import fingerprint as fingerprint_module
    from nnlite.planning.fingerprint import extract_fingerprint
    from nnlite.planning.planner import plan_experiment

    monkeypatch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 3000)
    raw = root / "raw"
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).mkdir(parents=True)
    pictures = []
    for i in range(3):
        seg = np.zeros((40, 32), np.uint8)
        seg[5 + i : 20, 6:18] = 1
        pictures.append(np.clip(rng.normal(90, 10, (40, 32, 3)) + 100 * seg[..., None], 0, 255).astype(np.uint8))
        PILImage.fromarray(pictures[-1]).save(raw / "imagesTr" / f"img_{i}_0000.png")
        PILImage.fromarray(seg).save(raw / "labelsTr" / f"img_{i}.png")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "tool": 1},
        "numTraining": 3, "file_ending": ".png"}))
    save_random_model(root / "work", plan_experiment(extract_fingerprint(load_dataset(raw)), configs=["2d"]),
                      config_name="2d")
    return root / "work", raw, pictures
