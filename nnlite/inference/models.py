"""The models of a prediction, loaded once: configurations × folds, from checkpoints or ONNX.

A `StageModel` is one configuration's networks (one per fold, probabilities averaged); a cascade
stage also holds the model of its previous stage, loaded with the same folds. An ensemble is a list
of them (an ensemble member that is also a previous stage is loaded once). Every network is built
by `network.build_network` and filled from `checkpoint_<final|best>.pt` of its fold folder
(`common.layout.prediction_folds`), without deep supervision, in eval mode. `--onnx` replaces the
folds of a single, non-cascade configuration by one exported network (`export onnx`) that
onnxruntime runs in the same sliding window (`OnnxNetwork`; onnxruntime is imported only then).

`results/best.json` (written by `evaluation/selection.py`) names what `predict --best` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.common.layout import best_file, plans_file, prediction_folds
from nnlite.network import build_network
from nnlite.network.checkpoints import BEST, FINAL, load_checkpoint
from nnlite.plans import Plans

CHECKPOINTS = {"final": FINAL, "best": BEST}  # --checkpoint → the fold folder's file


@dataclass
class StageModel:
    """The networks (one per fold) of a configuration; `previous`: the stage before a cascade."""

    config_name: str
    networks: list[nn.Module]
    previous: "StageModel | None" = None


def check_configuration(work: Path, plans: Plans, config_name: str, checkpoint: str = "final") -> None:
    """A configuration to predict with must be planned, and --checkpoint one of final, best."""
    if config_name not in plans.configurations:
        raise UserError("--config", f"'{config_name}' is not in {plans_file(work)}")
    if checkpoint not in CHECKPOINTS:
        raise UserError("--checkpoint", f"must be one of {sorted(CHECKPOINTS)}")


def load_fold_network(plans: Plans, config_name: str, folder: Path, checkpoint: str = "final",
                      device: torch.device | str = "cpu") -> nn.Module:
    """The network trained in fold `folder` (weights of checkpoint_<checkpoint>.pt), without deep
    supervision, in eval mode on `device`."""
    network = build_network(plans, config_name, deep_supervision=False)
    network.load_state_dict(load_checkpoint(folder / CHECKPOINTS[checkpoint])["network"])
    return network.to(device).eval()


def load_fold_networks(work: Path, plans: Plans, config_name: str, folds: Sequence[str] | None,
                       checkpoint: str, device: torch.device) -> list[nn.Module]:
    """One network per fold of `config_name` (`folds`, default every trained fold)."""
    check_configuration(work, plans, config_name, checkpoint)
    return [load_fold_network(plans, config_name, folder, checkpoint, device)
            for folder in prediction_folds(work, config_name, folds, CHECKPOINTS[checkpoint])]


def load_stage_model(work: Path, plans: Plans, config_name: str, folds: Sequence[str] | None,
                     checkpoint: str, device: torch.device, loaded: dict[str, StageModel]) -> StageModel:
    """A configuration's folds and, for a cascade, its previous stage with the same folds.

    loaded: models already loaded by configuration (an ensemble member is also a previous stage).
    """
    if config_name not in loaded:
        networks = load_fold_networks(work, plans, config_name, folds, checkpoint, device)
        previous = plans.configurations[config_name].previous_stage
        loaded[config_name] = StageModel(config_name, networks, previous and load_stage_model(
            work, plans, previous, folds, checkpoint, device, loaded))
    return loaded[config_name]


def load_models(work: Path, plans: Plans, configs: Sequence[str], folds: Sequence[str] | None,
                checkpoint: str, device: torch.device, onnx: str | None = None) -> list[StageModel]:
    """The models of a prediction: one per configuration of the ensemble `configs`; with `onnx`,
    the single configuration's network is that file, run by onnxruntime."""
    if onnx is None:
        loaded: dict[str, StageModel] = {}
        return [load_stage_model(work, plans, config, folds, checkpoint, device, loaded) for config in configs]
    if len(configs) != 1:
        raise UserError("--onnx", "runs one network: it cannot join an ensemble")
    check_configuration(work, plans, configs[0], checkpoint)
    if plans.configurations[configs[0]].previous_stage:
        raise UserError("--onnx", f"'{configs[0]}' is a cascade stage; --onnx runs one network")
    return [StageModel(configs[0], [OnnxNetwork(onnx)])]


def require(module: str):
    """Import an optional dependency, or a UserError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(module, "is not installed: pip install 'nnlite[onnx]' (onnx, onnxruntime)") from None


class OnnxNetwork(nn.Module):
    """An ONNX file as a torch module: (B, C, *S) float32 → logits (B, K, *S), computed by onnxruntime
    on the CPU (the tensors come back on the input's device)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        onnxruntime = require("onnxruntime")
        if not Path(path).is_file():
            raise UserError(path, "ONNX file not found")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001  onnxruntime raises its own exception types
            raise UserError(path, f"onnxruntime cannot load it ({str(error).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.deep_supervision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(x.device)


def load_best(work: str | Path) -> dict[str, Any]:
    """results/best.json; missing or malformed is a UserError naming it."""
    path = best_file(work)
    if not path.is_file():
        raise UserError(path, "not found: run `python -m nnlite.best WORK` first")
    best = read_json(path)
    try:
        configs = [str(c) for c in best["winner"]["configurations"]]
        steps = [[int(label) for label in step] for step in best["postprocessing"]["steps"]]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(path, f"not a best-configuration file ({error})") from None
    return {**best, "winner": {**best["winner"], "configurations": configs},
            "postprocessing": {**best["postprocessing"], "steps": steps}}
