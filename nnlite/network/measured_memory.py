"""Bytes of a training step measured on the network itself: any builder, no memory allocated.

`geometry.py` predicts the bytes of nnlite's U-Nets by arithmetic; a network it does not know (a
builder named by `network.architecture`) is sized here instead, by running it:

1. the builder is called exactly as training calls it (`builder(plan, in_channels, num_classes,
   deep_supervision=True, region_outputs=False, **kwargs)`) under torch's `FakeTensorMode`: every
   parameter and activation is a *fake* CPU tensor that has a shape, a dtype and a storage identity
   but no data, so a 128³ step costs well under a second and no memory;
2. one forward (CPU autocast to float16 when `amp`, the 2-byte precision the byte model assumes)
   and the training loss (Dice + CE over the deep-supervision outputs, as the trainer computes it)
   run under `torch.autograd.graph.saved_tensors_hooks`; the hook records every tensor autograd
   keeps for the backward pass, once per storage (a tensor saved by two ops counts once), leaving
   out the parameters, buffers and autocast's low-precision copies of the weights (they are
   parameter state, counted per parameter);
3. the backward pass runs too (on fake tensors), so a graph that cannot be differentiated fails here.

What is counted is what `geometry.activation_bytes` predicts (saved network tensors + the loss'
buffers) plus what `geometry.training_memory_bytes` adds (the logits the loop holds, parameter
state, the allocator factor and the CUDA workspace), so `MeasuredStep.training_memory_bytes` can
replace the arithmetic in the planner's budget. Every saved tensor grows with the batch, so a step
is measured at batch 1 and scaled (tests check batch 2 measures twice batch 1).

Precision: CUDA's autocast cannot run without CUDA, so CPU autocast (float16) stands in. Both put
convolutions and matrix products in float16 and softmax, log-softmax and losses in float32; a few
ops (average pooling, interpolation) are float32 only on the CPU list, and a float16 convolution
reading them saves its own float16 copy, so nnlite's U-Nets measure the same either way.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode  # torch's own shape-only tensors (torch.compile's)

from nnlite.common.errors import UserError
from nnlite.common.schema import to_jsonable
from nnlite.network.builders import architecture_of, resolve_builder
from nnlite.network.classifier import segmentation_output
from nnlite.network.geometry import ALLOCATOR_FACTOR, AMP_WEIGHT_COPY_BYTES, PARAM_STATE_BYTES, WORKSPACE_BYTES
from nnlite.network.loss import build_loss
from nnlite.plans import NetworkPlan

Builder = Callable[..., nn.Module]  # builder(plan, in_channels, num_classes, deep_supervision=, region_outputs=)
AMP_DTYPE = torch.float16  # the 2-byte autocast precision of training on a GPU


@dataclass(frozen=True)
class MeasuredStep:
    """What one training step keeps, measured at `batch_size` (bytes unless named otherwise)."""

    batch_size: int
    network_bytes: int  # tensors the network saves for backward (activations, masks, norm statistics)
    loss_bytes: int  # tensors the loss saves (fp32 softmax / log-softmax, one-hot, int64 targets)
    logits_bytes: int  # the network's outputs, which the loop holds until the loss is computed
    trainable_parameters: int
    fixed_state_bytes: int  # frozen parameters and buffers (no gradient, no momentum)

    @property
    def activation_bytes(self) -> int:
        """The measured counterpart of `geometry.activation_bytes` (network + loss)."""
        return self.network_bytes + self.loss_bytes

    def training_memory_bytes(self, batch_size: int, amp: bool = True) -> int:
        """Peak bytes of a step at `batch_size`, by `geometry.training_memory_bytes`' formula with the
        measured parts: activations and logits scaled linearly from the measured batch."""
        held = (self.activation_bytes + self.logits_bytes) * batch_size / self.batch_size
        per_param = PARAM_STATE_BYTES + (AMP_WEIGHT_COPY_BYTES if amp else 0)
        params = self.trainable_parameters * per_param + self.fixed_state_bytes
        return int(ALLOCATOR_FACTOR * held) + params + WORKSPACE_BYTES


def builder_name(builder: Builder) -> str:
    """`module:function` of a builder (what `network.architecture` would name), for messages."""
    inner = getattr(builder, "func", builder)  # a functools.partial names its function
    return f"{getattr(inner, '__module__', '?')}:{getattr(inner, '__qualname__', repr(inner))}"


def measure_training_step(builder: Builder, plan: NetworkPlan, patch: Sequence[int], in_channels: int,
                          num_classes: int, batch_size: int = 1, amp: bool = True,
                          builder_kwargs: Mapping[str, Any] | None = None, fake: bool = True) -> MeasuredStep:
    """Build the network of `builder` on fake tensors, run one step at (batch_size, in_channels,
    *patch) and count what autograd keeps. A builder or forward that fails is one UserError.
    `fake=False` runs on real CPU tensors instead (tests compare the two on small inputs)."""
    try:
        with FakeTensorMode() if fake else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # autocast's notes about CPU float16
            net = builder(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False,
                          **dict(builder_kwargs or {}))
            return _measure(net, plan, (batch_size, in_channels, *patch), amp)
    except UserError:
        raise
    except Exception as error:  # the user's network: say whose and what, not a traceback
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise UserError("network.architecture", f"{builder_name(builder)} could not be measured at patch "
                        f"{list(patch)}: {type(error).__name__}: {first_line} (the planner runs one step on "
                        "fake tensors, which hold no values: see docs/planning.md)") from None


def _measure(net: nn.Module, plan: NetworkPlan, input_shape: tuple[int, ...], amp: bool) -> MeasuredStep:
    if hasattr(net, "skip_lowest_head"):
        net.skip_lowest_head = True  # as the trainer does: the weight-0 head is not computed
    net.train()
    state = {_storage_id(t) for t in (*net.parameters(), *net.buffers())}
    network: dict[int, int] = {}
    loss: dict[int, int] = {}
    x = torch.empty(input_shape)  # (B, C_in, *P), fp32 as the loader gives it
    with torch.autocast("cpu", dtype=AMP_DTYPE, enabled=amp):
        with torch.autograd.graph.saved_tensors_hooks(_recorder(network, state), _unpack):
            outputs = segmentation_output(net(x))
        logits = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        targets = [torch.zeros((o.shape[0], 1, *o.shape[2:]), dtype=torch.long) for o in logits]
        with torch.autograd.graph.saved_tensors_hooks(_recorder(loss, state | network.keys()), _unpack):
            value = build_loss(plan, batch_dice=False)(outputs, targets)
    value.backward()  # on fake tensors: proves the graph is differentiable, allocates nothing
    trainable = {_storage_id(p): p.numel() for p in net.parameters() if p.requires_grad}
    fixed = {_storage_id(t): t.untyped_storage().nbytes()
             for t in (*net.parameters(), *net.buffers()) if not t.requires_grad}
    return MeasuredStep(
        batch_size=input_shape[0], network_bytes=sum(network.values()), loss_bytes=sum(loss.values()),
        logits_bytes=sum({_storage_id(o): o.untyped_storage().nbytes() for o in logits}.values()),
        trainable_parameters=sum(trainable.values()), fixed_state_bytes=sum(fixed.values()))


def _recorder(into: dict[int, int], skip: Iterable[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pack hook that notes each saved tensor's storage (id → bytes) unless it is parameter state."""
    skip = set(skip)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = _storage_id(tensor)
        if storage not in skip and not _is_weight_copy(tensor):
            into[storage] = tensor.untyped_storage().nbytes()
        return tensor

    return pack


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _storage_id(tensor: torch.Tensor) -> int:
    """Identity of a tensor's storage; fake storages have no address, but a distinct StorageImpl."""
    return tensor.untyped_storage()._cdata


def _is_weight_copy(tensor: torch.Tensor) -> bool:
    """Autocast's low-precision copy of a parameter: parameter state, not an activation."""
    fn = tensor.grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and type(fn.next_functions[0][0]).__name__ == "AccumulateGrad")


def bytes_per_voxel(step: MeasuredStep, patch: Sequence[int]) -> float:
    """Saved activation bytes per input voxel and sample: the number to compare two networks by."""
    return step.activation_bytes / step.batch_size / math.prod(patch)


_MEASURED: dict[str, MeasuredStep] = {}  # the planner asks for the same network and patch many times


def planned_training_memory_bytes(plan: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int,
                                  batch_size: int, amp: bool = True) -> int:
    """The planner's question for a plan whose `architecture` names a builder: the peak bytes of a
    step at `batch_size`, from one batch-1 measurement at `patch` (kept for the process)."""
    key = json.dumps([to_jsonable(plan), list(patch), in_channels, num_classes, amp])
    if key not in _MEASURED:
        builder = resolve_builder(architecture_of(plan), "network.architecture")
        _MEASURED[key] = measure_training_step(builder, plan, patch, in_channels, num_classes, 1, amp, plan.kwargs)
    return _MEASURED[key].training_memory_bytes(batch_size, amp)
