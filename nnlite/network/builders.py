"""Networks by import path: the builder a configuration names, and the output contract it must keep.

A configuration's `network.architecture` names a function "module.path:function" (absent: the
built-in U-Net, DEFAULT_ARCHITECTURE). It is called exactly like the built-in,

    builder(plan: NetworkPlan, in_channels, num_classes, deep_supervision=..., region_outputs=...,
            **plan.kwargs) → nn.Module

so wrapping `build_unet` is one line. Its network must keep the contract every path (training,
validation, prediction, export) relies on; for an input x (B, C_in, *S), S divisible by the plan's
total stride:

    built with deep_supervision=False, in eval mode        → logits (B, K, *S)
    built with deep_supervision=True, in train mode        → logits (B, K, *S), or a list of logits
        at the plan's deep-supervision scales (full resolution first, then S / cumulative stride),
        n_stages - 1 of them; the last, whose loss weight is 0, may be left out
    after `network.deep_supervision = False`, in eval mode → logits (B, K, *S) (validation switches it)
    a plan with class_head = N: `SegmentAndClass(seg, (B, N) class logits)` (network/classifier.py)
    around each of those; a plan without a head: never a tuple

`check_output_contract` verifies this on a tiny input (2 × the total stride per axis), once per
process for a network of another builder, and at plan time (`plan --network`, `--set
network.architecture=...`) before anything is written. Every failure is one UserError line.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable

import torch
from torch import nn

from nnlite.common.errors import UserError, did_you_mean
from nnlite.common.layout import PLANS_FILE
from nnlite.common.schema import to_jsonable
from nnlite.network.loss import deep_supervision_scales, deep_supervision_weights
from nnlite.plans import NetworkPlan, Plans
from nnlite.preprocessing.cascade import input_channels

DEFAULT_ARCHITECTURE = "nnlite.network.unet:build_unet"
CHECK_BATCH = 2  # samples of the contract check's input: the batch axis is checked too
_checked: set[str] = set()  # networks of other builders whose contract this process has checked


def architecture_of(plan: NetworkPlan) -> str:
    """The builder a plan names, "module.path:function"."""
    return plan.architecture or DEFAULT_ARCHITECTURE


def is_builtin(plan: NetworkPlan) -> bool:
    return architecture_of(plan) == DEFAULT_ARCHITECTURE


def resolve_builder(architecture: str, where: str) -> Callable[..., nn.Module]:
    """Import "module.path:function" (the function may be a dotted attribute path)."""
    module_name, _, attribute = architecture.partition(":")
    if not module_name or not attribute:
        raise UserError(where, f"{architecture!r} is not 'module.path:function'")
    try:
        target = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises while it is imported
        raise UserError(where, f"{architecture}: cannot import module {module_name!r} ({_one_line(error)}); "
                        "is its folder on PYTHONPATH?") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(where, f"{architecture}: module {module_name!r} has no {attribute!r}"
                            + did_you_mean(part, dir(target)))
        target = getattr(target, part)
    if not callable(target):
        raise UserError(where, f"{architecture} is not a function (a {type(target).__name__})")
    return target


def build_from_plan(plan: NetworkPlan, in_channels: int, num_classes: int, *, deep_supervision: bool,
                    region_outputs: bool, where: str) -> nn.Module:
    """Call the plan's builder with the plan, the channels and its kwargs."""
    architecture = architecture_of(plan)
    builder = resolve_builder(architecture, where)
    if is_builtin(plan):  # nnlite's own: an exception here is a bug and keeps its traceback
        if plan.kwargs:
            raise UserError(where, f"the built-in U-Net takes no kwargs (got {sorted(plan.kwargs)})")
        return builder(plan, in_channels, num_classes, deep_supervision=deep_supervision,
                       region_outputs=region_outputs)
    try:
        network = builder(plan, in_channels, num_classes, deep_supervision=deep_supervision,
                          region_outputs=region_outputs, **plan.kwargs)
    except UserError:
        raise
    except Exception as error:  # the user's code: one line saying what it raised
        raise UserError(where, f"{architecture} failed: {_one_line(error)}") from None
    if not isinstance(network, nn.Module):
        raise UserError(where, f"{architecture} returned a {type(network).__name__}, not a torch nn.Module")
    return network


def build_network(plans: Plans, config_name: str, *, deep_supervision: bool = True) -> nn.Module:
    """The network of a planned configuration: its plan's builder, its input channels (a cascade
    stage: + the previous stage's one-hot labels), the dataset's classes, sigmoid outputs for region
    datasets. Every caller (training, prediction, export, conversion) builds through this one
    function; a network of another builder has its output contract checked first."""
    check_planned_network(plans, config_name)
    return build_from_plan(plans.configurations[config_name].network, input_channels(plans, config_name),
                           plans.num_classes, deep_supervision=deep_supervision,
                           region_outputs=plans.sigmoid_outputs, where=_where(config_name))


def check_planned_network(plans: Plans, config_name: str) -> None:
    """Import the configuration's builder; another builder than the built-in has its output
    contract checked, once per process (`train` calls this before it makes the fold folder)."""
    plan = plans.configurations[config_name].network
    resolve_builder(architecture_of(plan), _where(config_name))
    if is_builtin(plan):
        return
    channels, classes = input_channels(plans, config_name), plans.num_classes
    key = json.dumps([to_jsonable(plan), channels, classes, plans.sigmoid_outputs])
    if key not in _checked:
        check_output_contract(plan, channels, classes, plans.sigmoid_outputs, _where(config_name))
        _checked.add(key)


def _where(config_name: str) -> str:
    return f"{PLANS_FILE} configurations.{config_name}.network.architecture"


def check_configuration(plans: Plans, config_name: str, where: str) -> None:
    """Import the configuration's builder and check its network's output contract (plan time)."""
    plan = plans.configurations[config_name].network
    check_output_contract(plan, input_channels(plans, config_name), plans.num_classes,
                          plans.sigmoid_outputs, f"{where} ({config_name})")


def check_networks(plans: Plans, where: str = "--network") -> None:
    """Every configuration's builder imported and its network's outputs checked (`plan --network`)."""
    for name in plans.configurations:
        check_configuration(plans, name, where)


def check_output_contract(plan: NetworkPlan, in_channels: int, num_classes: int, region_outputs: bool,
                          where: str) -> None:
    """Build the plan's network and run a tiny input through it as training, validation and
    prediction do (see the module docstring); on the CPU, leaving the global RNG as it was."""
    size = tuple(2 * t for t in plan.total_stride)  # 2×: a normalisation layer needs > 1 voxel per channel
    x = torch.randn(CHECK_BATCH, in_channels, *size, generator=torch.Generator().manual_seed(0))
    expected = _Expected(plan, in_channels, num_classes, size)

    def build(deep_supervision: bool) -> nn.Module:
        return build_from_plan(plan, in_channels, num_classes, deep_supervision=deep_supervision,
                               region_outputs=region_outputs, where=where)

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        training = build(True).train()
        expected.check(_forward(training, x, where), "in train mode", where, deep_supervision=True)
        training.deep_supervision = False
        expected.check(_forward(training.eval(), x, where), "after network.deep_supervision = False",
                       where, deep_supervision=False)
        expected.check(_forward(build(False).eval(), x, where), "built with deep_supervision=False",
                       where, deep_supervision=False)


class _Expected:
    """The outputs the contract allows for an input (CHECK_BATCH, C, *size)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int, size: tuple[int, ...]) -> None:
        self.plan = plan
        self.input = (CHECK_BATCH, in_channels, *size)
        self.seg = (CHECK_BATCH, num_classes, *size)
        self.scales = [(CHECK_BATCH, num_classes, *(round(n * s) for n, s in zip(size, scale)))
                       for scale in deep_supervision_scales(plan)]
        weights = deep_supervision_weights(len(self.scales))
        self.fewest = max(1, sum(w > 0 for w in weights))  # the outputs the loss cannot do without

    def check(self, output: Any, when: str, where: str, deep_supervision: bool) -> None:
        name = architecture_of(self.plan)
        problem = self.problem(output, deep_supervision)
        if problem:
            raise UserError(where, f"{name} breaks the output contract {when}: {problem} (input "
                            f"{self.input}; see docs/architectures.md)")

    def problem(self, output: Any, deep_supervision: bool) -> str | None:
        seg = output
        head = self.plan.class_head
        if head:
            if not (isinstance(output, tuple) and len(output) == 2):
                return (f"the plan has a classification head (network.class_head = {head}) but the "
                        "network returns no class logits; return SegmentAndClass(segmentation, (B, "
                        f"{head}) logits) from nnlite.network.classifier, or plan without the head")
            seg, logits = output
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (CHECK_BATCH, head):
                return f"class logits {_shape(logits)}, expected {(CHECK_BATCH, head)}"
        elif isinstance(output, tuple):
            return "it returns a tuple; return a tensor, or a list of tensors for deep supervision"
        if isinstance(seg, list) and deep_supervision:
            return self.list_problem(seg)
        if not isinstance(seg, torch.Tensor) or tuple(seg.shape) != self.seg:
            return f"it returns {_shape(seg)}, expected logits {self.seg}"
        return None

    def list_problem(self, outputs: list) -> str | None:
        if not self.fewest <= len(outputs) <= len(self.scales):
            return (f"it returns {len(outputs)} deep-supervision outputs, expected {len(self.scales)} "
                    f"(one per stage above the bottleneck: {self.scales})")
        for i, (output, shape) in enumerate(zip(outputs, self.scales)):
            if not isinstance(output, torch.Tensor) or tuple(output.shape) != shape:
                return f"deep-supervision output {i} is {_shape(output)}, expected {shape}"
        return None


def _forward(network: nn.Module, x: torch.Tensor, where: str) -> Any:
    try:
        return network(x)
    except Exception as error:  # the user's network: one line saying what it raised
        raise UserError(where, f"a forward pass of an input {tuple(x.shape)} failed: {_one_line(error)}") from None


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} [" + ", ".join(_shape(v) for v in value) + "]"
    return f"a {type(value).__name__}"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
