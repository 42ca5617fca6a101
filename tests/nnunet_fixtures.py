"""nnU-Net v2 model folders built from facts recorded once from a real nnunetv2 install.

tests/data/nnunet_state_dicts.json holds the state-dict keys and shapes of networks that
dynamic_network_architectures built from small plans (and each plan's `architecture` entry);
tests/data/nnunet_checkpoint.json the keys of a checkpoint saved by nnU-Net's own trainer;
tests/data/nnunet_hippocampus_plans.json the nnUNetPlans.json nnunetv2 2.8.1 made for
Hippocampus. Regenerate them with `benchmarks/record_nnunet_facts.py`. Nothing here is derived
from nnlite's own module names, and nothing needs nnunetv2.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"
STATE_DICTS = json.loads((DATA / "nnunet_state_dicts.json").read_text())
CHECKPOINT_FACTS = json.loads((DATA / "nnunet_checkpoint.json").read_text())
HIPPOCAMPUS_PLANS = json.loads((DATA / "nnunet_hippocampus_plans.json").read_text())
IN_CHANNELS, NUM_CLASSES = STATE_DICTS["in_channels"], STATE_DICTS["num_classes"]
ALL_MODULES = re.compile(r"\.all_modules\.(\d+)\.")
ALIAS_OF = {"0": "conv", "1": "norm"}  # a unit's Sequential: conv, (no dropout), norm, nonlin


def recorded_keys(network: str) -> list[tuple[str, list[int]]]:
    return [(key, shape) for key, shape in STATE_DICTS["networks"][network]["keys"]]


def nnunet_state_dict(network: str, seed: int = 0, first_input_channels: int | None = None
                      ) -> dict[str, torch.Tensor]:
    """Random tensors under nnU-Net's recorded keys, aliases sharing their tensor as in nnU-Net.

    first_input_channels: widen the first conv's input (a cascade stage gets extra channels).
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    first_conv = recorded_keys(network)[0][0]
    for key, shape in recorded_keys(network):
        if key.startswith("decoder.encoder."):
            state[key] = state[key[len("decoder."):]]
        elif ALL_MODULES.search(key):
            state[key] = state[ALL_MODULES.sub(lambda m: f".{ALIAS_OF[m[1]]}.", key)]
        else:
            if key == first_conv and first_input_channels is not None:
                shape = [shape[0], first_input_channels, *shape[2:]]
            state[key] = torch.randn(shape, generator=generator)
    return state


def architecture(network: str) -> dict:
    return copy.deepcopy(STATE_DICTS["networks"][network]["architecture"])


def nnunet_plans(network: str = "plain_3d", patch=(16, 32, 32), cascade: bool = False) -> dict:
    """Hippocampus's real nnUNetPlans.json with its 3d_fullres architecture replaced by a recorded one
    (and, with `cascade`, the 3d_lowres / 3d_cascade_fullres pair nnU-Net writes for big images)."""
    plans = copy.deepcopy(HIPPOCAMPUS_PLANS)
    config = plans["configurations"]["3d_fullres"]
    config.update(architecture=architecture(network), patch_size=list(patch),
                  normalization_schemes=["ZScoreNormalization"] * IN_CHANNELS,
                  use_mask_for_norm=[False] * IN_CHANNELS)
    plans["foreground_intensity_properties_per_channel"]["1"] = \
        plans["foreground_intensity_properties_per_channel"]["0"]
    plans["configurations"] = {"3d_fullres": config}
    if cascade:
        lowres = copy.deepcopy(config)
        lowres.update(data_identifier="nnUNetPlans_3d_lowres", spacing=[2.0, 2.0, 2.0], next_stage="3d_cascade_fullres")
        plans["configurations"]["3d_lowres"] = lowres
        plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                          "previous_stage": "3d_lowres"}
    return plans


def dataset_json() -> dict:
    return {"channel_names": {str(c): f"MRI{c}" for c in range(IN_CHANNELS)},
            "labels": {"background": 0, **{f"l{v}": v for v in range(1, NUM_CLASSES)}},
            "numTraining": 3, "file_ending": ".nii.gz", "name": "Fixture"}


def nnunet_checkpoint(state: dict[str, torch.Tensor], plans: dict, configuration: str,
                      trainer: str = "nnUNetTrainer_5epochs", mirror_axes=(0, 1, 2)) -> dict:
    """A checkpoint laid out as nnUNetTrainer.save_checkpoint writes it (keys recorded), numpy
    scalars in its log as nnU-Net's logger stores them."""
    logged = {key: [np.float64(0.5)] for key in CHECKPOINT_FACTS["logging"]}
    checkpoint = {
        "network_weights": state, "optimizer_state": {"state": {}, "param_groups": []},
        "grad_scaler_state": None, "logging": logged, "_best_ema": np.float32(0.5), "current_epoch": 5,
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                      "dataset_json": dataset_json(), "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": None if mirror_axes is None else tuple(mirror_axes),
    }
    assert sorted(checkpoint) == CHECKPOINT_FACTS["keys"]
    assert sorted(checkpoint["init_args"]) == CHECKPOINT_FACTS["init_args"]
    return checkpoint


def write_model_folder(root: Path, plans: dict, configuration: str = "3d_fullres", network: str = "plain_3d",
                       folds=(0,), trainer: str = "nnUNetTrainer_5epochs", first_input_channels=None,
                       mirror_axes=(0, 1, 2)) -> Path:
    """<Trainer>__nnUNetPlans__<configuration>/ with plans.json, dataset.json, fold_k/checkpoint_final.pth."""
    folder = root / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(), indent=1))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        state = nnunet_state_dict(network, seed=int(fold) if str(fold).isdigit() else 9,
                                  first_input_channels=first_input_channels)
        torch.save(nnunet_checkpoint(state, plans, configuration, trainer, mirror_axes),
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def write_nnunet_postprocessing(model_dir: Path, functions: list[str], kwargs: list[dict],
                                folder: str | None = "crossval_results_folds_0") -> Path:
    """postprocessing.json as nnU-Net's determine_postprocessing writes it (next to
    postprocessing.pkl in the cross-validation results folder of the model folder)."""
    target = model_dir / folder if folder else model_dir
    target.mkdir(parents=True, exist_ok=True)
    scores = {"foreground_mean": {"Dice": 0.5}, "mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.5}}}
    (target / "postprocessing.json").write_text(json.dumps({
        "input_folder": scores, "postprocessed": scores,
        "postprocessing_fns": functions, "postprocessing_kwargs": kwargs}, indent=1))
    return target / "postprocessing.json"
