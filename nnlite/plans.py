"""Plan data: the fingerprint of a dataset and the plans made from it. Data only, no logic.

Every class is a frozen dataclass with JSON-native fields; `__post_init__` checks consistency.
Spacings, shapes and patch sizes are in the axis order of the *preprocessed* data, i.e. after
`Plans.transpose` (the coarsest axis first), and in mm / voxels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlite.common.layout import PLANS_FILE, refuse_raw_dataset
from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked, write_json_atomic
from nnlite.common.labels import IGNORE_KEY, Region, ScoredClass, foreground_of, output_classes, scored_classes
from nnlite.common.schema import OMIT_DEFAULT, from_dict, to_jsonable

SCHEMA_VERSION = 1

NORMALIZATION_SCHEMES = ("zscore", "ct", "none", "rescale_0_1", "rgb_0_1")
ENCODER_TYPES = ("plain", "residual")
# NetworkPlan.architecture: "module.path:function" (the function may be a dotted attribute path)
ARCHITECTURE_FORMAT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_SPLINE_ORDER = 5  # the highest interpolation order scipy.ndimage.zoom supports
RAW_PATH_KEY = "raw_path"  # plans.extra: the raw dataset the plans were made from
FINGERPRINT_HASH_KEY = "fingerprint_sha256"  # plans.extra: hash of the fingerprint planned from
# ConfigurationPlan fields that change the preprocessed arrays: configurations that agree on them
# (and on data_identifier) share one preprocessed folder; batch, patch and network never matter.
DATA_FIELDS = ("spacing", "normalization", "use_mask_for_norm", "resampling_order_data",
               "resampling_order_seg", "resampling_order_z")


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel over the whole dataset."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    """What the planner needs of one training case (spacing/shapes in the raw (Z, Y, X) order)."""

    case: str
    spacing: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]

    @property
    def relative_size_after_crop(self) -> float:
        before = 1
        after = 1
        for b, a in zip(self.shape_before_crop, self.shape_after_crop):
            before *= b
            after *= a
        return after / before


@dataclass(frozen=True)
class Fingerprint:
    """Dataset fingerprint (`fingerprint.json`)."""

    cases: tuple[CaseFingerprint, ...]
    intensity_per_channel: dict[str, IntensityStats]
    channel_names: dict[str, str]
    labels: dict[str, int]
    median_relative_size_after_crop: float
    schema_version: int = SCHEMA_VERSION
    regions: tuple[Region, ...] = ()  # region-based training (data/regions.py); () for plain labels

    def __post_init__(self) -> None:
        _check_version(self.schema_version, "fingerprint")
        if not self.cases:
            raise UserError("fingerprint", "holds no cases")

    @property
    def num_classes(self) -> int:
        return output_classes(self.labels, self.regions)


@dataclass(frozen=True)
class NetworkPlan:
    """Topology of the U-Net: one stride and one kernel per stage (stage 0 has stride 1).

    `architecture` names the builder of the network, "module.path:function", called like
    `network.unet.build_unet` with `kwargs` added as keywords (`network/builders.py`); None (left
    out of plans.json) is the built-in U-Net, `nnlite.network.unet:build_unet`.
    """

    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    features_per_stage: tuple[int, ...]
    conv_per_stage: int = 2
    conv_per_stage_decoder: int = 2
    encoder: str = "plain"  # "plain" (PlainConvUNet, conv_per_stage) or "residual" (ResEnc: blocks_per_stage)
    blocks_per_stage: tuple[int, ...] = ()  # residual blocks per encoder stage (residual encoder only)
    attention_gates: bool = False  # additive attention gate on every skip connection (Oktay et al. 2018)
    class_head: int = 0  # case classes of the classification head on the bottleneck; 0: no head
    architecture: str | None = field(default=None, metadata={OMIT_DEFAULT: True})
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        n = len(self.strides)
        if n < 1 or len(self.kernel_sizes) != n or len(self.features_per_stage) != n:
            raise UserError(PLANS_FILE, "network needs one stride, kernel and width per stage")
        ndim = len(self.strides[0])
        if ndim not in (2, 3) or any(len(s) != ndim for s in self.strides + self.kernel_sizes):
            raise UserError(PLANS_FILE, "network strides/kernels need one entry per axis (2 or 3)")
        if any(s != 1 for s in self.strides[0]):
            raise UserError(PLANS_FILE, "stage 0 must have stride 1")
        if self.encoder not in ENCODER_TYPES:
            raise UserError(PLANS_FILE, f"unknown encoder '{self.encoder}'")
        if self.encoder == "residual" and len(self.blocks_per_stage) != n:
            raise UserError(PLANS_FILE, "a residual encoder needs blocks_per_stage per stage")
        if any(b < 1 for b in self.blocks_per_stage) or min(self.conv_per_stage, self.conv_per_stage_decoder) < 1:
            raise UserError(PLANS_FILE, "every stage needs at least one block / conv unit")
        if any(f < 1 for f in self.features_per_stage):
            raise UserError(PLANS_FILE, "features_per_stage must be positive")
        if self.class_head == 1 or self.class_head < 0:
            raise UserError(PLANS_FILE, "class_head must be 0 (no head) or at least 2 classes")
        if self.architecture is not None and not ARCHITECTURE_FORMAT.fullmatch(self.architecture):
            raise UserError(PLANS_FILE, f"network.architecture {self.architecture!r} is not "
                            "'module.path:function'")

    @property
    def ndim(self) -> int:
        return len(self.strides[0])

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def total_stride(self) -> tuple[int, ...]:
        """Product of the strides per axis: the patch must be divisible by it."""
        total = [1] * self.ndim
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return tuple(total)


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres)."""

    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    median_shape: tuple[int, ...]
    batch_size: int
    network: NetworkPlan
    normalization: tuple[str, ...]  # one scheme per input channel, see NORMALIZATION_SCHEMES
    use_mask_for_norm: tuple[bool, ...]
    batch_dice: bool
    data_identifier: str  # folder under WORK/preprocessed/ (the cascade reuses 3d_fullres)
    predicted_memory_bytes: int = 0
    resampling_order_data: int = 3
    resampling_order_seg: int = 1
    resampling_order_probabilities: int = 1
    resampling_order_z: int = 0
    previous_stage: str | None = None
    next_stage: str | None = None
    reasons: tuple[str, ...] = ()  # why each decision was made, in plain words
    # network axes mirrored at test time; None = every axis (a converted nnU-Net model keeps the
    # axes it was trained with, its checkpoint's inference_allowed_mirroring_axes)
    inference_mirror_axes: tuple[int, ...] | None = None
    # plans.json stores such a configuration as its parent's fields plus the ones it changes
    inherits_from: str | None = None

    def __post_init__(self) -> None:
        ndim = self.network.ndim
        if len(self.patch_size) != ndim or len(self.spacing) != ndim:
            raise UserError(PLANS_FILE, "patch_size and spacing need one entry per network axis")
        if any(p % t for p, t in zip(self.patch_size, self.network.total_stride)):
            raise UserError(PLANS_FILE, f"patch {self.patch_size} not divisible by the total stride")
        if len(self.normalization) != len(self.use_mask_for_norm):
            raise UserError(PLANS_FILE, "normalization and use_mask_for_norm differ in length")
        unknown = set(self.normalization) - set(NORMALIZATION_SCHEMES)
        if unknown:
            raise UserError(PLANS_FILE, f"unknown normalization scheme {sorted(unknown)[0]!r}")
        if self.batch_size < 1:
            raise UserError(PLANS_FILE, "batch_size must be ≥ 1")
        for name in ("resampling_order_data", "resampling_order_seg", "resampling_order_probabilities"):
            if not 0 <= getattr(self, name) <= MAX_SPLINE_ORDER:
                raise UserError(PLANS_FILE, f"{name} must be a spline order 0-{MAX_SPLINE_ORDER}, "
                                f"not {getattr(self, name)}")
        if self.inference_mirror_axes is not None and any(
                not 0 <= a < ndim for a in self.inference_mirror_axes):
            raise UserError(PLANS_FILE, f"inference_mirror_axes {self.inference_mirror_axes} are not "
                            f"axes of a {ndim}D network")
        if self.resampling_order_z != 0:
            raise UserError(PLANS_FILE, "resampling_order_z must be 0: only nearest neighbour is "
                            "supported along the coarse axis of anisotropic data")


@dataclass(frozen=True)
class Plans:
    """Everything `plans.json` holds."""

    dataset_name: str
    transpose: tuple[int, ...]  # raw (Z, Y, X) axis order → preprocessed axis order
    original_median_spacing: tuple[float, ...]  # after transpose
    original_median_shape: tuple[float, ...]  # after transpose
    configurations: dict[str, ConfigurationPlan]
    intensity_per_channel: dict[str, IntensityStats]
    channel_names: dict[str, str]
    labels: dict[str, int]
    gpu_memory_gb: float
    schema_version: int = SCHEMA_VERSION
    reasons: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()  # region-based training (data/regions.py); () for plain labels
    case_classes: tuple[str, ...] = ()  # case-level class names (dataset.json "classes"); () if none

    def __post_init__(self) -> None:
        _check_version(self.schema_version, PLANS_FILE)
        if sorted(self.transpose) != list(range(len(self.transpose))):
            raise UserError(PLANS_FILE, f"transpose {self.transpose} is not a permutation")
        folders: dict[str, str] = {}
        for name, config in self.configurations.items():
            if config.inherits_from is not None and config.inherits_from not in self.configurations:
                raise UserError(PLANS_FILE, f"{name} inherits from '{config.inherits_from}', which is not planned")
            other = folders.setdefault(config.data_identifier, name)
            differ = [f for f in DATA_FIELDS if getattr(config, f) != getattr(self.configurations[other], f)]
            if differ:
                raise UserError(PLANS_FILE, f"{name} and {other} share data_identifier "
                                f"'{config.data_identifier}' but differ in {', '.join(differ)}")

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(self.transpose.index(axis) for axis in range(len(self.transpose)))

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """Network outputs: one per region, else background plus every foreground label (not the
        ignore label)."""
        return output_classes(self.labels, self.regions)

    @property
    def ignore_label(self) -> int | None:
        """The label of unannotated voxels (dataset.json `"ignore"`), or None."""
        return self.labels.get(IGNORE_KEY)

    @property
    def foreground_labels(self) -> list[int]:
        """The labels that are scored and sampled: all but background and the ignore label."""
        return foreground_of(self.labels)

    @property
    def scored(self) -> tuple[ScoredClass, ...]:
        """The classes predictions are scored by (regions, else the foreground labels)."""
        return scored_classes(self.labels, self.regions)

    @property
    def sigmoid_outputs(self) -> bool:
        """The network outputs one sigmoid per region (a region dataset) instead of softmax classes."""
        return bool(self.regions)


def _check_version(version: int, where: str) -> None:
    if version != SCHEMA_VERSION:
        raise UserError(where, f"schema_version {version} is not supported (expected {SCHEMA_VERSION})")


def save_plans(plans: Plans, path: str | Path) -> None:
    """Write `plans.json`; a configuration with `inherits_from` is stored as only what it changes."""
    data = to_jsonable(plans)
    data["configurations"] = {name: _changes(config, data["configurations"])
                              for name, config in data["configurations"].items()}
    write_json_atomic(path, data)


def load_plans(path: str | Path) -> Plans:
    """Read `plans.json`; a missing or malformed file is a UserError naming it.

    A configuration `{"inherits_from": PARENT, ...}` is its parent's fields (resolved first, so
    chains work) deep-merged with its own. If it changes a field of DATA_FIELDS without naming its
    own data_identifier, it gets its own preprocessed folder (its name); otherwise it shares the
    parent's.
    """
    refuse_raw_dataset(Path(path).parent)
    data = read_json_checked(path)
    if isinstance(data, dict) and isinstance(data.get("configurations"), dict):
        try:
            data = {**data, "configurations": resolve_inheritance(data["configurations"])}
        except UserError as error:
            raise UserError(path, f"{error.where}: {error.problem}") from None
    try:
        return from_dict(Plans, data)
    except UserError as error:
        raise UserError(path, f"{error.where}: {error.problem}") from None


def resolve_inheritance(configs: dict[str, Any]) -> dict[str, Any]:
    """JSON configurations, some `{"inherits_from": NAME, <changed fields>}` → every one complete."""
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Any:
        if name in chain:
            raise UserError(f"configurations.{name}", f"inherits from itself ({' → '.join(chain + (name,))})")
        if name not in resolved:
            own = configs[name]
            parent = own.get("inherits_from") if isinstance(own, dict) else None
            if parent is None:
                resolved[name] = own
            elif parent not in configs:
                raise UserError(f"configurations.{name}", f"inherits from '{parent}', which is not planned")
            else:
                base = resolve(parent, chain + (name,))
                merged = _deep_merge(base, own)
                if "data_identifier" not in own and any(merged.get(f) != base.get(f) for f in DATA_FIELDS):
                    merged["data_identifier"] = name  # other arrays: its own folder
                resolved[name] = merged
        return resolved[name]

    return {name: resolve(name, ()) for name in configs}


def _deep_merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = _deep_merge(base[key], value)
        merged[key] = value
    return merged


def _changes(config: dict[str, Any], configs: dict[str, Any]) -> dict[str, Any]:
    """A JSON configuration → itself, or for an inheriting one `inherits_from` + what differs."""
    parent = config.get("inherits_from")
    if parent is None or parent not in configs:
        return config
    return {"inherits_from": parent, **_differences(config, configs[parent])}


def _differences(own: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, value in own.items():
        if key == "inherits_from" or base.get(key) == value:
            continue
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        changed[key] = _differences(value, base[key]) if both_dicts else value
    return changed


def save_fingerprint(fingerprint: Fingerprint, path: str | Path) -> None:
    write_json_atomic(path, to_jsonable(fingerprint))


def load_fingerprint(path: str | Path) -> Fingerprint:
    return _load(Fingerprint, path)


def _load(cls: type, path: str | Path):
    data = read_json_checked(path)
    try:
        return from_dict(cls, data)
    except UserError as error:
        raise UserError(path, f"{error.where}: {error.problem}") from None
