"""Converted nnU-Net networks compute nnU-Net's logits: the forward pass against numbers recorded once.

tests/data/nnunet_forward.npz holds, for a plain 3D network (anisotropic strides), a plain 2D one
and a 3D ResEnc one, the weights of a seeded network that nnunetv2 2.8.1 built (nnU-Net's key
names), an input batch and every deep-supervision output nnU-Net computed from it
(`benchmarks/record_nnunet_facts.py`). Here each network is rebuilt the nnlite way from its
recorded plans.json `architecture` entry, the weights go through nnlite's renaming, and the
logits must match. Nothing here imports nnunetv2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlite.network import build_unet
from nnlite.network.nnunet_weights import nnunet_to_nnlite
from nnlite.planning.nnunet_plans import network_from_architecture

RECORD = Path(__file__).resolve().parent / "data" / "nnunet_forward.npz"
with np.load(RECORD, allow_pickle=False) as npz:
    ARRAYS = {key: npz[key] for key in npz.files}
META = json.loads(str(ARRAYS["meta"]))
NETWORKS = sorted(META["networks"])
# Both sides run the same float32 torch kernels, so the logits agree to rounding. Measured against
# the recording (torch 2.14.1) with torch 2.13 on CPU: the plain networks to ≤ 1e-7 of the largest
# logit, ResEnc to ≤ 2.3e-6 (nnlite averages a residual skip as a reshaped mean, nnU-Net with
# AvgPool: another summation order, amplified by the InstanceNorms of the small deep levels).
# 1e-5 leaves room for another CPU's summation order yet catches real differences, measured on
# these records: InstanceNorm eps 1e-6 instead of 1e-5 ≥ 1.5e-5, LeakyReLU slope 0.02 ≥ 5e-2, the
# skip concatenated before the upsampled features ≥ 0.9.
RELATIVE_TOLERANCE = 1e-5  # max |nnlite - nnU-Net| / max |nnU-Net logit|, per output


def recorded(name: str, kind: str) -> dict[str, torch.Tensor]:
    """`<name>/<kind>/<key>` arrays as tensors by key (kind: weight, output)."""
    prefix = f"{name}/{kind}/"
    return {key[len(prefix):]: torch.from_numpy(value) for key, value in ARRAYS.items() if key.startswith(prefix)}


def recorded_input(name: str) -> torch.Tensor:
    return torch.from_numpy(ARRAYS[f"{name}/input"])  # (B, C, *patch)


def recorded_outputs(name: str) -> list[torch.Tensor]:
    """nnU-Net's deep-supervision outputs, highest resolution first: (B, K, *patch / scale_i)."""
    outputs = recorded(name, "output")
    return [outputs[str(i)] for i in range(META["networks"][name]["outputs"])]


def converted_network(name: str, deep_supervision: bool = True) -> torch.nn.Module:
    """nnlite's network for the recorded architecture entry, holding nnU-Net's weights renamed."""
    architecture = META["networks"][name]["architecture"]
    plan = network_from_architecture(architecture, "nnunet_forward.npz")
    net = build_unet(plan, META["in_channels"], META["num_classes"], deep_supervision=deep_supervision)
    net.load_state_dict(nnunet_to_nnlite(recorded(name, "weight"), architecture["network_class_name"]))
    return net


def assert_close_to_nnunet(mine: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(mine) == len(expected)
    for level, (a, b) in enumerate(zip(mine, expected)):
        assert a.shape == b.shape, f"output {level}: {tuple(a.shape)} != nnU-Net's {tuple(b.shape)}"
        error = (a - b).abs().max().item() / b.abs().max().item()
        assert error <= RELATIVE_TOLERANCE, f"output {level}: max difference {error:.2e} of the logits' scale"


def test_the_record_covers_what_it_should():
    """3D plain with anisotropic strides, 2D plain, 3D ResEnc; every deep-supervision output."""
    kinds = {(len(META["networks"][n]["architecture"]["arch_kwargs"]["strides"][0]),
              META["networks"][n]["architecture"]["network_class_name"].rsplit(".", 1)[-1]) for n in NETWORKS}
    assert kinds == {(3, "PlainConvUNet"), (2, "PlainConvUNet"), (3, "ResidualEncoderUNet")}
    assert {tuple(s) for s in META["networks"]["plain_3d"]["architecture"]["arch_kwargs"]["strides"]} >= {(1, 2, 2)}
    for name in NETWORKS:
        assert META["networks"][name]["outputs"] == META["networks"][name]["architecture"]["arch_kwargs"]["n_stages"] - 1


@pytest.mark.parametrize("name", NETWORKS)
def test_converted_network_reproduces_nnunets_logits(name):
    """Eval mode, deep supervision on: every output, highest resolution first."""
    net = converted_network(name).eval()
    with torch.no_grad():
        outputs = net(recorded_input(name))
    assert_close_to_nnunet(outputs, recorded_outputs(name))


@pytest.mark.parametrize("name", NETWORKS)
def test_train_mode_and_no_deep_supervision_give_the_same_logits(name):
    """nnU-Net's train-mode outputs equal its eval-mode ones (checked when recorded); without deep
    supervision nnlite returns the full-resolution output alone."""
    x, expected = recorded_input(name), recorded_outputs(name)
    with torch.no_grad():
        assert_close_to_nnunet(converted_network(name).train()(x), expected)
        assert_close_to_nnunet([converted_network(name, deep_supervision=False).eval()(x)], expected[:1])
