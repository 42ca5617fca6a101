"""The network zoo (nnlite/network/zoo/): V-Net, Çiçek's 3D U-Net, Oktay's Attention U-Net.

Each network keeps the built-in U-Net's output contract (eval: one (B, K, *P) tensor; training with
deep supervision: the logits at the plan's scales) and the structure its paper gives, checked here
by exact parameter counts written out from the papers, by the residual identity of V-Net's stages
and by what each layer is (PReLU, batch norm, max pooling, nnlite's attention gate).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.network.blocks import AttentionGate
from nnlite.network.classifier import SegmentAndClass
from nnlite.network.geometry import gate_channels
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg
from nnlite.network.zoo import attention_unet, cicek_unet, vnet
from nnlite.plans import NetworkPlan

PLAN_3D = NetworkPlan(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 4,
                      features_per_stage=(4, 8, 16, 32))
PLAN_ANISO = NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                         features_per_stage=(4, 8, 8))
PLAN_2D = NetworkPlan(strides=((1, 1), (2, 2), (2, 2)), kernel_sizes=((3, 3),) * 3, features_per_stage=(4, 8, 16))
PLANS = pytest.mark.parametrize("plan", [PLAN_3D, PLAN_ANISO, PLAN_2D], ids=["3d", "3d-anisotropic", "2d"])
ZOO = pytest.mark.parametrize("zoo", [vnet, cicek_unet, attention_unet], ids=["vnet", "cicek", "attention"])
NO_DEEP_SUPERVISION = (vnet, cicek_unet)  # their papers have none


def patch(plan: NetworkPlan) -> tuple[int, ...]:
    """A small patch divisible by the plan's total stride."""
    return {PLAN_3D.strides: (16, 24, 16), PLAN_ANISO.strides: (4, 16, 12), PLAN_2D.strides: (32, 24)}[plan.strides]


def batch(plan: NetworkPlan, channels: int = 2, b: int = 2) -> torch.Tensor:
    return torch.randn(b, channels, *patch(plan))


def scaled(patch: tuple[int, ...], scale: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(round(n * s) for n, s in zip(patch, scale))


# --- output contract -------------------------------------------------------------------------------

@ZOO
@PLANS
def test_eval_returns_one_full_resolution_tensor(zoo, plan):
    net = zoo.build(plan, 2, 3, deep_supervision=False).eval()
    with torch.no_grad():
        assert net(batch(plan)).shape == (2, 3, *patch(plan))


@ZOO
@PLANS
def test_training_outputs_follow_the_deep_supervision_scales(zoo, plan):
    out = zoo.build(plan, 2, 3, deep_supervision=True).train()(batch(plan))
    if zoo in NO_DEEP_SUPERVISION:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *patch(plan))
        return
    assert [o.shape for o in out] == [(2, 3, *scaled(patch(plan), s)) for s in deep_supervision_scales(plan)]


@PLANS
def test_attention_unet_switches_deep_supervision_and_its_lowest_head(plan):
    net = attention_unet.build(plan, 2, 3).train()
    x = batch(plan)
    net.skip_lowest_head = True
    assert len(net(x)) == plan.n_stages - 2
    net.deep_supervision = False  # what validation does
    assert net(x).shape == (2, 3, *patch(plan))


@ZOO
def test_the_training_loss_takes_every_output_and_every_weight_learns(zoo):
    plan = PLAN_3D
    net = zoo.build(plan, 2, 3).train()
    seg = torch.randint(0, 3, (2, 1, *patch(plan)))
    loss = build_loss(plan, batch_dice=False)(net(batch(plan)), downsample_seg(seg, deep_supervision_scales(plan)))
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # the lowest deep-supervision head has loss weight 0 (heads are stored bottom-up)
    assert no_grad == ([] if zoo in NO_DEEP_SUPERVISION else ["heads.0.weight", "heads.0.bias"])


@ZOO
def test_a_classification_head_rides_on_the_skips(zoo):
    plan = replace(PLAN_3D, class_head=2)
    out = zoo.build(plan, 2, 3, deep_supervision=False).eval()(batch(plan))
    assert isinstance(out, SegmentAndClass) and out.class_logits.shape == (2, 2)
    assert out.seg.shape == (2, 3, *patch(plan))
    torch.manual_seed(0)
    with_head = zoo.build(plan, 2, 3).state_dict()
    torch.manual_seed(0)
    without = zoo.build(PLAN_3D, 2, 3).state_dict()
    assert all(torch.equal(with_head[k], v) for k, v in without.items())  # the head leaves the rest as it was


@ZOO
def test_onnx_export_matches_pytorch(zoo, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    plan = PLAN_ANISO
    net = zoo.build(plan, 1, 2, deep_supervision=False).eval()
    x = torch.randn(1, 1, *patch(plan))
    torch.onnx.export(net, (x,), str(tmp_path / "net.onnx"), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - net(x).numpy()).max() < 1e-4


# --- V-Net (Milletari et al. 2016) -------------------------------------------------------------------

def vnet_parameters(plan: NetworkPlan, c_in: int, k: int, norm: bool = True) -> int:
    """Every conv weight and bias, norm affine (2 c) and channel-wise PReLU slope (c), from the paper."""
    f, n = plan.features_per_stage, plan.n_stages

    def unit(ci: int, co: int, kernel: tuple[int, ...]) -> int:
        return ci * co * math.prod(kernel) + co + (2 * co if norm else 0) + co

    def five(kernel: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(5 if x > 1 else 1 for x in kernel)
    total = unit(c_in, f[0], five(plan.kernel_sizes[0]))  # stage 0: one convolution
    for s in range(1, n):
        convs = min(s + 1, 3)
        total += unit(f[s - 1], f[s], plan.strides[s]) + convs * unit(f[s], f[s], five(plan.kernel_sizes[s]))
    for lvl in range(n - 1):
        below = f[n - 1] if lvl == n - 2 else 2 * f[lvl + 1]
        convs = min(lvl + 1, 3)
        total += unit(below, f[lvl], plan.strides[lvl + 1]) + convs * unit(2 * f[lvl], 2 * f[lvl],
                                                                          five(plan.kernel_sizes[lvl]))
    return total + 2 * f[0] * k + k


@PLANS
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_vnet_parameters_are_the_papers(plan, norm):
    net = vnet.build(plan, 2, 3, norm=norm)
    assert sum(p.numel() for p in net.parameters()) == vnet_parameters(plan, 2, 3, norm != "none")


def test_vnet_convolves_5_cubed_down_samples_by_strided_convolution_and_uses_prelu():
    plan = PLAN_ANISO
    net = vnet.build(plan, 1, 2)
    stage_kernels = [u.conv.kernel_size for u in net.encoder[0].units]
    stage_kernels += [u.conv.kernel_size for s in net.encoder[1:] for u in s[1].units]
    assert stage_kernels == [(1, 5, 5)] + [(5, 5, 5)] * (2 + 3)  # stages of 1, 2, 3 convolutions
    downs = [s[0].conv for s in net.encoder[1:]]
    assert [(d.kernel_size, d.stride) for d in downs] == [(s, s) for s in plan.strides[1:]]
    assert not any(isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)) for m in net.modules())
    units = [m for m in net.modules() if isinstance(m, vnet.Unit)]
    assert all(isinstance(u.act, nn.PReLU) and u.act.weight.numel() == u.conv.out_channels for u in units)


@pytest.mark.parametrize("where", ["stage 0", "stage 1", "decoder"])
def test_each_vnet_stage_learns_a_residual(where):
    """With its last convolution zeroed a stage is the identity (stage 0: the input replicated to
    f_0 channels, as the paper replicates its one-channel volume)."""
    net = vnet.build(PLAN_3D, 3, 2)
    stage = {"stage 0": net.encoder[0], "stage 1": net.encoder[1][1], "decoder": net.decoder[0].stage}[where]
    last = stage.units[-1].conv
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    c_in = stage.units[0].conv.in_channels
    x = torch.randn(2, c_in, 8, 8, 8)
    expected = torch.cat([x] * math.ceil(stage.c_out / c_in), dim=1)[:, : stage.c_out]
    with torch.no_grad():
        assert torch.equal(stage(x), expected)


def test_vnet_refuses_an_unknown_norm():
    with pytest.raises(UserError, match="norm 'group'"):
        vnet.build(PLAN_3D, 1, 2, norm="group")


# --- 3D U-Net (Çiçek et al. 2016) ----------------------------------------------------------------------

def cicek_parameters(plan: NetworkPlan, c_in: int, k: int) -> int:
    """Level s: conv c → f_s, conv f_s → 2 f_s (batch norm 2 c each); synthesis: up-conv keeping the
    channels, two convs to 2 f_l; 1×1 head."""
    def unit(ci: int, co: int, kernel: tuple[int, ...]) -> int:
        return ci * co * math.prod(kernel) + co + 2 * co
    w = [2 * f for f in plan.features_per_stage]
    inputs = [c_in, *w[:-1]]
    total = sum(unit(inputs[s], f, kern) + unit(f, 2 * f, kern)
                for s, (f, kern) in enumerate(zip(plan.features_per_stage, plan.kernel_sizes)))
    for lvl in range(plan.n_stages - 1):
        kern = plan.kernel_sizes[lvl]
        total += w[lvl + 1] ** 2 * math.prod(plan.strides[lvl + 1]) + w[lvl + 1]
        total += unit(w[lvl + 1] + w[lvl], w[lvl], kern) + unit(w[lvl], w[lvl], kern)
    return total + w[0] * k + k


@PLANS
def test_cicek_parameters_are_the_papers(plan):
    assert sum(p.numel() for p in cicek_unet.build(plan, 2, 3).parameters()) == cicek_parameters(plan, 2, 3)


def test_cicek_widths_are_the_papers_for_nnunets_first_four_widths():
    """32, 64 | 64, 128 | 128, 256 | 256, 512 (Çiçek et al. Fig. 2), from widths 32, 64, 128, 256."""
    plan = replace(PLAN_3D, features_per_stage=(32, 64, 128, 256))
    net = cicek_unet.build(plan, 3, 3)
    convs = [m.out_channels for m in net.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert convs == [32, 64, 64, 128, 128, 256, 256, 512]
    assert [m.out_channels for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose3d)] == [512, 256, 128]


def test_cicek_has_batch_norm_before_every_relu_and_max_pooling():
    net = cicek_unet.build(PLAN_ANISO, 1, 2)
    units = [m for m in net.modules() if isinstance(m, cicek_unet.ConvBNReLU)]
    assert units and all(isinstance(u[1], nn.BatchNorm3d) and isinstance(u[2], nn.ReLU) for u in units)
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool3d)]
    assert [p.kernel_size for p in pools] == list(PLAN_ANISO.strides[1:])


# --- Attention U-Net (Oktay et al. 2018) ----------------------------------------------------------------

def attention_parameters(plan: NetworkPlan, c_in: int, k: int) -> int:
    """Two conv + BN units per level, nnlite's gate on every skip, a 1×1 head per decoder scale."""
    def block(ci: int, co: int, kernel: tuple[int, ...]) -> int:
        return ci * co * math.prod(kernel) + 3 * co + co * co * math.prod(kernel) + 3 * co
    f = plan.features_per_stage
    inputs = [c_in, *f[:-1]]
    total = sum(block(inputs[s], f[s], plan.kernel_sizes[s]) for s in range(plan.n_stages))
    for lvl in range(plan.n_stages - 1):
        inner = gate_channels(f[lvl])
        total += f[lvl] * inner * math.prod(plan.strides[lvl + 1]) + f[lvl + 1] * inner + inner + inner + 1
        total += block(f[lvl + 1] + f[lvl], f[lvl], plan.kernel_sizes[lvl]) + f[lvl] * k + k
    return total


@PLANS
def test_attention_parameters_are_the_papers(plan):
    assert sum(p.numel() for p in attention_unet.build(plan, 2, 3).parameters()) == attention_parameters(plan, 2, 3)


def test_attention_unet_gates_every_skip_with_nnlites_gate():
    net = attention_unet.build(PLAN_3D, 1, 2, deep_supervision=False).eval()
    assert [type(level.gate) for level in net.decoder] == [AttentionGate] * (PLAN_3D.n_stages - 1)
    x = torch.randn(1, 1, *patch(PLAN_3D))
    with torch.no_grad():
        before = net(x)
        for level in net.decoder:  # α = sigmoid(-100) ≈ 0: every skip closed
            nn.init.zeros_(level.gate.psi.weight)
            nn.init.constant_(level.gate.psi.bias, -100.0)
        assert not torch.allclose(before, net(x))
    assert any(isinstance(m, nn.MaxPool3d) for m in net.modules())
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())


# --- through the commands ------------------------------------------------------------------------------

@pytest.mark.slow
def test_zoo_networks_plan_train_predict_and_export_through_the_commands(tmp_path):
    """On the demo (2 cases, a narrow 3d_fullres with the demo's classification head): each zoo network
    is a configuration added by `plan --add-config … --set network.architecture=…`; it trains fold 0
    (with the online pseudo-Dice, whose full-resolution logits are one tensor for V-Net and Çiçek),
    `predict` reproduces the fold's validation, and `export onnx` writes a checked file."""
    import json

    from nnlite.data.image_io import read_image
    from nnlite.export import main as export_main
    from nnlite.plans import load_plans, save_plans
    from nnlite.predict import main as predict_main
    from nnlite.train import main as train_main
    from tests.command_line import run_command
    from tests.work_fixtures import small_work

    work = small_work(tmp_path, n_cases=2)
    plans = load_plans(work / "plans.json")
    parent = plans.configurations["3d_fullres"]
    narrow = replace(parent.network, features_per_stage=tuple(max(2, f // 16) for f in parent.network.features_per_stage))
    save_plans(replace(plans, configurations={"3d_fullres": replace(parent, network=narrow)}), work / "plans.json")
    zoo = {"z_vnet": "vnet", "z_cicek": "cicek_unet", "z_attention": "attention_unet"}
    for name, module in zoo.items():
        result = run_command("plan", work, "--add-config", name, "--from", "3d_fullres",
                             "--set", f"network.architecture=nnlite.network.zoo.{module}:build")
        assert result.returncode == 0, result.stderr
    schedule = ["--train-config", "debug", "--device", "cpu", "--seed", "0", "--epochs", "1", "--iters-per-epoch",
                "2", "--val-iters", "1", "--batch-size", "2", "--workers", "0", "--fold", "0"]
    case = json.loads((work / "splits.json").read_text())[0]["val"][0]
    images = tmp_path / "images"
    images.mkdir()
    for path in (tmp_path / "raw" / "imagesTr").glob(f"{case}_*.nii.gz"):
        (images / path.name).write_bytes(path.read_bytes())
    for name in zoo:
        assert train_main([str(work), "--config", name, *schedule]) == 0
        fold = work / "results" / name / "fold_0"
        assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["network"]  # a state dict was saved
        assert predict_main([str(work), str(images), str(tmp_path / name), "--config", name, "--folds", "0",
                             "--no-mirroring", "--device", "cpu"]) == 0
        validated = read_image(fold / "validation" / f"{case}.nii.gz").array
        assert (read_image(tmp_path / name / f"{case}.nii.gz").array == validated).all()
    assert export_main(["onnx", str(work), str(tmp_path / "vnet.onnx"), "--config", "z_vnet", "--fold", "0"]) == 0
    assert (tmp_path / "vnet.onnx").stat().st_size > 0
