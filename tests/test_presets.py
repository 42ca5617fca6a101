"""Planner presets: nnU-Net's residual-encoder planners (`plan --preset resenc-m|l|xl`).

The expected values are data: `tests/data/hippocampus/` holds nnU-Net v2.8.1's own fingerprint of
Dataset004_Hippocampus (`nnUNetv2_extract_fingerprint`) and the plans its `nnUNetPlannerResEncM`
made from it (`nnUNetv2_plan_experiment -pl nnUNetPlannerResEncM`). nnunetv2 is never needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnlite.common.errors import UserError
from nnlite.network import geometry
from nnlite.planning.fingerprint import fingerprint_from_nnunet
from nnlite.planning.planner import plan_experiment
from nnlite.planning.presets import PRESETS
from nnlite.planning.work_folder import plan_from_fingerprint
from nnlite.plans import load_plans
from tests.command_line import run_command

DATA = Path(__file__).parent / "data" / "hippocampus"
# nnU-Net's ResidualEncoderUNet built from those plans (1 input channel, 3 outputs), counted with
# dynamic_network_architectures 0.4.4, and its `compute_conv_feature_map_size(patch)`
RESENC_M_PARAMETERS = {"3d_fullres": 25_895_593, "2d": 8_728_681}
RESENC_M_PROXY = {"3d_fullres": 23_609_600, "2d": 1_001_280}


def reference_configurations() -> dict[str, dict]:
    plans = json.loads((DATA / "nnUNetResEncUNetMPlans.json").read_text())
    return plans["configurations"]


def hippocampus_fingerprint():
    return fingerprint_from_nnunet(json.loads((DATA / "dataset_fingerprint.json").read_text()),
                                   json.loads((DATA / "dataset.json").read_text()))


def test_resenc_m_equals_nnunet_on_hippocampus() -> None:
    plans = plan_experiment(hippocampus_fingerprint(), memory_model="nnunet", preset="resenc-m")
    reference = reference_configurations()
    assert set(plans.configurations) == set(reference)
    for name, config in plans.configurations.items():
        arch = reference[name]["architecture"]["arch_kwargs"]
        net = config.network
        assert reference[name]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
        assert list(config.patch_size) == reference[name]["patch_size"]
        assert config.batch_size == reference[name]["batch_size"]
        assert [list(s) for s in net.strides] == arch["strides"]
        assert [list(k) for k in net.kernel_sizes] == arch["kernel_sizes"]
        assert list(net.features_per_stage) == arch["features_per_stage"]
        assert net.encoder == "residual"
        assert list(net.blocks_per_stage) == arch["n_blocks_per_stage"]
        assert [net.conv_per_stage_decoder] * (net.n_stages - 1) == arch["n_conv_per_stage_decoder"]
        assert geometry.count_parameters(net, 1, 3) == RESENC_M_PARAMETERS[name]
        assert geometry.conv_feature_map_elements(net, config.patch_size, 1, 3) == RESENC_M_PROXY[name]


def test_resenc_batch_is_not_capped_at_five_percent() -> None:
    """The default planner caps Hippocampus' batch by 5 % of the dataset; ResEnc M has no cap (58)."""
    fingerprint = hippocampus_fingerprint()
    default = plan_experiment(fingerprint, memory_model="nnunet")
    resenc = plan_experiment(fingerprint, memory_model="nnunet", preset="resenc-m")
    assert default.configurations["3d_fullres"].batch_size < resenc.configurations["3d_fullres"].batch_size
    assert default.configurations["3d_fullres"].network.encoder == "plain"


def test_resenc_shrinks_without_the_reference_batch_factor() -> None:
    """A large 2D image: the default planner shrinks while estimate / 12 × 2 > reference, ResEnc
    while estimate > reference (a larger 135e6 reference, but no factor 6), so ResEnc's 2D patch
    is smaller and its batch ≥ 12 (reference doc §3.8)."""
    from tests.test_planner import make_fingerprint

    fingerprint = make_fingerprint((1.0, 1.0, 1.0), (300, 1024, 1024), n=100)
    default = plan_experiment(fingerprint, memory_model="nnunet", configs=["2d"]).configurations["2d"]
    resenc = plan_experiment(fingerprint, memory_model="nnunet", configs=["2d"],
                             preset="resenc-m").configurations["2d"]
    default_voxels = default.patch_size[0] * default.patch_size[1]
    assert resenc.patch_size[0] * resenc.patch_size[1] < default_voxels
    assert resenc.batch_size >= 12


@pytest.mark.parametrize("preset, gb", [("resenc-m", 8), ("resenc-l", 24), ("resenc-xl", 40), ("default", 8)])
def test_preset_memory_targets(preset: str, gb: float) -> None:
    plans = plan_experiment(hippocampus_fingerprint(), preset=preset, configs=["3d_fullres"])
    assert plans.gpu_memory_gb == gb
    assert plans.extra["preset"] == preset
    blocks = plans.configurations["3d_fullres"].network.blocks_per_stage
    assert blocks == ((1, 3, 4, 6) if preset != "default" else ())


def test_presets_grow_the_proxy_reference() -> None:
    references = [PRESETS[p].reference_elements[3] for p in ("resenc-m", "resenc-l", "resenc-xl")]
    assert references == [680_000_000, 2_100_000_000, 3_600_000_000]
    assert [PRESETS[p].max_dataset_covered for p in ("default", "resenc-m")] == [0.05, 1.0]


def test_bytes_model_sizes_residual_networks() -> None:
    """`--gpu-memory-gb` works for ResEnc under the bytes model: a smaller budget never gives a
    larger plan, and each configuration's predicted memory fits its budget."""
    fingerprint = hippocampus_fingerprint()
    small = plan_experiment(fingerprint, 0.5, preset="resenc-m").configurations["3d_fullres"]
    large = plan_experiment(fingerprint, 8, preset="resenc-m").configurations["3d_fullres"]
    assert small.predicted_memory_bytes <= 0.5 * 2**30
    assert small.batch_size * small.patch_size[0] * small.patch_size[1] * small.patch_size[2] <= \
        large.batch_size * large.patch_size[0] * large.patch_size[1] * large.patch_size[2]
    assert small.network.encoder == "residual"


def test_plan_command_with_preset(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run_command("plan", "--fingerprint", str(DATA / "dataset_fingerprint.json"), str(work),
                     "--preset", "resenc-m", "--memory-model", "nnunet")
    assert result.returncode == 0, result.stderr
    assert "resenc-m preset" in result.stdout
    config = load_plans(work / "plans.json").configurations["3d_fullres"]
    assert (config.batch_size, config.network.blocks_per_stage) == (58, (1, 3, 4, 6))


def test_unknown_preset_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="preset"):
        plan_from_fingerprint(DATA / "dataset_fingerprint.json", tmp_path, preset="resenc-s")
