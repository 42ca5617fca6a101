"""Training memory measured on the network itself (nnlite/network/measured_memory.py): it agrees with
the byte model of nnlite's U-Nets, and it sizes a network the byte model does not know."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from functools import partial

import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.network import geometry
from nnlite.network.measured_memory import bytes_per_voxel, measure_training_step
from nnlite.network.unet import build_unet
from nnlite.plan import main as plan_main
from nnlite.planning.memory_budget import GIB
from nnlite.planning.planner import network_plan, plan_experiment
from nnlite.planning.presets import get_preset
from nnlite.planning.topology import pool_and_conv_props
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats, NetworkPlan, load_plans

TOLERANCE = 0.05  # the bar; the measured agreement is ≤ 0.2 % (docs/planning.md)
IN_CHANNELS, CLASSES = 2, 3
# the planner's own topologies (pooling loop of planning/topology.py) at patches small enough for
# seconds on a CPU: isotropic 3D (Hippocampus), anisotropic 3D (5 stages), 2D (6 stages)
TOPOLOGIES = {"3d_hippocampus": ((1.0, 1.0, 1.0), (40, 56, 40)),
              "3d_anisotropic": ((3.0, 0.8, 0.8), (16, 64, 64)),
              "2d": ((1.0, 1.0), (128, 128))}
FAMILIES = {"plain": ("default", False), "resenc-m": ("resenc-m", False), "gated": ("default", True)}


def planned(family: str, topology: str) -> tuple[NetworkPlan, tuple[int, ...]]:
    """The network the planner plans for `family` (preset, attention gates) on `topology`."""
    preset, gates = FAMILIES[family]
    spacing, patch = TOPOLOGIES[topology]
    topo = pool_and_conv_props(spacing, patch)
    return replace(network_plan(topo, get_preset(preset)), attention_gates=gates), topo.patch_size


def relative_error(measured: int, predicted: int) -> float:
    return abs(measured - predicted) / predicted


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_measured_activations_agree_with_the_byte_model(family, topology):
    """Plain, ResEnc-M and gated plans at batch 2 under AMP: saved network tensors + loss buffers
    within 5 % of geometry.activation_bytes, and the whole step within 5 % of training_memory_bytes."""
    plan, patch = planned(family, topology)
    step = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2, amp=True)
    predicted = geometry.activation_bytes(plan, patch, IN_CHANNELS, CLASSES, 2, geometry.AMP_BYTES)
    assert relative_error(step.activation_bytes, predicted) <= TOLERANCE, (step, predicted)
    total = geometry.training_memory_bytes(plan, patch, IN_CHANNELS, CLASSES, 2, amp=True)
    assert relative_error(step.training_memory_bytes(2, amp=True), total) <= TOLERANCE
    assert step.trainable_parameters == geometry.count_parameters(plan, IN_CHANNELS, CLASSES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_precision_enters_the_measurement(family):
    """fp32 (no AMP): the network's saved tensors cost twice the AMP bytes, the fp32 loss the same,
    and the total agrees with the byte model at 4 bytes."""
    plan, patch = planned(family, "3d_hippocampus")
    amp = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2, amp=True)
    fp32 = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2, amp=False)
    assert fp32.loss_bytes == amp.loss_bytes
    assert relative_error(fp32.network_bytes, 2 * amp.network_bytes) <= 0.01
    predicted = geometry.activation_bytes(plan, patch, IN_CHANNELS, CLASSES, 2, geometry.FP32_BYTES)
    assert relative_error(fp32.activation_bytes, predicted) <= TOLERANCE


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fake_tensors_count_what_real_tensors_save(family):
    """The same step on real CPU tensors (fp32; small widths and patch) saves exactly the bytes the
    fake-tensor measurement counts: no storage is missed or counted twice."""
    plan, _ = planned(family, "3d_hippocampus")
    plan = replace(plan, features_per_stage=tuple(f // 8 for f in plan.features_per_stage))
    patch = (16, 24, 16)
    fake = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2, amp=False)
    real = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2, amp=False,
                                 fake=False)
    assert fake == real


def test_the_measurement_grows_linearly_with_the_batch():
    """What the planner relies on when it measures batch 1 and scales: exact for the network's
    tensors; the loss keeps a few per-class sums (bytes) that do not grow with the batch."""
    plan, patch = planned("resenc-m", "3d_anisotropic")
    one = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=1)
    two = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES, batch_size=2)
    assert two.network_bytes == 2 * one.network_bytes and two.logits_bytes == 2 * one.logits_bytes
    assert abs(two.loss_bytes - 2 * one.loss_bytes) <= 16 * CLASSES
    assert relative_error(one.training_memory_bytes(2), two.training_memory_bytes(2)) <= 1e-6


def build_wide_unet(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False, factor=2):
    """A network the byte model does not describe: the plan's U-Net at `factor` × its widths."""
    wide = replace(plan, features_per_stage=tuple(factor * f for f in plan.features_per_stage))
    return build_unet(wide, in_channels, num_classes, deep_supervision=deep_supervision,
                      region_outputs=region_outputs)


def test_a_custom_network_is_measured_not_assumed():
    """Doubled widths: about twice the activation bytes per voxel and four times the parameters of
    the plan it was given; factor 1 measures exactly the built-in."""
    plan, patch = planned("plain", "3d_hippocampus")
    plain = measure_training_step(build_unet, plan, patch, IN_CHANNELS, CLASSES)
    same = measure_training_step(partial(build_wide_unet, factor=1), plan, patch, IN_CHANNELS, CLASSES)
    wide = measure_training_step(build_wide_unet, plan, patch, IN_CHANNELS, CLASSES, builder_kwargs={"factor": 2})
    assert same == plain
    assert 1.8 < bytes_per_voxel(wide, patch) / bytes_per_voxel(plain, patch) < 2.1
    assert 3.5 < wide.trainable_parameters / plain.trainable_parameters < 4.1
    assert wide.training_memory_bytes(2) > 1.8 * plain.training_memory_bytes(2) - geometry.WORKSPACE_BYTES


def test_a_network_that_cannot_be_measured_is_one_line():
    def broken(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False):
        raise ValueError("no such block")

    plan, patch = planned("plain", "2d")
    with pytest.raises(UserError) as raised:
        measure_training_step(broken, plan, patch, 1, 2)
    message = str(raised.value)
    assert "network.architecture" in message and "broken" in message and "no such block" in message
    assert "\n" not in message and math.prod(patch) > 0


class ReadsAValue(torch.nn.Module):
    """A forward that looks at a value on the host: fake tensors have none."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        return self.inner(x * 2 if x.mean().item() > 100 else x)


def test_a_network_that_reads_values_is_one_line_that_says_why():
    def reads_a_value(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False):
        return ReadsAValue(build_unet(plan, in_channels, num_classes, deep_supervision, region_outputs))

    plan, patch = planned("plain", "2d")
    with pytest.raises(UserError, match="reads_a_value could not be measured .* fake tensors, which hold no values"):
        measure_training_step(reads_a_value, plan, patch, 1, 2)


# --- the planner sizes a network of its own by measuring it ---------------------------------------

WIDE_MODULE = """
from dataclasses import replace

from nnlite.network.unet import build_unet
from nnlite.plan import main as plan_main


def build_wide(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False, factor=2):
    wide = replace(plan, features_per_stage=tuple(factor * f for f in plan.features_per_stage),
                   architecture=None, kwargs={})
    return build_unet(wide, in_channels, num_classes, deep_supervision=deep_supervision,
                      region_outputs=region_outputs)
"""


@pytest.fixture
def wide_builder(tmp_path, monkeypatch):
    """A builder in a module outside nnlite (a folder on sys.path), named as plans.json names it."""
    (tmp_path / "wide_nets.py").write_text(WIDE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wide_nets:build_wide"
    sys.modules.pop("wide_nets", None)


def hippocampus_like(n_cases: int) -> Fingerprint:
    """n_cases of median shape 36×50×35 at 1 mm: the planner's patch is 40×56×40, 4 stages."""
    stats = IntensityStats(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                           percentile_99_5=1.0)
    cases = tuple(CaseFingerprint(f"case{i:04d}", (1.0, 1.0, 1.0), (36, 50, 35), (36, 50, 35))
                  for i in range(n_cases))
    return Fingerprint(cases=cases, intensity_per_channel={"0": stats}, channel_names={"0": "MRI"},
                       labels={"background": 0, "l1": 1, "l2": 2}, median_relative_size_after_crop=1.0)


def fullres(fingerprint: Fingerprint, gb: float, architecture: str | None = None, memory_model: str = "bytes",
            **kwargs):
    plans = plan_experiment(fingerprint, gb, configs=["3d_fullres"], architecture=architecture,
                            network_kwargs=kwargs, memory_model=memory_model)
    return plans.configurations["3d_fullres"]


def test_a_custom_networks_patch_follows_its_memory_per_voxel(wide_builder):
    """At 1 GB the plain U-Net keeps the 40×56×40 patch; the same U-Net through a builder
    (factor 1) is measured to the same plan; at twice the widths the patch shrinks to fit."""
    fingerprint = hippocampus_like(40)
    plain = fullres(fingerprint, 1.0)
    same = fullres(fingerprint, 1.0, wide_builder, factor=1)
    wide = fullres(fingerprint, 1.0, wide_builder, factor=2)
    assert (same.patch_size, same.batch_size) == (plain.patch_size, plain.batch_size) == ((40, 56, 40), 2)
    assert relative_error(same.predicted_memory_bytes, plain.predicted_memory_bytes) <= 0.01
    assert math.prod(wide.patch_size) < math.prod(plain.patch_size)
    assert wide.batch_size == 2 and wide.predicted_memory_bytes <= 1.0 * GIB
    assert (wide.network.architecture, wide.network.kwargs) == (wide_builder, {"factor": 2})
    assert any("measuring one step of wide_nets:build_wide" in reason for reason in wide.reasons)
    # nnU-Net's proxy counts only the built-in U-Net: another builder is measured under it too
    assert fullres(fingerprint, 1.0, wide_builder, "nnunet", factor=2).patch_size == wide.patch_size


def test_a_custom_networks_batch_follows_its_memory_per_voxel(wide_builder):
    """With room for more than 2 samples (and a dataset large enough that the 5 % cap does not bind)
    the patch stays and the wider network gets the smaller batch."""
    fingerprint = hippocampus_like(2000)
    plain = fullres(fingerprint, 2.0)
    wide = fullres(fingerprint, 2.0, wide_builder, factor=2)
    assert wide.patch_size == plain.patch_size == (40, 56, 40)
    assert 2 <= wide.batch_size < plain.batch_size
    assert wide.predicted_memory_bytes <= 2.0 * GIB


def write_fingerprint(tmp_path) -> str:
    """nnU-Net's dataset_fingerprint.json (+ dataset.json) of 40 Hippocampus-like cases."""
    fingerprint = tmp_path / "pre" / "dataset_fingerprint.json"
    fingerprint.parent.mkdir()
    stats = {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1.0, "max": 1.0, "percentile_00_5": -1.0,
             "percentile_99_5": 1.0}
    fingerprint.write_text(json.dumps({
        "spacings": [[1.0, 1.0, 1.0]] * 40, "shapes_after_crop": [[36, 50, 35]] * 40,
        "foreground_intensity_properties_per_channel": {"0": stats}, "median_relative_size_after_cropping": 1.0}))
    (fingerprint.parent / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 40,
        "file_ending": ".nii.gz", "name": "Tiny"}))
    return str(fingerprint)


def test_plan_network_sizes_by_measuring_the_named_builder(wide_builder, tmp_path):
    """`plan --network` (the command): the named builder's network is what the budget judges."""
    fingerprint = write_fingerprint(tmp_path)
    options = ["--gpu-memory-gb", "1", "--configs", "3d_fullres"]
    assert plan_main(["--fingerprint", fingerprint, str(tmp_path / "plain"), *options]) == 0
    assert plan_main(["--fingerprint", fingerprint, str(tmp_path / "wide"), "--network", wide_builder,
                      *options]) == 0
    plain = load_plans(tmp_path / "plain" / "plans.json").configurations["3d_fullres"]
    wide = load_plans(tmp_path / "wide" / "plans.json").configurations["3d_fullres"]
    assert plain.patch_size == (40, 56, 40) and wide.network.architecture == wide_builder
    assert math.prod(wide.patch_size) < math.prod(plain.patch_size)
    assert wide.predicted_memory_bytes <= 1.0 * GIB < plain.predicted_memory_bytes * 2


def test_an_added_configuration_with_another_builder_predicts_measured_memory(wide_builder, tmp_path):
    """`--add-config … --set network.architecture=…` keeps the parent's patch and batch; the memory
    it records is the measured one of the new network (twice the widths: well above the parent's)."""
    work = tmp_path / "work"
    assert plan_main(["--fingerprint", write_fingerprint(tmp_path), str(work), "--configs", "3d_fullres"]) == 0
    assert plan_main([str(work), "--add-config", "wide", "--from", "3d_fullres",
                      "--set", f"network.architecture={wide_builder}"]) == 0
    plans = load_plans(work / "plans.json")
    parent, wide = plans.configurations["3d_fullres"], plans.configurations["wide"]
    assert (wide.patch_size, wide.batch_size) == (parent.patch_size, parent.batch_size)
    assert wide.predicted_memory_bytes > 1.3 * parent.predicted_memory_bytes
