"""Fine-tuning: start a run from another model's weights (`train --pretrained CHECKPOINT`).

The new network is built and He-initialised as for any run (seeded), then takes from the pretrained
state dict, module by module (a module's tensors move together: a conv's bias never loads without
its kernel), by this rule (docs/finetuning.md):

- loaded: every tensor of the module is in the pretrained network under the same name and shape;
- adapted: the first convolution when only its input channels differ (another channel count):
  the pretrained kernels averaged over their C_old input channels, repeated to the C_new new ones
  and scaled by C_old / C_new (`adapt_input_channels`); its bias loads as it is;
- initialised (keeps the fresh initialisation): the segmentation heads when the output classes
  differ (labels by name and value, or regions), even where the shapes agree; the classification
  head when the case classes differ; every module missing from the pretrained network or whose
  shapes differ;
- not used: pretrained tensors whose names the new network lacks.

When no convolution kernel outside the heads would load (another dimensionality or topology) the
run is refused in one line. `pretrained.frozen_encoder_epochs` N trains the first N epochs with the
encoder frozen (`set_encoder_frozen`), so fresh heads do not send large gradients into it.
"""

from __future__ import annotations

import hashlib
import logging
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.common.labels import IGNORE_KEY
from nnlite.network.checkpoints import load_checkpoint
from nnlite.plans import Plans
from nnlite.training.config import PretrainedSettings, TrainConfig

log = logging.getLogger(__name__)

SEGMENTATION_HEADS = "decoder.heads."  # the 1×1 output convolutions, one per deep-supervision level
CLASSIFICATION_HEAD = "classifier."  # the case-class MLP (network/classifier.py)
RECORD_FILE = "pretrained.json"  # in the fold folder: which file the run started from, and the report
REPORT_WIDTH = 110  # characters per report line: the report fits one screen


@dataclass
class TransferReport:
    """What a pretrained state dict gives the new network, tensor by tensor (names of the new
    network; `not_used`: names of the pretrained one). Each entry of adapted, initialised and
    not_used carries its reason."""

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    not_used: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# the rule, on names and shapes


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """(F, C_old, *k) pretrained kernels → (F, C_new, *k): their mean over the C_old input channels,
    repeated C_new times and scaled by C_old / C_new.

    Why: the new channels correspond to none of the old ones, so each gets the filter the network
    applies to "the image" whatever the channel; the scale keeps the sum over input channels, so an
    input whose channels all show the same image gives exactly the pretrained response.
    """
    old = weight.shape[1]
    mean = weight.mean(dim=1, keepdim=True) * (old / channels)  # (F, 1, *k)
    return mean.repeat(1, channels, *([1] * (weight.ndim - 2))).contiguous()


def plan_transfer(target: Mapping[str, torch.Size], source: Mapping[str, torch.Size],
                  first_conv: str | None, reinitialised: Mapping[str, str]) -> TransferReport:
    """The report for state dicts of these shapes: `first_conv` names the input convolution's kernel
    (adapted when only its dimension 1 differs); `reinitialised` maps name prefixes to the reason
    their modules keep the fresh initialisation whatever the shapes."""
    report = TransferReport()
    for module, names in _by_module(target).items():
        forced = next((why for prefix, why in reinitialised.items() if module.startswith(prefix)), None)
        mismatch = [n for n in names if n not in source or source[n] != target[n]]
        if forced is not None:
            report.initialised.update(dict.fromkeys(names, forced))
        elif not mismatch:
            report.loaded += names
        elif mismatch == [first_conv] and _only_channels_differ(source.get(first_conv), target[first_conv]):
            report.loaded += [n for n in names if n != first_conv]
            old, new = source[first_conv][1], target[first_conv][1]
            report.adapted[first_conv] = (f"{_shape(source[first_conv])} → {_shape(target[first_conv])}: "
                                          f"the mean over {old} input channels, repeated to {new}, × {old}/{new}")
        else:
            report.initialised.update(dict.fromkeys(names, _why_not_loaded(mismatch[0], source, target)))
    for name in source:
        if name not in target:
            report.not_used[name] = next((why for prefix, why in reinitialised.items() if name.startswith(prefix)),
                                         "not in this network")
    return report


def _by_module(shapes: Mapping[str, torch.Size]) -> dict[str, list[str]]:
    modules: dict[str, list[str]] = {}
    for name in shapes:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    return modules


def _only_channels_differ(old: torch.Size | None, new: torch.Size) -> bool:
    return old is not None and len(old) == len(new) >= 3 and old[0] == new[0] and old[2:] == new[2:] and old[1] != new[1]


def _why_not_loaded(name: str, source: Mapping[str, torch.Size], target: Mapping[str, torch.Size]) -> str:
    if name not in source:
        return "not in the pretrained network"
    return f"shapes differ ({name.rpartition('.')[2]}: pretrained {_shape(source[name])}, here {_shape(target[name])})"


def _shape(size: Iterable[int]) -> str:
    return "(" + ", ".join(str(s) for s in size) + ")"


def changed_outputs(source_plan: Mapping[str, Any], plans: Plans) -> dict[str, str]:
    """{prefix: reason} for the heads whose classes differ between the pretrained plan (a checkpoint's
    `plan` dict) and `plans`: the segmentation heads (labels, by name and value, or regions) and
    the classification head (case classes)."""
    changed = {}
    old, new = _output_classes(source_plan), _output_classes(_jsonable_classes(plans))
    if old != new:
        changed[SEGMENTATION_HEADS] = (f"the output classes differ (pretrained: {_class_names(old)}; "
                                       f"here: {_class_names(new)})")
    old_cases, new_cases = list(source_plan.get("case_classes") or []), list(plans.case_classes)
    if old_cases != new_cases:
        changed[CLASSIFICATION_HEAD] = (f"the case classes differ (pretrained: {', '.join(old_cases) or 'none'}; "
                                        f"here: {', '.join(new_cases) or 'none'})")
    return changed


def _jsonable_classes(plans: Plans) -> dict[str, Any]:
    regions = [{"name": r.name, "labels": list(r.labels)} for r in plans.regions]
    return {"labels": dict(plans.labels), "regions": regions}


def _output_classes(plan: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """One (name, labels) per network output: regions, else the labels by value (no ignore label)."""
    regions = plan.get("regions") or []
    if regions:
        return tuple((r["name"], tuple(r["labels"])) for r in regions)
    labels = {name: value for name, value in (plan.get("labels") or {}).items() if name != IGNORE_KEY}
    return tuple(sorted(labels.items(), key=lambda item: item[1]))


def _class_names(classes: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(name for name, _ in classes) or "none"


# ------------------------------------------------------------------------------------------------
# applying it to a network


def first_convolution(network: nn.Module) -> str | None:
    """State-dict name of the first convolution's kernel (the one that reads the input channels)."""
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return f"{name}.weight"
    return None


def load_pretrained(network: nn.Module, plans: Plans, config_name: str, path: Path) -> tuple[TransferReport, dict]:
    """Transfer the weights of checkpoint `path` into `network` by the module's rule; returns the
    report and the checkpoint's description. Nothing is changed when the transfer is refused."""
    checkpoint = load_checkpoint(path)  # torch.load(weights_only=True), verified keys
    weights, target = checkpoint["network"], network.state_dict()
    shapes = {name: tensor.shape for name, tensor in target.items()}
    first = first_convolution(network)
    report = plan_transfer(shapes, {n: t.shape for n, t in weights.items()}, first,
                           changed_outputs(checkpoint["plan"], plans))
    refuse_outputs_only(report, weights, target, path, config_name)
    state = dict(target)
    state.update({name: weights[name] for name in report.loaded})
    state.update({name: adapt_input_channels(weights[name].float(), target[name].shape[1]).to(target[name].dtype)
                  for name in report.adapted})
    network.load_state_dict(state)
    return report, describe_source(checkpoint, path)


def refuse_outputs_only(report: TransferReport, source: Mapping[str, torch.Tensor],
                        target: Mapping[str, torch.Tensor], path: Path, config_name: str) -> None:
    """A UserError when no convolution kernel outside the heads would load or be adapted."""
    taken = set(report.loaded) | set(report.adapted)
    if any(_is_body_kernel(name, target[name]) for name in taken):
        return
    dims = [_kernel_dims(weights) for weights in (source, target)]
    why = (f"the pretrained kernels are {dims[0]}D, this network's {dims[1]}D" if dims[0] != dims[1] else
           "no convolution kernel has the same name and shape: another topology (plan this dataset with "
           "`plan RAW WORK --plans-from` the pretrained model's WORK)")
    raise UserError(path, f"nothing but the outputs would load into the {config_name} network ({why})")


def _is_body_kernel(name: str, tensor: torch.Tensor) -> bool:
    return tensor.ndim >= 3 and not name.startswith((SEGMENTATION_HEADS, CLASSIFICATION_HEAD))


def _kernel_dims(weights: Mapping[str, torch.Tensor]) -> int | None:
    return next((t.ndim - 2 for n, t in weights.items() if _is_body_kernel(n, t)), None)


def describe_source(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Which file, what it was trained on, and its sha256 (what the fold's record keeps)."""
    plan, config = checkpoint.get("plan") or {}, checkpoint.get("config") or {}
    return {"checkpoint": str(Path(path).resolve()), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "dataset": plan.get("dataset_name"), "configuration": config.get("configuration"),
            "epoch": int(checkpoint["epoch"])}


# ------------------------------------------------------------------------------------------------
# the report


def report_lines(report: TransferReport, source: Mapping[str, Any], n_tensors: int) -> list[str]:
    """One screen: what was loaded, adapted, initialised and not used, names grouped by module (every
    line but the file's path at most REPORT_WIDTH characters)."""
    taken = len(report.loaded) + len(report.adapted)
    lines = [f"pretrained weights: {source['checkpoint']}",
             f"  trained on {source['dataset']} ({source['configuration']}, epoch {source['epoch']}): "
             f"{taken} of this network's {n_tensors} tensors taken"]
    categories = (("loaded", dict.fromkeys(report.loaded, "")), ("adapted", report.adapted),
                  ("initialised", report.initialised), ("not used", report.not_used))
    for title, entries in categories:
        by_reason: dict[str, list[str]] = {}
        for name, why in entries.items():
            by_reason.setdefault(why, []).append(name)
        noun = ("pretrained " if title == "not used" else "") + ("tensor" if len(entries) == 1 else "tensors")
        count = f"{len(entries):>4} {noun}"
        groups = [f"{grouped(names)}{': ' + why if why else ''}" for why, names in by_reason.items()] or [""]
        lines += _wrapped(f"  {title:<12}{count}{': ' if groups[0] else ''}{groups[0]}")
        lines += [line for group in groups[1:] for line in _wrapped(f"{'':<{14 + len(count)}}  {group}")]
    return lines


def _wrapped(line: str) -> list[str]:
    """Lines of at most REPORT_WIDTH characters, continued under the names."""
    return textwrap.wrap(line, REPORT_WIDTH, subsequent_indent=" " * 24, break_on_hyphens=False,
                         drop_whitespace=True) if len(line) > REPORT_WIDTH else [line]


def grouped(names: Iterable[str]) -> str:
    """'encoder.stages.0.0.conv.weight', … → 'encoder.stages.{0-4} (40), decoder.heads.{0-3} (8)':
    by the first two name parts, with the indices of the third and the tensor count."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        groups.setdefault(".".join(parts[:2]), []).append(parts[2] if len(parts) > 3 else "")
    if not groups:
        return "-"
    if sum(len(v) for v in groups.values()) == 1:
        return next(iter(names))
    return ", ".join(f"{key}{_indices(found)} ({len(found)})" for key, found in groups.items())


def _indices(found: list[str]) -> str:
    numbers = sorted({int(i) for i in found if i.isdigit()})
    if not numbers or len(numbers) != len({i for i in found}):
        return ""
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f".{{{numbers[0]}-{numbers[-1]}}}"
    return ".{" + ",".join(map(str, numbers)) + "}"


# ------------------------------------------------------------------------------------------------
# what the trainer calls


def start_from_pretrained(network: nn.Module, plans: Plans, config: TrainConfig, folder: Path,
                          resumed: bool, is_main: bool = True) -> TransferReport | None:
    """A fresh run with `pretrained.checkpoint`: transfer, log the report (console and log.txt) and
    write it to `folder`/pretrained.json. A resumed run continues from its own checkpoint."""
    if resumed or config.pretrained.checkpoint is None:
        return None
    path = Path(config.pretrained.checkpoint)
    report, source = load_pretrained(network, plans, config.configuration, path)
    if is_main:
        for line in report_lines(report, source, len(network.state_dict())):
            log.info(line)
        record = {**source, "loaded": report.loaded, "adapted": report.adapted,
                  "initialised": report.initialised, "not_used": report.not_used,
                  "frozen_encoder_epochs": config.pretrained.frozen_encoder_epochs}
        write_json_atomic(Path(folder) / RECORD_FILE, record)
    return report


def set_encoder_frozen(network: nn.Module, config: TrainConfig, epoch: int) -> None:
    """Before `epoch`: the encoder takes no gradient during the first `frozen_encoder_epochs` epochs.

    A parameter without gradient is skipped by SGD (no step, no weight decay, no momentum) and
    backpropagation stops at the decoder, so a warm-up epoch is cheaper too."""
    frozen_epochs = config.pretrained.frozen_encoder_epochs
    if not frozen_epochs:
        return
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise UserError("pretrained.frozen_encoder_epochs", "this network has no `encoder` module to freeze")
    frozen = epoch < frozen_epochs
    if epoch in (0, frozen_epochs):
        log.info("encoder %s", f"frozen for epochs 1-{frozen_epochs} (warm-up)" if frozen else "trained from now on")
    for parameter in encoder.parameters():
        parameter.requires_grad_(not frozen)


def resumed_settings(config: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """A resume that names no pretrained settings keeps the checkpoint's (its record stays); given
    ones must match like any other setting."""
    if config.pretrained == PretrainedSettings():
        return replace(config, pretrained=saved.pretrained)
    return config

