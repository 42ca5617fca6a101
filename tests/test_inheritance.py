"""Configurations that inherit (`"inherits_from"` in plans.json, `plan WORK --add-config`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from nnlite.common.errors import UserError
from nnlite.planning.inheritance import add_configuration
from nnlite.planning.work_folder import plan_from_fingerprint
from nnlite.plans import load_plans, save_plans
from nnlite.preprocessing.runner import folders_to_fill
from tests.command_line import assert_one_line_error, run_command

DATA = Path(__file__).parent / "data" / "hippocampus"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """WORK planned (2d, 3d_fullres) from nnU-Net's Hippocampus fingerprint: no images needed."""
    plan_from_fingerprint(DATA / "dataset_fingerprint.json", tmp_path / "work")
    return tmp_path / "work"


def stored(work: Path) -> dict:
    return json.loads((work / "plans.json").read_text())["configurations"]


def test_add_config_stores_only_the_changes_and_shares_the_data(work: Path) -> None:
    plans = add_configuration(work, "3d_gated", "3d_fullres", ["network.attention_gates=true", "batch_size=4"])
    assert stored(work)["3d_gated"] == {"inherits_from": "3d_fullres", "batch_size": 4,
                                        "network": {"attention_gates": True},
                                        "predicted_memory_bytes": plans.configurations["3d_gated"].predicted_memory_bytes,
                                        "reasons": ["inherits 3d_fullres; changed by --set: "
                                                    "network.attention_gates=true, batch_size=4"]}
    child, parent = load_plans(work / "plans.json").configurations["3d_gated"], plans.configurations["3d_fullres"]
    assert child.network == replace(parent.network, attention_gates=True)
    assert (child.batch_size, child.patch_size, child.data_identifier) == (4, parent.patch_size, "3d_fullres")
    assert child.predicted_memory_bytes > parent.predicted_memory_bytes * 4 / parent.batch_size
    # one preprocessed folder for both
    assert list(folders_to_fill(work, plans, ["3d_fullres", "3d_gated"]).values()) == \
        [work / "preprocessed" / "3d_fullres"]


def test_a_change_of_data_fields_gets_its_own_folder(work: Path) -> None:
    plans = add_configuration(work, "3d_coarse", "3d_fullres", ["spacing=[2.0, 2.0, 2.0]",
                                                                "patch_size=[24, 32, 24]"])
    assert plans.configurations["3d_coarse"].data_identifier == "3d_coarse"
    assert len(set(folders_to_fill(work, plans, None).values())) == 3  # 2d, 3d_fullres, 3d_coarse


def test_parent_edits_in_plans_json_reach_the_child(work: Path) -> None:
    add_configuration(work, "3d_gated", "3d_fullres", ["network.attention_gates=true"])
    data = json.loads((work / "plans.json").read_text())
    data["configurations"]["3d_fullres"]["batch_size"] = 7
    (work / "plans.json").write_text(json.dumps(data))
    plans = load_plans(work / "plans.json")
    assert plans.configurations["3d_gated"].batch_size == 7
    # saving resolved plans keeps the child's changes only
    save_plans(plans, work / "plans.json")
    assert set(stored(work)["3d_gated"]) == {"inherits_from", "network", "predicted_memory_bytes", "reasons"}


def test_chains_resolve_and_cycles_are_refused(work: Path) -> None:
    add_configuration(work, "a", "3d_fullres", ["network.attention_gates=true"])
    add_configuration(work, "b", "a", ["batch_size=3"])
    b = load_plans(work / "plans.json").configurations["b"]
    assert b.network.attention_gates and b.batch_size == 3
    data = json.loads((work / "plans.json").read_text())
    data["configurations"]["a"]["inherits_from"] = "b"
    (work / "plans.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="inherits from itself"):
        load_plans(work / "plans.json")


def test_replanning_keeps_added_configurations(work: Path) -> None:
    add_configuration(work, "3d_gated", "3d_fullres", ["network.attention_gates=true"])
    plan_from_fingerprint(DATA / "dataset_fingerprint.json", work)
    assert load_plans(work / "plans.json").configurations["3d_gated"].network.attention_gates


@pytest.mark.parametrize("overrides, fragments", [
    (["network.attention_gate=true"], ["unknown key 'attention_gate'"]),
    (["network.attention_gates=maybe"], ["attention_gates", "true or false"]),
    (["batch_size=0"], ["batch_size must be ≥ 1"]),
    (["patch_size=[41, 56, 40]"], ["not divisible"]),
    (["network.encoder=residual"], ["blocks_per_stage"]),
    (["batch_size"], ["expected KEY=VALUE"]),
])
def test_invalid_overrides_are_one_line_errors(work: Path, overrides: list[str], fragments: list[str]) -> None:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = run_command("plan", work, "--add-config", "x", "--from", "3d_fullres", *sets)
    assert_one_line_error(result, *fragments)
    assert "x" not in stored(work)


def test_add_config_command(work: Path) -> None:
    result = run_command("plan", work, "--add-config", "3d_resenc", "--from", "3d_fullres",
                         "--set", "network.encoder=residual", "--set", "network.blocks_per_stage=[1,3,4,6]",
                         "--set", "network.conv_per_stage_decoder=1")
    assert result.returncode == 0, result.stderr
    assert "added 3d_resenc (inherits 3d_fullres; preprocessed data: 3d_fullres)" in result.stdout
    assert_one_line_error(run_command("plan", work, "--add-config", "3d_resenc", "--from", "3d_fullres"),
                          "already planned")
    assert_one_line_error(run_command("plan", work, "--add-config", "y", "--from", "3d_lowres"), "not planned")
    assert_one_line_error(run_command("plan", work, "--add-config", "y"), "go together")
    assert_one_line_error(run_command("plan", work, "--add-config", "y", "--from", "3d_fullres", "--preset",
                                      "resenc-m"), "--preset")


def test_hand_written_inheritance_is_checked(work: Path, tmp_path: Path) -> None:
    data = json.loads((work / "plans.json").read_text())
    data["configurations"]["mine"] = {"inherits_from": "3d_fullres", "spacing": [2, 2, 2],
                                      "data_identifier": "3d_fullres"}
    (work / "plans.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="share data_identifier"):
        load_plans(work / "plans.json")
    data["configurations"]["mine"] = {"inherits_from": "ghost"}
    shutil.copy(work / "plans.json", tmp_path / "backup.json")
    (work / "plans.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="'ghost', which is not planned"):
        load_plans(work / "plans.json")


@pytest.mark.slow
def test_an_inheriting_gated_configuration_trains_predicts_and_enters_best(tmp_path: Path) -> None:
    """On the demo (2 cases, 2 one-iteration folds): 3d_fullres and `3d_gated` (inherits it, attention
    gates on) both train every fold on the same preprocessed folder, `best` ranks both and their
    ensemble, and `predict --config 3d_gated` reproduces its fold validation."""
    from nnlite.best import main as best_main
    from nnlite.data.image_io import read_image
    from nnlite.inference.models import load_best
    from nnlite.predict import main as predict_main
    from nnlite.train import main as train_main
    from tests.work_fixtures import small_work

    work = small_work(tmp_path, n_cases=2)
    plans = load_plans(work / "plans.json")
    narrow = replace(plans.configurations["3d_fullres"].network, features_per_stage=tuple(
        max(2, f // 8) for f in plans.configurations["3d_fullres"].network.features_per_stage))
    parent = replace(plans.configurations["3d_fullres"], network=narrow)
    save_plans(replace(plans, configurations={"3d_fullres": parent}), work / "plans.json")
    result = run_command("plan", work, "--add-config", "3d_gated", "--from", "3d_fullres",
                         "--set", "network.attention_gates=true")
    assert result.returncode == 0, result.stderr
    gated = load_plans(work / "plans.json").configurations["3d_gated"]
    assert gated.network == replace(narrow, attention_gates=True)
    schedule = ["--train-config", "debug", "--device", "cpu", "--seed", "0", "--epochs", "1", "--iters-per-epoch",
                "1", "--val-iters", "1", "--batch-size", "2", "--workers", "0", "--fold", "cv"]
    for config in ("3d_fullres", "3d_gated"):
        assert train_main([str(work), "--config", config, *schedule]) == 0
    assert not (work / "preprocessed" / "3d_gated").exists()  # shared the parent's folder
    assert best_main([str(work)]) == 0
    names = {c["name"] for c in load_best(work)["candidates"]}
    assert {"3d_fullres", "3d_gated"} < names and len(names) == 3  # + their ensemble
    split = json.loads((work / "splits.json").read_text())[0]
    images = tmp_path / "images"
    images.mkdir()
    case = split["val"][0]
    for path in (tmp_path / "raw" / "imagesTr").glob(f"{case}_*.nii.gz"):
        shutil.copy(path, images / path.name)
    out = tmp_path / "out"
    assert predict_main([str(work), str(images), str(out), "--config", "3d_gated", "--folds", "0",
                         "--no-mirroring", "--device", "cpu"]) == 0
    validated = read_image(work / "results" / "3d_gated" / "fold_0" / "validation" / f"{case}.nii.gz").array
    assert (read_image(out / f"{case}.nii.gz").array == validated).all()
