"""The U-Net built from a plan, checked against the planner's arithmetic (`nnlite.network.geometry`)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nnlite.common.errors import UserError
from nnlite.network import build_unet, channels_last_input, compile_network, geometry, to_channels_last
from nnlite.network.blocks import CONV, CONV_TRANSPOSE, HE_INIT_A, AttentionGate, ResidualBlock, SkipPool
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg
from nnlite.plans import NetworkPlan

MAX_AXIS_STRIDE = 16  # keeps random 3D patches ≤ 32 voxels per axis so the tests stay fast
HIPPOCAMPUS_PLAN = NetworkPlan(
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
    kernel_sizes=((3, 3, 3),) * 4,
    features_per_stage=(32, 64, 128, 256),
)
HIPPOCAMPUS_PATCH = (40, 56, 40)
HIPPOCAMPUS_PARAMETERS = 5_603_177  # the reference PlainConvUNet, 1 input channel, 3 classes


@st.composite
def plans_and_patches(draw: st.DrawFn) -> tuple[NetworkPlan, tuple[int, ...]]:
    """Random valid plans: 2D/3D, 2–7 stages, anisotropic strides and kernels, tiny widths, plain or
    residual encoder, with or without attention gates, 1–2 decoder units."""
    ndim = draw(st.sampled_from([2, 3]))
    n_stages = draw(st.integers(2, 7))
    strides, kernels, total = [(1,) * ndim], [], [1] * ndim
    for _ in range(n_stages - 1):
        poolable = [d for d in range(ndim) if total[d] < MAX_AXIS_STRIDE]
        pooled = draw(st.sets(st.sampled_from(poolable), min_size=1)) if poolable else set()
        strides.append(tuple(2 if d in pooled else 1 for d in range(ndim)))
        total = [t * s for t, s in zip(total, strides[-1])]
    for _ in range(n_stages):
        kernels.append(tuple(draw(st.sampled_from([1, 3])) for _ in range(ndim)))
    features = tuple(draw(st.integers(2, 6)) for _ in range(n_stages))
    encoder = draw(st.sampled_from(["plain", "residual"]))
    blocks = tuple(draw(st.integers(1, 2)) for _ in range(n_stages)) if encoder == "residual" else ()
    plan = NetworkPlan(strides=tuple(strides), kernel_sizes=tuple(kernels), features_per_stage=features,
                       encoder=encoder, blocks_per_stage=blocks, attention_gates=draw(st.booleans()),
                       conv_per_stage=draw(st.integers(1, 2)), conv_per_stage_decoder=draw(st.integers(1, 2)))
    # ≥ 2 voxels per axis at the bottleneck: InstanceNorm cannot normalise a single voxel in training.
    patch = tuple(t * draw(st.integers(2, 3 if ndim == 3 else 4)) for t in total)
    return plan, patch


def _record_encoder_shapes(net: nn.Module) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for stage in net.encoder.stages:
        stage.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape[2:])))
    return shapes


@settings(max_examples=30, deadline=None)
@given(
    plan_patch=plans_and_patches(),
    in_channels=st.integers(1, 4),
    num_classes=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_random_plans_match_the_arithmetic(
    plan_patch: tuple[NetworkPlan, tuple[int, ...]], in_channels: int, num_classes: int, seed: int
) -> None:
    plan, patch = plan_patch
    torch.manual_seed(seed)
    net = build_unet(plan, in_channels, num_classes)
    assert sum(p.numel() for p in net.parameters()) == geometry.count_parameters(plan, in_channels, num_classes)
    encoder_shapes = _record_encoder_shapes(net)
    outputs = net(torch.randn(2, in_channels, *patch))
    assert encoder_shapes == geometry.stage_shapes(plan, patch)
    expected = [tuple(round(p * s) for p, s in zip(patch, scale)) for scale in deep_supervision_scales(plan)]
    assert [tuple(o.shape) for o in outputs] == [(2, num_classes, *shape) for shape in expected]
    assert expected[0] == patch
    # deep-supervision outputs: the geometry's stage shapes of every decoder level, full res first
    assert [tuple(o.shape[2:]) for o in outputs] == geometry.stage_shapes(plan, patch)[: plan.n_stages - 1]
    assert all(torch.isfinite(o).all() for o in outputs)


@settings(max_examples=10, deadline=None)
@given(plan_patch=plans_and_patches(), seed=st.integers(0, 2**16))
def test_a_seed_gives_identical_weights(plan_patch: tuple[NetworkPlan, tuple[int, ...]], seed: int) -> None:
    plan, _ = plan_patch
    torch.manual_seed(seed)
    first = build_unet(plan, 2, 3).state_dict()
    torch.manual_seed(seed)
    second = build_unet(plan, 2, 3).state_dict()
    torch.manual_seed(seed + 1)
    third = build_unet(plan, 2, 3).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_hippocampus_plan_has_the_reference_parameter_count() -> None:
    net = build_unet(HIPPOCAMPUS_PLAN, 1, 3)
    assert sum(p.numel() for p in net.parameters()) == HIPPOCAMPUS_PARAMETERS
    assert geometry.count_parameters(HIPPOCAMPUS_PLAN, 1, 3) == HIPPOCAMPUS_PARAMETERS


@pytest.mark.parametrize("variant", [{}, {"encoder": "residual", "blocks_per_stage": (1, 2, 2, 1),
                                          "conv_per_stage_decoder": 1}, {"attention_gates": True}],
                         ids=["plain", "residual", "gates"])
def test_conv_feature_map_elements_match_hooks(variant: dict) -> None:
    """The reference's memory proxy = element count of every conv / transposed conv / head output."""
    plan = NetworkPlan(
        strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 1)),
        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8, 16, 16), **variant,
    )
    patch = (8, 16, 12)
    net = build_unet(plan, 2, 3)
    counted = []
    # a residual block's skip counts once, as its output, whether it pools, projects or both
    skips = [b.skip for b in net.modules() if isinstance(b, ResidualBlock) and len(b.skip)]
    in_skips = {id(m) for skip in skips for m in skip.modules()}
    for m in net.modules():
        if isinstance(m, (*CONV.values(), *CONV_TRANSPOSE.values())) and id(m) not in in_skips or m in skips:
            m.register_forward_hook(lambda mod, i, out: counted.append(out[0].numel()))
    for deep_supervision in (False, True):
        counted.clear()
        net.deep_supervision = deep_supervision
        net(torch.randn(1, 2, *patch))
        assert sum(counted) == geometry.conv_feature_map_elements(plan, patch, 2, 3, deep_supervision)


def test_he_init_and_zero_biases() -> None:
    net = build_unet(HIPPOCAMPUS_PLAN, 1, 3)
    conv = net.encoder.stages[3][1].conv  # 256 → 256, 3×3×3: 1.77 M weights, a precise std estimate
    fan_in = conv.weight[0].numel()
    expected_std = math.sqrt(2 / (1 + HE_INIT_A**2)) / math.sqrt(fan_in)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.01)
    for m in net.modules():
        if isinstance(m, (*CONV.values(), *CONV_TRANSPOSE.values())) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.InstanceNorm3d):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


def test_deep_supervision_switch_and_skipped_lowest_head() -> None:
    plan = NetworkPlan(
        strides=((1, 1), (2, 2), (2, 2), (2, 1)), kernel_sizes=((3, 3),) * 4, features_per_stage=(4, 8, 8, 8)
    )
    torch.manual_seed(0)
    net = build_unet(plan, 1, 2)
    x = torch.randn(2, 1, 16, 8)
    with torch.no_grad():
        full = net(x)
        net.skip_lowest_head = True
        shorter = net(x)
        net.deep_supervision = False
        single = net(x)
    assert len(full) == 3 and len(shorter) == 2
    assert all(torch.equal(a, b) for a, b in zip(full, shorter))
    assert isinstance(single, torch.Tensor) and torch.equal(single, full[0])
    # The trainer's loss needs nothing of the skipped head (its weight is 0).
    seg = torch.randint(0, 2, (2, 1, 16, 8))
    targets = downsample_seg(seg, deep_supervision_scales(plan))
    loss = build_loss(plan, batch_dice=False)
    assert torch.equal(loss(full, targets), loss(shorter, targets))


def test_heads_not_computed_without_deep_supervision() -> None:
    net = build_unet(HIPPOCAMPUS_PLAN, 1, 3, deep_supervision=False)
    calls = []
    for head in net.decoder.heads:
        head.register_forward_hook(lambda m, i, out: calls.append(tuple(out.shape)))
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert calls == [tuple(out.shape)] == [(1, 3, 16, 16, 16)]


def test_residual_encoder() -> None:
    plan = NetworkPlan(
        strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8, 16),
        encoder="residual",
        blocks_per_stage=(1, 2, 3),
        conv_per_stage_decoder=1,
    )
    torch.manual_seed(0)
    net = build_unet(plan, 2, 3)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 6
    # Every residual branch starts as the identity: its last norm is zero.
    assert all(torch.count_nonzero(b.conv2.norm.weight) == 0 for b in blocks)
    outputs = net(torch.randn(2, 2, 8, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 16, 16), (2, 3, 8, 8, 8)]
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


RESENC_M_HIPPOCAMPUS = NetworkPlan(  # nnU-Net's nnUNetResEncUNetMPlans 3d_fullres on Hippocampus
    strides=((1, 1, 1),) + ((2, 2, 2),) * 3, kernel_sizes=((3, 3, 3),) * 4, features_per_stage=(32, 64, 128, 256),
    encoder="residual", blocks_per_stage=(1, 3, 4, 6), conv_per_stage_decoder=1)
RESENC_M_HIPPOCAMPUS_PARAMETERS = 25_895_593  # dynamic_network_architectures' ResidualEncoderUNet, 1 in, 3 out


def test_resenc_m_hippocampus_has_the_reference_parameter_count() -> None:
    net = build_unet(RESENC_M_HIPPOCAMPUS, 1, 3)
    assert sum(p.numel() for p in net.parameters()) == RESENC_M_HIPPOCAMPUS_PARAMETERS
    assert geometry.count_parameters(RESENC_M_HIPPOCAMPUS, 1, 3) == RESENC_M_HIPPOCAMPUS_PARAMETERS
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, *HIPPOCAMPUS_PATCH))
    assert [tuple(o.shape[2:]) for o in outputs] == [(40, 56, 40), (20, 28, 20), (10, 14, 10)]


def test_residual_module_names_follow_the_documented_layout() -> None:
    """interop maps nnU-Net state dicts onto these names (unet.py's docstring lists them)."""
    keys = set(build_unet(RESENC_M_HIPPOCAMPUS, 1, 3).state_dict())
    for key in ("encoder.stem.conv.weight", "encoder.stem.norm.bias", "encoder.stages.0.0.conv1.conv.weight",
                "encoder.stages.1.0.skip.1.weight", "encoder.stages.1.0.skip.2.weight",
                "encoder.stages.3.5.conv2.norm.weight", "decoder.levels.0.up.weight",
                "decoder.levels.2.convs.0.conv.weight", "decoder.heads.2.bias"):
        assert key in keys, key
    gated = replace(RESENC_M_HIPPOCAMPUS, attention_gates=True)
    gate_keys = {k for k in build_unet(gated, 1, 3).state_dict() if ".gate." in k}
    assert gate_keys == {f"decoder.levels.{i}.gate.{part}" for i in range(3)
                         for part in ("theta.weight", "phi.weight", "phi.bias", "psi.weight", "psi.bias")}


@pytest.mark.parametrize("ndim", [2, 3])
def test_attention_gate_scales_the_skip_by_a_map_in_0_1(ndim: int) -> None:
    torch.manual_seed(0)
    stride = (2,) * ndim if ndim == 2 else (1, 2, 2)
    gate = AttentionGate(c_skip=4, c_gate=6, stride=stride)
    skip = torch.randn(2, 4, *((8,) * ndim))
    coarse = torch.randn(2, 6, *(n // s for n, s in zip(skip.shape[2:], stride)))
    out = gate(skip, coarse)
    assert out.shape == skip.shape
    alpha = out / skip  # one map for all channels
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-5)
    assert (alpha > 0).all() and (alpha < 1).all()
    assert not torch.allclose(gate(skip, coarse + 1), out)  # the coarser signal decides
    with torch.no_grad():
        gate.psi.bias.fill_(1e4)  # sigmoid → 1: the skip passes unchanged
    torch.testing.assert_close(gate(skip, coarse), skip)
    with torch.no_grad():
        gate.psi.bias.fill_(-1e4)  # sigmoid → 0: the skip is blocked
    assert torch.count_nonzero(gate(skip, coarse)) == 0


def test_gates_change_the_decoder_input() -> None:
    plan = NetworkPlan(strides=((1, 1), (2, 2), (2, 2)), kernel_sizes=((3, 3),) * 3, features_per_stage=(4, 8, 8))
    torch.manual_seed(0)
    plain = build_unet(plan, 1, 2)
    torch.manual_seed(0)
    gated = build_unet(replace(plan, attention_gates=True), 1, 2)
    assert all(level.gate is not None for level in gated.decoder.levels)
    assert all(level.gate is None for level in plain.decoder.levels)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], gated(x)[0])


@pytest.mark.parametrize("shape, stride", [((2, 3, 8, 12, 6), (1, 2, 2)), ((2, 3, 8, 6), (2, 2)),
                                           ((1, 2, 9, 12, 6), (2, 2, 1))])
def test_skip_pool_is_the_average_pool(shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    pool = torch.nn.functional.avg_pool3d if len(stride) == 3 else torch.nn.functional.avg_pool2d
    torch.testing.assert_close(SkipPool(stride)(x), pool(x, stride, stride))


def test_channels_last_and_compile_toggles() -> None:
    plan = NetworkPlan(strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 2, features_per_stage=(4, 8))
    torch.manual_seed(0)
    net = build_unet(plan, 1, 2, deep_supervision=False)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected = net(x)
        fast = to_channels_last(net, 3)(channels_last_input(x))
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    assert compile_network(net, enabled=False) is net
    if not torch.cuda.is_available():
        assert compile_network(net) is net  # off by default on CPU


# --- memory model: predicted activation bytes vs tensors autograd really saves ---------------------

MEMORY_PLANS = {
    "2d": (
        NetworkPlan(strides=((1, 1), (2, 2), (2, 2), (2, 2), (2, 2)), kernel_sizes=((3, 3),) * 5,
                    features_per_stage=(8, 16, 32, 64, 64)),
        (64, 48),
    ),
    "3d_isotropic": (
        NetworkPlan(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 4,
                    features_per_stage=(8, 16, 32, 64)),
        (32, 32, 32),
    ),
    "3d_anisotropic": (
        NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
                    kernel_sizes=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                    features_per_stage=(8, 16, 32, 64, 64)),
        (16, 64, 48),
    ),
    "3d_resenc_gates": (
        NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
                    kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)), features_per_stage=(8, 16, 32, 32),
                    encoder="residual", blocks_per_stage=(1, 3, 4, 2), conv_per_stage_decoder=1,
                    attention_gates=True),
        (16, 48, 32),
    ),
    "2d_resenc": (
        NetworkPlan(strides=((1, 1), (2, 2), (2, 2), (2, 2)), kernel_sizes=((3, 3),) * 4,
                    features_per_stage=(8, 16, 32, 64), encoder="residual", blocks_per_stage=(1, 3, 4, 6),
                    conv_per_stage_decoder=1),
        (64, 48),
    ),
}


def _is_weight_copy(t: torch.Tensor) -> bool:
    """Autocast's low-precision copy of a parameter (counted with the weights, not activations)."""
    fn = t.grad_fn
    return (
        fn is not None
        and type(fn).__name__ == "ToCopyBackward0"
        and type(fn.next_functions[0][0]).__name__ == "AccumulateGrad"
    )


def saved_activation_bytes(plan: NetworkPlan, patch: tuple[int, ...], batch: int, amp: bool) -> int:
    """Bytes of the distinct storages autograd saves in one deep-supervised training step (CPU)."""
    net = build_unet(plan, 2, 3)
    loss_fn = build_loss(plan, batch_dice=False)
    x = torch.randn(batch, 2, *patch)
    targets = downsample_seg(torch.randint(0, 3, (batch, 1, *patch)), deep_supervision_scales(plan))
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and not _is_weight_copy(t):
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x), targets)
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(MEMORY_PLANS))
def test_activation_bytes_within_ten_percent(name: str, amp: bool) -> None:
    plan, patch = MEMORY_PLANS[name]
    measured = saved_activation_bytes(plan, patch, batch=2, amp=amp)
    predicted = geometry.activation_bytes(plan, patch, 2, 3, batch_size=2, dtype_bytes=2 if amp else 4)
    assert abs(predicted - measured) <= 0.10 * measured, (name, amp, predicted, measured)


@settings(max_examples=12, deadline=None)
@given(plan_patch=plans_and_patches(), amp=st.booleans())
def test_random_plans_save_the_predicted_bytes(plan_patch: tuple[NetworkPlan, tuple[int, ...]], amp: bool) -> None:
    """Any plan (plain/residual, gates or not): predicted saved bytes within 10 % of the measured.

    Axes are enlarged to ≥ 8 voxels: what the arithmetic leaves out (norm statistics, 2 numbers per
    channel; the loss' per-class sums) is a few hundred bytes, which only a 4×2 patch notices.
    """
    plan, patch = plan_patch
    patch = tuple(t * max(p // t, -(-8 // t)) for p, t in zip(patch, plan.total_stride))
    measured = saved_activation_bytes(plan, patch, batch=2, amp=amp)
    predicted = geometry.activation_bytes(plan, patch, 2, 3, batch_size=2, dtype_bytes=2 if amp else 4)
    assert abs(predicted - measured) <= 0.10 * measured, (plan, patch, amp, predicted, measured)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_attention_gates_add_the_predicted_bytes(amp: bool) -> None:
    """The gates' share alone (a few % of the total, which the 10 % check above would not notice):
    measured extra bytes of the gated network within 10 % of the predicted extra."""
    plan, patch = MEMORY_PLANS["3d_anisotropic"]
    gated = replace(plan, attention_gates=True)
    dtype_bytes = 2 if amp else 4
    measured = saved_activation_bytes(gated, patch, 2, amp) - saved_activation_bytes(plan, patch, 2, amp)
    predicted = (geometry.activation_bytes(gated, patch, 2, 3, 2, dtype_bytes)
                 - geometry.activation_bytes(plan, patch, 2, 3, 2, dtype_bytes))
    assert predicted > 0 and abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_a_single_stage_plan_is_a_user_error() -> None:
    plan = NetworkPlan(strides=((1, 1),), kernel_sizes=((3, 3),), features_per_stage=(4,))
    with pytest.raises(UserError, match="2 stages"):
        build_unet(plan, 1, 2)
