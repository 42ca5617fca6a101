"""Training settings: frozen dataclasses loaded from `configs/<name>.yaml` plus `--set KEY=VALUE`.

Variation is data, not subclasses: `--set training.initial_lr=3e-3` or a YAML file. The resolved
settings are written next to the results (`config.json`) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from nnlite.common.errors import UserError, did_you_mean
from nnlite.common.schema import OMIT_DEFAULT, flat_settings, from_dict, to_jsonable

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # nnlite/configs/ (package data)
LR_STEPS = ("epoch", "iteration")
# YAML 1.1 reads `3e-3` (no dot) as a string; this pattern makes it the float a person means.
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_ON = ("auto", "cpu", "device")  # where training batches are augmented (nnlite.loading.device_augmentation)
AMP_MODES = ("auto", "bf16", "fp16", "off")  # autocast dtype of training (precision.amp_dtype)
COMPILE_MODES = ("auto", "on", "off")  # torch.compile of the network; auto: on for CUDA
TRACKING_BACKENDS = ("tensorboard", "mlflow", "wandb")  # logging.backends (training/tracking.py)


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation and schedule (nnU-Net's nnUNetTrainer defaults in configs/default.yaml)."""

    epochs: int = 1000  # nnU-Net: num_epochs
    iters_per_epoch: int = 250  # nnU-Net: num_iterations_per_epoch
    val_iters: int = 50  # nnU-Net: num_val_iterations_per_epoch
    batch_size: int | None = None  # None: the plan's batch size
    initial_lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9  # lr = initial_lr * (1 - step / total) ** poly_exponent
    lr_step: str = "epoch"  # "epoch" (nnU-Net) or "iteration" (smoother for short schedules)
    grad_clip: float = 12.0  # max L2 norm over all gradients
    ema_momentum: float = 0.9  # ema = m * ema + (1 - m) * pseudo-Dice
    amp: str = "auto"  # auto: bf16 (fp16 without it) on CUDA, bf16 on a CPU with bf16 instructions
    compile: str = "auto"  # torch.compile the network: on, off, auto = on for CUDA
    class_loss_weight: float = 1.0  # classification head (case classes): its loss relative to Dice + CE

    def __post_init__(self) -> None:
        _check_choice("training.lr_step", self.lr_step, LR_STEPS)
        _check_range("training.class_loss_weight", self.class_loss_weight, self.class_loss_weight >= 0, "≥ 0")
        _check_choice("training.amp", self.amp, AMP_MODES)
        _check_choice("training.compile", self.compile, COMPILE_MODES)
        for name, lowest in (("epochs", 1), ("iters_per_epoch", 1), ("val_iters", 0)):
            _check_range(f"training.{name}", getattr(self, name), lowest <= getattr(self, name), f"≥ {lowest}")
        if self.batch_size is not None:
            _check_range("training.batch_size", self.batch_size, self.batch_size >= 1, "≥ 1")
        for name in ("initial_lr", "poly_exponent", "grad_clip"):
            _check_range(f"training.{name}", getattr(self, name), getattr(self, name) > 0, "> 0")
        for name in ("momentum", "ema_momentum"):
            _check_range(f"training.{name}", getattr(self, name), 0 <= getattr(self, name) < 1, "in [0, 1)")
        _check_range("training.weight_decay", self.weight_decay, self.weight_decay >= 0, "≥ 0")


@dataclass(frozen=True)
class DataSettings:
    """Patch sampling and augmentation."""

    oversample_foreground: float = 0.33  # share of each batch forced to contain foreground
    augment: bool = True
    workers: int | None = None  # loader processes (None: the CPU count, at most 8; 0: in the training process)
    augment_on: str = "auto"  # cpu: loader workers; device: batched on the device; auto: device on CUDA

    def __post_init__(self) -> None:
        _check_range("data.oversample_foreground", self.oversample_foreground,
                     0.0 <= self.oversample_foreground <= 1.0, "in [0, 1]")
        if self.workers is not None:
            _check_range("data.workers", self.workers, self.workers >= 0, "≥ 0")
        _check_choice("data.augment_on", self.augment_on, AUGMENT_ON)


@dataclass(frozen=True)
class CheckpointSettings:
    every: int = 1  # epochs between checkpoint_latest.pt saves (nnU-Net: 50)

    def __post_init__(self) -> None:
        _check_range("checkpoint.every", self.every, self.every >= 1, "≥ 1")


@dataclass(frozen=True)
class ValidationSettings:
    """The final validation: full sliding-window prediction of the fold's validation cases."""

    enabled: bool = True
    step: float = 0.5  # tile step as a fraction of the patch
    mirroring: bool = True
    save_probabilities: bool = True  # validation/<case>.npz, for ensembling

    def __post_init__(self) -> None:
        _check_range("validation.step", self.step, 0 < self.step <= 1, "in (0, 1]")


@dataclass(frozen=True)
class DistributedSettings:
    """Multi-process training under torchrun (nnlite.training.distributed)."""

    timeout_minutes: float = 30.0  # a collective waiting longer than this for a rank fails the job

    def __post_init__(self) -> None:
        _check_range("distributed.timeout_minutes", self.timeout_minutes, self.timeout_minutes > 0, "> 0")


@dataclass(frozen=True)
class PretrainedSettings:
    """Fine-tuning from another model's weights (training/pretrained.py, docs/finetuning.md)."""

    checkpoint: str | None = None  # an nnlite checkpoint_*.pt (`train --pretrained`); None: from scratch
    frozen_encoder_epochs: int = 0  # warm-up: the first N epochs train the decoder and heads only

    def __post_init__(self) -> None:
        _check_range("pretrained.frozen_encoder_epochs", self.frozen_encoder_epochs,
                     self.frozen_encoder_epochs >= 0, "≥ 0")
        if self.frozen_encoder_epochs and self.checkpoint is None:
            raise UserError("pretrained.frozen_encoder_epochs", "freezes a pretrained encoder: give "
                            "pretrained.checkpoint too (train --pretrained CHECKPOINT)")


@dataclass(frozen=True)
class LoggingSettings:
    """Experiment trackers that receive what metrics.jsonl logs (training/tracking.py)."""

    backends: tuple[str, ...] = ()  # any of tensorboard, mlflow, wandb (each an optional extra)

    def __post_init__(self) -> None:
        for name in self.backends:
            _check_choice("logging.backends", name, TRACKING_BACKENDS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved in `config.json` and in each checkpoint."""

    configuration: str = "3d_fullres"
    fold: str = "0"  # a fold of splits.json ("0", "1", …) or "all"
    seed: int | None = None  # None: drawn at start and saved, so a resume stays exact
    device: str = "auto"
    deterministic: bool = True  # torch.use_deterministic_algorithms on CPU (bit-exact resume)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    data: DataSettings = field(default_factory=DataSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)
    # left out of config.json and checkpoints while no tracker is named (runs without keep their bytes)
    logging: LoggingSettings = field(default_factory=LoggingSettings, metadata={OMIT_DEFAULT: True})
    # left out of config.json and checkpoints while unused (runs from scratch keep their bytes)
    pretrained: PretrainedSettings = field(default_factory=PretrainedSettings, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)
        if not (self.fold == "all" or self.fold.isdigit()):
            raise UserError("fold", f"expected a fold number of splits.json or 'all', got {self.fold!r}")
        if self.seed is not None:
            _check_range("seed", self.seed, 0 <= self.seed, "≥ 0")


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(key, f"expected one of {', '.join(choices)}, got {value!r}")


def _check_range(key: str, value: float, ok: bool, expected: str) -> None:
    """`ok` is False for NaN as for any value outside the range."""
    if not ok:
        raise UserError(key, f"expected a value {expected}, got {value!r}")


# Settings that may change when a run is resumed: they do not change what is computed
# (epochs: extending a finished run is the point of `--resume --epochs N`).
RESUMABLE_CHANGES = ("training.epochs", "data.workers", "data.augment_on", "device", "validation.enabled",
                     "training.compile", "distributed.timeout_minutes", "logging.backends")


def load_train_config(source: str | Path = "default", overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (a path, or a name in nnlite/configs/) and apply `KEY=VALUE` overrides."""
    path = Path(source)
    if not path.suffix:
        path = CONFIG_DIR / f"{source}.yaml"
    if not path.is_file():
        raise UserError(path, "training config not found")
    try:
        data = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(path, f"not valid YAML ({error})") from None
    given = {_apply_override(data, override): override for override in overrides}
    try:
        return config_from_dict(data, where="")
    except UserError as error:  # name where the bad value came from: --set KEY=VALUE or the file
        if error.where in given:
            raise UserError(f"--set {given[error.where]}", error.problem) from None
        raise UserError(path, f"{error.where}: {error.problem}") from None


def config_from_dict(data: dict[str, Any], where: str = "TrainConfig") -> TrainConfig:
    """Build a TrainConfig from a (partial) dict; unknown keys are errors naming the key."""
    data = dict(data)
    if "fold" in data:
        data["fold"] = str(data["fold"])
    return from_dict(TrainConfig, data, where)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return to_jsonable(config)


def replace_setting(config: TrainConfig, key: str, value: Any) -> TrainConfig:
    """Return a copy with dotted `key` set to `value` (validated like a YAML entry)."""
    data = config_to_dict(config)
    _set_dotted(data, key, value)
    return config_from_dict(data)


def config_differences(old: TrainConfig, new: TrainConfig, ignore: Sequence[str] = ()) -> list[str]:
    """Human-readable `key: old → new` lines for every setting that differs."""
    flat_old, flat_new = flat_settings(config_to_dict(old)), flat_settings(config_to_dict(new))
    return [f"{key}: {flat_old.get(key)!r} → {flat_new.get(key)!r}"
            for key in sorted(set(flat_old) | set(flat_new))
            if key not in ignore and flat_old.get(key) != flat_new.get(key)]


def _apply_override(data: dict[str, Any], override: str) -> str:
    """Set one `KEY=VALUE` (the value read as YAML) in `data`; returns the key."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise UserError(f"--set {override}", "expected KEY=VALUE")
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError:
        value = text
    _set_dotted(data, key.strip(), value)
    return key.strip()


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
# YAML 1.1 also reads on/off/yes/no as booleans; only true/false are (so `compile: off` is text).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cls: Any = TrainConfig
    node = data
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            raise UserError(f"--set {key}", f"unknown setting '{'.'.join(parts[:depth + 1])}'"
                                            + suggest_setting(key))
        if depth == len(parts) - 1:
            break
        cls = fields[part].default_factory  # every section has a dataclass default factory
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}", f"'{part}' is not a section")
    if dataclasses.is_dataclass(fields[parts[-1]].default_factory):
        raise UserError(f"--set {key}", "is a section; set one of its keys")
    node[parts[-1]] = value


def suggest_setting(key: str) -> str:
    """` (did you mean 'training.initial_lr'?)` for a mistyped or section-less `--set` key."""
    known = list(flat_settings(config_to_dict(TrainConfig())))
    same_leaf = [name for name in known if name.endswith("." + key)]  # `initial_lr` without its section
    return f" (did you mean '{same_leaf[0]}'?)" if len(same_leaf) == 1 else did_you_mean(key, known)
