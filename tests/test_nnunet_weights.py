"""Renaming nnU-Net's weights onto build_unet's modules, checked against recorded nnU-Net key names."""

from __future__ import annotations

import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.network import build_unet
from nnlite.network.nnunet_weights import nnlite_to_nnunet, nnunet_to_nnlite
from nnlite.planning.nnunet_plans import network_from_architecture
from tests.nnunet_fixtures import (IN_CHANNELS, NUM_CLASSES, STATE_DICTS, architecture, nnunet_state_dict,
                                   recorded_keys)

NETWORKS = sorted(STATE_DICTS["networks"])


def nnlite_network(name: str):
    plan = network_from_architecture(architecture(name), "test")
    return build_unet(plan, IN_CHANNELS, NUM_CLASSES)


@pytest.mark.parametrize("name", NETWORKS)
def test_recorded_nnunet_keys_map_exactly_onto_build_unet(name):
    """Every nnU-Net tensor lands on exactly one nnlite module of the same shape, none is left over."""
    entry = architecture(name)
    renamed = nnunet_to_nnlite(nnunet_state_dict(name), entry["network_class_name"])
    mine = nnlite_network(name).state_dict()
    assert sorted(renamed) == sorted(mine)
    assert all(tuple(renamed[k].shape) == tuple(mine[k].shape) for k in mine)


@pytest.mark.parametrize("name", NETWORKS)
def test_renaming_both_ways_gives_nnunets_own_keys_back(name):
    """nnlite → nnU-Net names reproduces the recorded keys (without nnU-Net's two kinds of aliases)."""
    cls = architecture(name)["network_class_name"]
    state = nnunet_state_dict(name)
    back = nnlite_to_nnunet(nnunet_to_nnlite(state, cls), cls)
    own = [k for k, _ in recorded_keys(name) if ".all_modules." not in k and not k.startswith("decoder.encoder.")]
    assert sorted(back) == sorted(own)
    assert all(torch.equal(back[k], state[k]) for k in own)


def test_weights_land_where_nnunet_uses_them():
    """Spot checks by meaning: the first conv, the lowest upsampling, the full-resolution head."""
    state = nnunet_state_dict("plain_3d")
    net = nnlite_network("plain_3d")
    net.load_state_dict(nnunet_to_nnlite(state, "PlainConvUNet"))
    assert torch.equal(net.encoder.stages[0][0].conv.weight, state["encoder.stages.0.0.convs.0.conv.weight"])
    assert torch.equal(net.decoder.levels[0].up.weight, state["decoder.transpconvs.0.weight"])
    last = len(net.decoder.heads) - 1
    assert torch.equal(net.decoder.heads[last].bias, state[f"decoder.seg_layers.{last}.bias"])


def test_residual_skip_norm_moves_one_place():
    state = nnunet_state_dict("resenc_3d")
    renamed = nnunet_to_nnlite(state, "ResidualEncoderUNet")
    assert torch.equal(renamed["encoder.stages.1.0.skip.2.weight"], state["encoder.stages.1.blocks.0.skip.1.norm.weight"])
    assert torch.equal(renamed["encoder.stages.1.0.skip.1.weight"], state["encoder.stages.1.blocks.0.skip.1.conv.weight"])


def test_compiled_and_ddp_prefixes_are_unwrapped():
    state = {f"_orig_mod.{k}": v for k, v in nnunet_state_dict("plain_2d").items()}
    assert sorted(nnunet_to_nnlite(state, "PlainConvUNet")) == sorted(nnlite_network("plain_2d").state_dict())


def test_unknown_key_and_class_are_named():
    state = nnunet_state_dict("plain_2d")
    state["encoder.attention.0.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="encoder.attention.0.weight"):
        nnunet_to_nnlite(state, "PlainConvUNet")
    with pytest.raises(UserError, match="MyFancyUNet"):
        nnunet_to_nnlite(nnunet_state_dict("plain_2d"), "my_package.MyFancyUNet")


def test_a_diverging_decoder_alias_is_refused():
    state = dict(nnunet_state_dict("plain_2d"))
    key = "decoder.encoder.stages.0.0.convs.0.conv.weight"
    state[key] = state[key] + 1
    with pytest.raises(UserError, match="differs"):
        nnunet_to_nnlite(state, "PlainConvUNet")


def test_a_diverging_unit_alias_is_refused():
    state = dict(nnunet_state_dict("plain_2d"))
    key = "encoder.stages.1.0.convs.0.all_modules.1.weight"  # the norm's weight, stored twice by nnU-Net
    state[key] = state[key] + 1
    with pytest.raises(UserError, match="all_modules"):
        nnunet_to_nnlite(state, "PlainConvUNet")
