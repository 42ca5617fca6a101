"""Configurations that inherit: `plan WORK --add-config NAME --from PARENT --set KEY=VALUE ...`.

A new configuration starts as a copy of PARENT, changes the fields named by `--set` (dotted keys of
`ConfigurationPlan`, e.g. `batch_size=4`, `network.attention_gates=true`,
`network.features_per_stage=[16,32,64,128]`; values read as YAML) and is validated like any plan.
`plans.json` stores it as `{"inherits_from": PARENT, <what it changes>}` (see `plans.load_plans`).
It shares PARENT's preprocessed folder unless it changes a field the arrays depend on
(`plans.DATA_FIELDS`), in which case it gets its own (`preprocessed/NAME`). Re-planning WORK keeps
the added configurations whose parent is still planned.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from nnlite.common.layout import plans_file
from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.common.schema import from_dict, to_jsonable
from nnlite.planning.memory_budget import MemoryBudget
from nnlite.plans import ConfigurationPlan, Plans, load_plans, resolve_inheritance, save_plans

log = logging.getLogger(__name__)

CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # also a folder name under results/


def add_configuration(work: Path, name: str, parent: str, overrides: Sequence[str],
                      check: Callable[[Plans, str], None] | None = None) -> Plans:
    """WORK/plans.json gains configuration `name`: `parent` with `overrides` ("KEY=VALUE") applied;
    `check(plans, name)` runs before it is written (the command checks the network's builder)."""
    path = plans_file(work)
    plans = load_plans(path)
    if parent not in plans.configurations:
        raise UserError("--from", f"'{parent}' is not planned (planned: {', '.join(plans.configurations)})")
    if not CONFIG_NAME.fullmatch(name):
        raise UserError("--add-config", f"'{name}' is not a valid name (letters, digits, _ . -)")
    if name in plans.configurations:
        raise UserError("--add-config", f"'{name}' is already planned",
                        hint="choose another name, or remove it from plans.json first")
    changes: dict[str, Any] = {"inherits_from": parent}
    for override in overrides:
        _set_dotted(changes, *_parse_override(override))
    changes["reasons"] = [f"inherits {parent}; changed by --set: {', '.join(overrides) or 'nothing'}"]
    full = {n: to_jsonable(c) for n, c in plans.configurations.items()}
    try:
        config = from_dict(ConfigurationPlan, resolve_inheritance({**full, name: changes})[name])
    except UserError as error:
        raise UserError(f"--set {' '.join(overrides)}", f"{error.where}: {error.problem}") from None
    config = _with_memory(config, plans)
    try:
        plans = replace(plans, configurations={**plans.configurations, name: config})
    except UserError as error:
        raise UserError("--set", error.problem) from None
    if check is not None:
        check(plans, name)
    save_plans(plans, path)
    return plans


def _parse_override(override: str) -> tuple[str, Any]:
    import yaml  # only --set needs it: planning stays quick to import

    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override}", "expected KEY=VALUE")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """`network.attention_gates` → data["network"]["attention_gates"]; unknown keys are refused
    later, by name, when the configuration is built."""
    *sections, last = key.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}", f"'{part}' is not a section")
    if last in ("inherits_from", "reasons"):
        raise UserError(f"--set {key}", "is set by --add-config itself")
    node[last] = value


def _with_memory(config: ConfigurationPlan, plans: Plans) -> ConfigurationPlan:
    """The predicted training memory of the changed network at its batch (bytes model, AMP)."""
    budget = MemoryBudget(plans.gpu_memory_gb, plans.num_channels, plans.num_classes)
    memory = budget.predicted_bytes(config.network, config.patch_size, config.batch_size)
    return replace(config, predicted_memory_bytes=int(memory))


def keep_added_configurations(work: Path, plans: Plans) -> Plans:
    """A fresh `plans` plus the inheriting configurations of WORK's previous plans.json whose parent
    is still planned (nnU-Net keeps a user's added configurations when it saves plans, too)."""
    try:
        previous = read_json(plans_file(work))["configurations"]
    except (OSError, ValueError, KeyError, TypeError):
        return plans
    added = {n: c for n, c in previous.items() if isinstance(c, dict) and c.get("inherits_from")
             in plans.configurations and n not in plans.configurations}
    if not added:
        return plans
    full = {n: to_jsonable(c) for n, c in plans.configurations.items()}
    try:
        resolved = resolve_inheritance({**full, **added})
        kept = {n: from_dict(ConfigurationPlan, resolved[n]) for n in added}
        return replace(plans, configurations={**plans.configurations, **kept})
    except UserError as error:
        log.warning("dropping the added configurations %s: %s", ", ".join(added), error)
        return plans
