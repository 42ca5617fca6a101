"""nnU-Net v2 plans → nnlite plans: Hippocampus's real nnUNetPlans.json, inherits_from, plan --nnunet-plans,
splits_final.json pickup."""

from __future__ import annotations

import copy
import json

import pytest

from nnlite.common.errors import UserError
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.plan import main as plan_main
from nnlite.planning import fingerprint as fingerprint_module
from nnlite.planning.nnunet_plans import plans_from_nnunet, resolve_configuration
from nnlite.planning.splits import make_splits
from nnlite.planning.work_folder import plan_from_nnunet_plans
from nnlite.plans import load_plans, save_plans
from tests.command_line import assert_one_line_error, run_command
from tests.nnunet_fixtures import HIPPOCAMPUS_PLANS

HIPPOCAMPUS_DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                       "numTraining": 220, "file_ending": ".nii.gz"}


def assert_same_plan(plans, nnunet: dict) -> None:
    """patch, batch, spacing and topology exactly as nnU-Net planned them, per configuration."""
    assert plans.transpose == tuple(nnunet["transpose_forward"])
    for name, raw in nnunet["configurations"].items():
        raw = resolve_configuration(nnunet["configurations"], name)
        config, kw = plans.configurations[name], raw["architecture"]["arch_kwargs"]
        assert list(config.patch_size) == raw["patch_size"]
        assert config.batch_size == raw["batch_size"]
        assert list(config.spacing) == raw["spacing"]
        assert [list(s) for s in config.network.strides] == kw["strides"]
        assert [list(k) for k in config.network.kernel_sizes] == kw["kernel_sizes"]
        assert list(config.network.features_per_stage) == kw["features_per_stage"]
        assert config.data_identifier in (raw["data_identifier"], f"{raw['data_identifier']}_{name}")


def test_hippocampus_plans_translate_exactly():
    plans = plans_from_nnunet(HIPPOCAMPUS_PLANS, HIPPOCAMPUS_DATASET)
    assert sorted(plans.configurations) == ["2d", "3d_fullres"]
    assert_same_plan(plans, HIPPOCAMPUS_PLANS)
    assert plans.configurations["3d_fullres"].normalization == ("zscore",)
    assert plans.intensity_per_channel["0"].percentile_99_5 == pytest.approx(
        HIPPOCAMPUS_PLANS["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"])


def with_inheriting(nnunet: dict) -> dict:
    nnunet = copy.deepcopy(nnunet)
    nnunet["configurations"]["3d_fullres_bs2"] = {"inherits_from": "3d_fullres", "batch_size": 2}
    nnunet["configurations"]["3d_fullres_bs2_nomask"] = {"inherits_from": "3d_fullres_bs2",
                                                         "use_mask_for_norm": [True]}
    return nnunet


def test_inherits_from_is_kept_under_nnunets_names(tmp_path):
    nnunet = with_inheriting(HIPPOCAMPUS_PLANS)
    plans = plans_from_nnunet(nnunet, HIPPOCAMPUS_DATASET)
    save_plans(plans, tmp_path / "plans.json")
    assert load_plans(tmp_path / "plans.json") == plans  # children stored as what they change
    child, grandchild = plans.configurations["3d_fullres_bs2"], plans.configurations["3d_fullres_bs2_nomask"]
    assert child.batch_size == 2 and grandchild.batch_size == 2
    assert (child.inherits_from, grandchild.inherits_from) == ("3d_fullres", "3d_fullres_bs2")
    assert child.patch_size == plans.configurations["3d_fullres"].patch_size
    assert grandchild.use_mask_for_norm == (True,)
    # another normalization: its own preprocessed folder (nnU-Net would share its parent's)
    assert child.data_identifier == plans.configurations["3d_fullres"].data_identifier != grandchild.data_identifier
    assert_same_plan(plans, nnunet)


def test_inheritance_circle_and_missing_parent_are_errors():
    configs = {"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}
    with pytest.raises(UserError, match="circle"):
        resolve_configuration(configs, "a")
    with pytest.raises(UserError, match="'c'"):
        resolve_configuration({"a": {"inherits_from": "c"}}, "a")


@pytest.mark.parametrize("key, value, named", [
    ("normalization_schemes", ["MyLabsNormalization"], "MyLabsNormalization"),
    ("architecture.arch_kwargs.dropout_op", "torch.nn.Dropout3d", "Dropout3d"),
    ("architecture.arch_kwargs.nonlin", "torch.nn.ReLU", "torch.nn.ReLU"),
    ("architecture.arch_kwargs.norm_op", "torch.nn.BatchNorm3d", "BatchNorm3d"),
    ("resampling_fn_data_kwargs.force_separate_z", True, "force_separate_z"),
])
def test_what_nnlite_computes_differently_is_refused_by_name(key, value, named):
    nnunet = copy.deepcopy(HIPPOCAMPUS_PLANS)
    target = nnunet["configurations"]["3d_fullres"]
    *path, last = key.split(".")
    for part in path:
        target = target[part]
    target[last] = value
    with pytest.raises(UserError, match=named):
        plans_from_nnunet(nnunet, HIPPOCAMPUS_DATASET)


def demo_plans_file(tmp_path, channels: int = 3):
    nnunet = with_inheriting(HIPPOCAMPUS_PLANS)
    for config in nnunet["configurations"].values():
        if "normalization_schemes" in config:
            config["normalization_schemes"] = ["ZScoreNormalization"] * channels
            config["use_mask_for_norm"] = [False] * channels
    nnunet["configurations"]["3d_fullres_bs2_nomask"]["use_mask_for_norm"] = [True] * channels
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(nnunet))
    return path, nnunet


def test_plan_with_nnunet_plans_and_splits_final_on_the_command_line(tmp_path, capsys):
    raw = generate_demo_dataset(tmp_path / "raw", n_cases=3, seed=0)
    path, nnunet = demo_plans_file(tmp_path)
    splits = make_splits(["demo_001", "demo_002", "demo_003"], 3, seed=7)
    (raw / "splits_final.json").write_text(json.dumps(splits))
    work = tmp_path / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 1e4)
        assert plan_main([str(raw), str(work), "--nnunet-plans", str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "splits_final.json" in out and "3d_fullres_bs2" in out
    assert json.loads((work / "splits.json").read_text()) == splits
    plans = load_plans(work / "plans.json")
    assert_same_plan(plans, nnunet)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"configurations": {}}))
    assert_one_line_error(run_command("plan", raw, tmp_path / "w2", "--nnunet-plans", bad), "bad.json",
                          "not an nnU-Net v2 plans file")


def test_splits_final_naming_other_cases_is_refused(tmp_path):
    raw = generate_demo_dataset(tmp_path / "raw", n_cases=3, seed=0)
    path, _ = demo_plans_file(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "splits_final.json").write_text(json.dumps(make_splits(["a", "b", "c"], 3)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 1e4)
        with pytest.raises(UserError, match="splits_final.json"):
            plan_from_nnunet_plans(raw, tmp_path / "work", path)


@pytest.mark.slow
def test_hippocampus_nnunet_plans_reproduced_by_plan(tmp_path, hippocampus_raw):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(HIPPOCAMPUS_PLANS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", 1e4)
        plans = plan_from_nnunet_plans(hippocampus_raw, tmp_path / "work", path)
    assert_same_plan(load_plans(tmp_path / "work" / "plans.json"), HIPPOCAMPUS_PLANS)
    assert plans.configurations["3d_fullres"].patch_size == (40, 56, 40)


def test_plans_older_than_nnunet_2_4_describe_the_same_network():
    """Before v2.4 nnU-Net wrote the network as flat keys; the translation must give the same topology."""
    nnunet = copy.deepcopy(HIPPOCAMPUS_PLANS)
    config = nnunet["configurations"]["3d_fullres"]
    kw = config.pop("architecture")["arch_kwargs"]
    config.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=32, unet_max_num_features=320,
                  conv_kernel_sizes=kw["kernel_sizes"], pool_op_kernel_sizes=kw["strides"],
                  n_conv_per_stage_encoder=kw["n_conv_per_stage"], n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"])
    old = plans_from_nnunet(nnunet, HIPPOCAMPUS_DATASET).configurations["3d_fullres"].network
    assert old == plans_from_nnunet(HIPPOCAMPUS_PLANS, HIPPOCAMPUS_DATASET).configurations["3d_fullres"].network


def test_nnunets_rgb_normalization_is_translated_to_x_over_255():
    nnunet = copy.deepcopy(HIPPOCAMPUS_PLANS)
    for config in nnunet["configurations"].values():
        config["normalization_schemes"] = ["RGBTo01Normalization"]
    plans = plans_from_nnunet(nnunet, HIPPOCAMPUS_DATASET)
    assert plans.configurations["3d_fullres"].normalization == ("rgb_0_1",)
