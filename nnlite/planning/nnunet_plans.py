"""Translate nnU-Net v2's plans (`nnUNetPlans.json`, a trained model's `plans.json`) into nnlite's `Plans`.

nnU-Net's plans are raw dicts (docs/planning.md); this module reads exactly the keys
that decide the data and the network and refuses, naming the key, anything nnlite would compute
differently (another network class, normalization, nonlinearity or norm; dropout; a forced
separate-z resampling). Configuration names are kept as nnU-Net wrote them. A configuration with
`inherits_from` is resolved the way nnU-Net's PlansManager resolves it — the parent's resolved
keys, then the child's own keys on top (a shallow `dict.update`) — into a full configuration.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from nnlite.common.layout import PLANS_FILE
from nnlite.common.errors import UserError
from nnlite.common.files import read_json_checked
from nnlite.data.dataset import labels_and_regions
from nnlite.data.orientation import PLANS_KEY as ORIENTATION_KEY
from nnlite.data.orientation import reader_orientation
from nnlite.planning.presets import PRESETS
from nnlite.plans import DATA_FIELDS, ConfigurationPlan, IntensityStats, NetworkPlan, Plans

NORMALIZATION_NAMES = {  # nnU-Net class name → nnlite scheme
    "ZScoreNormalization": "zscore",
    "CTNormalization": "ct",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_0_1",
    "RGBTo01Normalization": "rgb_0_1",
}
ENCODERS = {"PlainConvUNet": "plain", "ResidualEncoderUNet": "residual"}
NORM_OPS = ("InstanceNorm2d", "InstanceNorm3d")
NONLINEARITIES = ("LeakyReLU",)
SOURCE_KEY = "nnunet_plans"  # plans.extra: the nnU-Net plans name the plans were translated from
# nnU-Net's resampling function that nnlite's preprocessing/resampling.py implements (scipy splines,
# separate z by the anisotropy rule); resample_torch_*, no_resampling_hack etc. are refused
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
# the default of its separate_z_anisotropy_threshold, which nnlite's resampling uses too (the same
# value as preprocessing/resampling.ANISOTROPY_THRESHOLD, which planning cannot import)
ANISOTROPY_THRESHOLD = 3.0
READER_KEYS = ("image_reader_writer", "overwrite_image_reader_writer")  # plans.json, dataset.json


def read_nnunet_plans(path: str | Path) -> dict[str, Any]:
    """nnU-Net's plans file as a dict; something else (e.g. an nnlite plans.json) is an error."""
    plans = read_json_checked(path)
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict) \
            or "transpose_forward" not in plans:
        raise UserError(path, "is not an nnU-Net v2 plans file (no 'configurations' and 'transpose_forward')")
    return plans


def resolve_configuration(configurations: dict[str, dict], name: str, seen: tuple[str, ...] = ()) -> dict:
    """A configuration with its `inherits_from` chain resolved as nnU-Net does (parent, then own keys)."""
    if name not in configurations:
        raise UserError(PLANS_FILE, f"configuration {name!r} (inherited by {seen[-1]!r}) is not in the plans"
                        if seen else f"configuration {name!r} is not in the plans")
    if name in seen:
        raise UserError(PLANS_FILE, f"configurations inherit in a circle: {' → '.join(seen + (name,))}")
    own = dict(configurations[name])
    parent = own.pop("inherits_from", None)
    if parent is None:
        return own
    return {**resolve_configuration(configurations, parent, seen + (name,)), **own}


def _get(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise UserError(where, f"missing key {key!r}")
    return mapping[key]


def _short(dotted: str | None) -> str | None:
    return None if dotted is None else str(dotted).rsplit(".", 1)[-1]


def network_from_architecture(architecture: dict, where: str) -> NetworkPlan:
    """`architecture` {network_class_name, arch_kwargs} → NetworkPlan, or a UserError naming what differs."""
    class_name = _get(architecture, "network_class_name", where)
    encoder = ENCODERS.get(_short(class_name))
    if encoder is None:
        raise UserError(where, f"network class {class_name!r} cannot be converted (nnlite builds "
                        f"{', '.join(ENCODERS)})")
    kw = _get(architecture, "arch_kwargs", where)
    _check_layers(kw, where)
    n = int(_get(kw, "n_stages", where))
    decoder_convs = set(_get(kw, "n_conv_per_stage_decoder", where))
    encoder_convs = set(kw.get("n_conv_per_stage", [2])) if encoder == "plain" else {2}  # ResEnc: blocks
    if len(decoder_convs) != 1 or len(encoder_convs) != 1:
        raise UserError(where, "nnlite needs the same number of convs in every stage "
                        f"(encoder {sorted(encoder_convs)}, decoder {sorted(decoder_convs)})")
    blocks = tuple(kw["n_blocks_per_stage"]) if encoder == "residual" else ()
    return NetworkPlan(strides=_tuples(_get(kw, "strides", where), n), kernel_sizes=_tuples(kw["kernel_sizes"], n),
                       features_per_stage=tuple(int(f) for f in kw["features_per_stage"]),
                       conv_per_stage=encoder_convs.pop(), conv_per_stage_decoder=decoder_convs.pop(),
                       encoder=encoder, blocks_per_stage=blocks)


def architecture_of(config: dict, where: str) -> dict:
    """The `architecture` entry; plans written before nnU-Net v2.4 describe the same network with
    flat keys (UNet_class_name, UNet_base_num_features, conv_kernel_sizes, pool_op_kernel_sizes, …)."""
    if "architecture" in config or "UNet_class_name" not in config:
        return _get(config, "architecture", where)
    kernels, strides = config["conv_kernel_sizes"], config["pool_op_kernel_sizes"]
    base, cap = int(config["UNet_base_num_features"]), int(config["unet_max_num_features"])
    ndim, n = len(kernels[0]), len(kernels)
    per_stage = "n_conv_per_stage" if config["UNet_class_name"].endswith("PlainConvUNet") else "n_blocks_per_stage"
    return {"network_class_name": config["UNet_class_name"], "arch_kwargs": {
        "n_stages": n, "features_per_stage": [min(base * 2**i, cap) for i in range(n)],
        "kernel_sizes": kernels, "strides": strides,
        per_stage: config.get("n_conv_per_stage_encoder", [2] * n),
        "n_conv_per_stage_decoder": config.get("n_conv_per_stage_decoder", [2] * (len(kernels) - 1)),
        "conv_bias": True, "norm_op": f"torch.nn.InstanceNorm{ndim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "nonlin": "torch.nn.LeakyReLU"}}


def _tuples(values: Any, n: int) -> tuple[tuple[int, ...], ...]:
    """[[1, 1, 1], [2, 2, 2]] (or per-stage ints for isotropic values) → tuples, one per stage."""
    return tuple(tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
                 for value in values[:n])


def _check_layers(kw: dict, where: str) -> None:
    """Only the layers nnlite's U-Net has: conv with bias, affine InstanceNorm, LeakyReLU, no dropout."""
    problems = []
    if _short(kw.get("norm_op")) not in NORM_OPS:
        problems.append(f"norm_op {kw.get('norm_op')!r} (nnlite uses InstanceNorm)")
    if _short(kw.get("nonlin")) not in NONLINEARITIES:
        problems.append(f"nonlin {kw.get('nonlin')!r} (nnlite uses LeakyReLU)")
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 1e-2)
    if slope != 1e-2:
        problems.append(f"LeakyReLU negative_slope {slope} (nnlite uses 0.01)")
    if kw.get("dropout_op") is not None:
        problems.append(f"dropout_op {kw['dropout_op']!r} (nnlite has no dropout)")
    if not kw.get("conv_bias", False):
        problems.append("conv_bias false (nnlite's convs have a bias)")
    norm_kwargs = kw.get("norm_op_kwargs") or {}
    if not norm_kwargs.get("affine", False) or norm_kwargs.get("eps", 1e-5) != 1e-5:
        problems.append(f"norm_op_kwargs {norm_kwargs} (nnlite: eps 1e-5, affine)")
    if problems:
        raise UserError(where, "cannot convert " + "; ".join(problems))


def configuration_from_nnunet(name: str, config: dict, n_channels: int) -> ConfigurationPlan:
    """One resolved nnU-Net configuration → ConfigurationPlan (the name is kept by the caller)."""
    where = f"plans.json: configurations.{name}"
    schemes = []
    for scheme in _get(config, "normalization_schemes", where):
        if scheme not in NORMALIZATION_NAMES:
            raise UserError(where, f"normalization {scheme!r} cannot be converted (nnlite has "
                            f"{', '.join(NORMALIZATION_NAMES)})")
        schemes.append(NORMALIZATION_NAMES[scheme])
    if len(schemes) != n_channels:
        raise UserError(where, f"{len(schemes)} normalization schemes for {n_channels} channels")
    orders = {key: _resampling_order(config, key, where) for key in ("data", "seg", "probabilities")}
    return ConfigurationPlan(
        spacing=tuple(float(s) for s in _get(config, "spacing", where)),
        patch_size=tuple(int(p) for p in _get(config, "patch_size", where)),
        median_shape=tuple(int(round(m)) for m in config.get("median_image_size_in_voxels",
                                                              config["patch_size"])),
        batch_size=int(_get(config, "batch_size", where)),
        network=network_from_architecture(architecture_of(config, where), where),
        normalization=tuple(schemes), use_mask_for_norm=tuple(bool(m) for m in config["use_mask_for_norm"]),
        batch_dice=bool(config.get("batch_dice", False)),
        data_identifier=str(_get(config, "data_identifier", where)),
        resampling_order_data=orders["data"], resampling_order_seg=orders["seg"],
        resampling_order_probabilities=orders["probabilities"],
        previous_stage=config.get("previous_stage"), next_stage=_next_stage(config.get("next_stage")),
        reasons=(f"translated from nnU-Net's configuration {name!r}",))


def _resampling_order(config: dict, kind: str, where: str) -> int:
    """The spline order of nnU-Net's resampling function for `kind` (data, seg, probabilities).
    Only the function nnlite's resampling implements is accepted, with the kwargs it implements:
    separate-z left automatic (None; the function's own default, used when the key is absent, is
    False = never), order_z 0, nnU-Net's anisotropy threshold, is_seg as nnU-Net plans it."""
    function = config.get(f"resampling_fn_{kind}", RESAMPLING_FUNCTION)
    if _short(function) != RESAMPLING_FUNCTION:
        raise UserError(where, f"resampling_fn_{kind} {function!r} cannot be converted (nnlite implements "
                        f"{RESAMPLING_FUNCTION} only)")
    key = f"resampling_fn_{kind}_kwargs"
    kwargs = config.get(key) or {}
    separate_z = kwargs.get("force_separate_z", False)  # the function's default when absent
    if separate_z is not None:
        raise UserError(where, f"{key}.force_separate_z = {separate_z} cannot be converted (nnlite decides "
                        "separate-z by the anisotropy rule, as nnU-Net does with None)")
    if kwargs.get("order_z", 0) != 0:
        raise UserError(where, f"{key}.order_z must be 0 for nnlite")
    threshold = kwargs.get("separate_z_anisotropy_threshold", ANISOTROPY_THRESHOLD)
    if threshold != ANISOTROPY_THRESHOLD:
        raise UserError(where, f"{key}.separate_z_anisotropy_threshold = {threshold} cannot be converted "
                        f"(nnlite uses {ANISOTROPY_THRESHOLD})")
    if bool(kwargs.get("is_seg", False)) != (kind == "seg"):
        raise UserError(where, f"{key}.is_seg = {kwargs.get('is_seg', False)} cannot be converted (nnlite "
                        "resamples segmentations, and only them, as label maps)")
    return int(kwargs.get("order", {"data": 3, "seg": 1, "probabilities": 1}[kind]))


def _next_stage(value: Any) -> str | None:
    """nnU-Net writes one next stage as a string (older plans: a list with one entry)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def kept_inheritance(configs: dict[str, ConfigurationPlan], raw: dict[str, dict]) -> dict[str, ConfigurationPlan]:
    """A configuration nnU-Net wrote with `inherits_from` stays an inheriting one (plans.json then
    stores only what it changes) when its parent is converted too; else it stands alone, resolved."""
    return {name: replace(config, inherits_from=raw[name]["inherits_from"])
            if raw[name].get("inherits_from") in configs else config for name, config in configs.items()}


def own_data_folders(configs: dict[str, ConfigurationPlan]) -> dict[str, ConfigurationPlan]:
    """nnU-Net lets an inheriting configuration change normalization or spacing yet keep its parent's
    data_identifier (both would then read one preprocessed folder); nnlite gives such a configuration
    a folder of its own, named after it."""
    first: dict[str, ConfigurationPlan] = {}
    for name, config in configs.items():
        seen = first.setdefault(config.data_identifier, config)
        if any(getattr(config, f) != getattr(seen, f) for f in DATA_FIELDS):
            configs[name] = replace(config, data_identifier=f"{config.data_identifier}_{name}")
    return configs


def plans_from_nnunet(nnunet: dict, dataset: dict, configurations: list[str] | None = None) -> Plans:
    """nnU-Net plans dict + dataset.json dict → Plans with every (or the named) configuration resolved."""
    # region-based: one sigmoid output per region, painted in regions_class_order
    labels, regions = labels_and_regions("dataset.json", dataset, lambda _, plain: plain or {})
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not channels:
        raise UserError("dataset.json", "missing key 'channel_names'")
    raw = nnunet["configurations"]
    names = configurations or list(raw)
    configs = {name: configuration_from_nnunet(name, resolve_configuration(raw, name), len(channels))
               for name in names}
    configs = own_data_folders(kept_inheritance(configs, raw))
    stats = {channel: IntensityStats(**{k: float(v) for k, v in values.items()
                                        if k in IntensityStats.__dataclass_fields__})
             for channel, values in nnunet.get("foreground_intensity_properties_per_channel", {}).items()}
    return Plans(
        dataset_name=str(nnunet.get("dataset_name", dataset.get("name", "dataset"))),
        transpose=tuple(int(a) for a in nnunet["transpose_forward"]),
        original_median_spacing=tuple(float(s) for s in nnunet["original_median_spacing_after_transp"]),
        original_median_shape=tuple(float(s) for s in nnunet["original_median_shape_after_transp"]),
        configurations=configs, intensity_per_channel=stats,
        channel_names={str(k): str(v) for k, v in channels.items()},
        labels={str(k): int(v) for k, v in labels.items()}, regions=regions,
        gpu_memory_gb=PRESETS["default"].gpu_memory_gb,  # nnU-Net's plans do not record their budget
        reasons=(f"translated from nnU-Net's plans {nnunet.get('plans_name', '?')!r}; configurations "
                 "with inherits_from kept as inheriting configurations",),
        extra={SOURCE_KEY: str(nnunet.get("plans_name", ""))})


def reader_settings(nnunet: dict, dataset: dict) -> dict[str, str]:
    """plans.extra entries for the reader a trained nnU-Net model read its cases with: the plans'
    `image_reader_writer` (what nnU-Net's predictor uses), else dataset.json's
    `overwrite_image_reader_writer` (what chose it), else none (chosen by file ending). A reader
    that reorients gives {"orientation": "RAS"}; one nnlite cannot honour is a UserError."""
    for key, source, where in zip(READER_KEYS, (nnunet, dataset), (PLANS_FILE, "dataset.json")):
        reader = source.get(key)
        if reader is not None and reader != "None":  # nnU-Net reads the string "None" as no reader
            orientation = reader_orientation(f"{where}: {key}", _short(str(reader)))
            return {ORIENTATION_KEY: orientation} if orientation else {}
    return {}
