"""Rename the weights of an nnU-Net v2 network (dynamic_network_architectures) onto `build_unet`'s modules.

The two networks compute the same function with the same tensors; only the module paths differ.
The renaming is a table of key templates, one row per kind of tensor: `{s}` stage, `{u}` unit,
`{b}` residual block, `{i}` decoder level (both count bottom-up: 0 is just above the bottleneck),
`{k}` position in a residual skip, `{layer}` conv or norm, `{p}` weight or bias. A template
placeholder written `{k+1}` is that number plus one (nnU-Net wraps the skip's 1×1 conv and its
norm in one unit; nnlite keeps them as two modules of the skip Sequential).

nnU-Net's state dict also holds every tensor twice more: under `…all_modules.<n>…` (each unit
keeps its layers in a Sequential as well) and under `decoder.encoder.…` (its decoder keeps a
reference to the encoder). Those aliases are dropped after checking that they equal the tensor
they alias. A key that matches no row is an error naming the key, never silently ignored.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from nnlite.common.layout import PLANS_FILE
from nnlite.common.errors import UserError

PLAIN_CLASS = "PlainConvUNet"
RESIDUAL_CLASS = "ResidualEncoderUNet"

DECODER_RULES = (
    ("decoder.transpconvs.{i}.{p}", "decoder.levels.{i}.up.{p}"),
    ("decoder.stages.{i}.convs.{u}.{layer}.{p}", "decoder.levels.{i}.convs.{u}.{layer}.{p}"),
    ("decoder.seg_layers.{i}.{p}", "decoder.heads.{i}.{p}"),
)
# nnU-Net key template → nnlite key template, per architecture class
RULES = {
    PLAIN_CLASS: (
        ("encoder.stages.{s}.0.convs.{u}.{layer}.{p}", "encoder.stages.{s}.{u}.{layer}.{p}"),
        *DECODER_RULES,
    ),
    RESIDUAL_CLASS: (
        ("encoder.stem.convs.0.{layer}.{p}", "encoder.stem.{layer}.{p}"),
        ("encoder.stages.{s}.blocks.{b}.{conv}.{layer}.{p}", "encoder.stages.{s}.{b}.{conv}.{layer}.{p}"),
        # nnlite's skip.{k}.weight is the 1×1 conv's (a 3D/5D tensor) or the norm's (1D): the reverse
        # renaming (`nnlite_to_nnunet`) tells them apart by the tensor's number of dimensions.
        ("encoder.stages.{s}.blocks.{b}.skip.{k}.conv.weight", "encoder.stages.{s}.{b}.skip.{k}.weight"),
        ("encoder.stages.{s}.blocks.{b}.skip.{k}.norm.{p}", "encoder.stages.{s}.{b}.skip.{k+1}.{p}"),
        *DECODER_RULES,
    ),
}
PLACEHOLDERS = {"layer": "conv|norm", "p": "weight|bias", "conv": "conv1|conv2"}  # others: numbers
ALIAS_PATTERNS = (re.compile(r"(^|\.)all_modules\.\d+\."), re.compile(r"^decoder\.encoder\."))
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _compile(template: str) -> re.Pattern:
    """'a.{s}.{k+1}.w' → a regex with one named group per placeholder ('k_plus_1' for {k+1})."""
    pattern, pos = "", 0
    for match in re.finditer(r"\{(\w+)(\+1)?\}", template):
        pattern += re.escape(template[pos:match.start()])
        name, plus = match.group(1), match.group(2)
        group = f"{name}_plus_1" if plus else name
        pattern += f"(?P<{group}>{PLACEHOLDERS.get(name, '[0-9]+')})"
        pos = match.end()
    return re.compile(pattern + re.escape(template[pos:]) + "$")


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill a template from the groups of the other side ({k+1} ↔ k_plus_1 differ by one)."""
    def value(match: re.Match) -> str:
        name, plus = match.group(1), match.group(2)
        if plus:
            return str(int(values[name]) + 1) if name in values else values[f"{name}_plus_1"]
        if name in values:
            return values[name]
        return str(int(values[f"{name}_plus_1"]) - 1)
    return re.sub(r"\{(\w+)(\+1)?\}", value, template)


def rename_key(key: str, rules: tuple[tuple[str, str], ...], to_nnlite: bool = True,
               tensor_dims: int | None = None) -> str | None:
    """One key renamed by the first matching row (None when no row matches).

    tensor_dims: the tensor's number of dimensions; nnlite → nnU-Net skips the conv row for a 1D
    (norm) tensor, the only place where nnlite's names alone are ambiguous.
    """
    for nnunet, nnlite in rules:
        if not to_nnlite and tensor_dims == 1 and nnunet.endswith(".conv.weight"):
            continue
        source, target = (nnunet, nnlite) if to_nnlite else (nnlite, nnunet)
        match = _compile(source).match(key)
        if match:
            return _fill(target, match.groupdict())
    return None


def architecture_rules(class_name: str) -> tuple[tuple[str, str], ...]:
    """The rows for nnU-Net's `network_class_name` (dotted or short); other classes are an error."""
    short = class_name.rsplit(".", 1)[-1]
    if short not in RULES:
        raise UserError(PLANS_FILE, f"network class {class_name!r} cannot be converted (nnlite converts "
                        f"{', '.join(RULES)})")
    return RULES[short]


def nnunet_to_nnlite(state: Mapping[str, torch.Tensor], class_name: str) -> dict[str, torch.Tensor]:
    """nnU-Net `network_weights` → a state dict for `build_unet` (aliases checked, then dropped)."""
    rules = architecture_rules(class_name)
    state = {_unwrap(key): value for key, value in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    aliases = {}
    for key, value in state.items():
        if any(p.search(key) for p in ALIAS_PATTERNS):
            aliases[key] = value
            continue
        target = rename_key(key, rules)
        if target is None:
            raise UserError("checkpoint", f"nnU-Net weight {key!r} maps to no nnlite module "
                            f"({class_name.rsplit('.', 1)[-1]})")
        renamed[target] = value
    _check_aliases(aliases, state)
    return renamed


def nnlite_to_nnunet(state: Mapping[str, torch.Tensor], class_name: str) -> dict[str, torch.Tensor]:
    """The inverse renaming (without nnU-Net's aliases): nnlite keys → nnU-Net keys."""
    rules = architecture_rules(class_name)
    out = {}
    for key, value in state.items():
        target = rename_key(key, rules, to_nnlite=False, tensor_dims=value.dim())
        if target is None:
            raise UserError("network", f"nnlite weight {key!r} has no nnU-Net name")
        out[target] = value
    return out


def _unwrap(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _check_aliases(aliases: dict[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """`decoder.encoder.X` must equal `encoder.X`; `<unit>.all_modules.<n>.<p>` must equal the unit's
    conv or norm `<p>` (which index n is which depends on the unit's optional dropout)."""
    for key, value in aliases.items():
        if key.startswith("decoder.encoder."):
            originals = [state.get(key[len("decoder."):])]
        else:
            unit, rest = key.split(".all_modules.", 1)
            param = rest.split(".", 1)[1]
            originals = [state.get(f"{unit}.{layer}.{param}") for layer in ("conv", "norm")]
        if not any(o is not None and o.shape == value.shape and torch.equal(o, value) for o in originals):
            raise UserError("checkpoint", f"nnU-Net weight {key!r} differs from the tensor it aliases")
