"""WORK knows what it was made from: no stale splits, preprocessed arrays or plans are reused.

Small demo datasets (3–4 cases) planned with few fingerprint samples, so every test runs in seconds.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.planning.work_folder import fingerprint_hash
from nnlite.plans import FINGERPRINT_HASH_KEY, load_fingerprint, load_plans, save_plans
from nnlite.preprocessing.records import record_path
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.train import main as train_main
from nnlite.training.config import TrainConfig
from nnlite.training.folds import fold_cases
from tests.command_line import assert_one_line_error, run_command
from tests.work_fixtures import CASES, CONFIG, plan_small, small_work


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, Path]:
    """a: 3 cases; same_names: 3 other cases with a's names; four: a's 3 cases and one more."""
    root = tmp_path_factory.mktemp("raws")
    return {"a": generate_demo_dataset(root / "a", n_cases=3, seed=0),
            "same_names": generate_demo_dataset(root / "same_names", n_cases=3, seed=1),
            "four": generate_demo_dataset(root / "four", n_cases=4, seed=0),
            "one": generate_demo_dataset(root / "one", n_cases=1, seed=0)}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    """The demo's first 3 cases (as raws["a"]), planned and preprocessed (copy before changing)."""
    return small_work(tmp_path_factory.mktemp("preprocessed"))


plan = plan_small


def copy(work: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(work, tmp_path / "work"))


def edit_plan(work: Path, **changes) -> None:
    plans = load_plans(work / "plans.json")
    config = replace(plans.configurations[CONFIG], **changes)
    save_plans(replace(plans, configurations={**plans.configurations, CONFIG: config}), work / "plans.json")


def fold(name: str) -> TrainConfig:
    return TrainConfig(configuration=CONFIG, fold=name)


# ---------------------------------------------------------------------------------------------
# plans remember their dataset; another dataset is never mixed into a used WORK


def test_plans_record_the_fingerprint_they_were_made_from(raws, tmp_path):
    plans = plan(raws["a"], tmp_path / "work")
    recorded = plans.extra[FINGERPRINT_HASH_KEY]
    assert recorded == fingerprint_hash(load_fingerprint(tmp_path / "work" / "fingerprint.json"))
    assert load_plans(tmp_path / "work" / "plans.json").extra[FINGERPRINT_HASH_KEY] == recorded


def test_planning_another_dataset_into_a_used_work_is_refused_before_reading_it(raws, preprocessed, tmp_path):
    work = copy(preprocessed, tmp_path)
    before = {p.name: p.read_bytes() for p in work.glob("*.json")}
    result = run_command("plan", raws["four"], work, "--configs", CONFIG)
    assert_one_line_error(result, str(work), "another dataset", "demo_004")
    assert "--overwrite" in result.stderr  # the hint names the fix
    assert {p.name: p.read_bytes() for p in work.glob("*.json")} == before


def test_the_same_case_names_with_other_data_are_another_dataset(raws, preprocessed, tmp_path):
    work = copy(preprocessed, tmp_path)
    before = {p.name: p.read_bytes() for p in work.glob("*.json")}
    with pytest.raises(UserError, match="another"):
        plan(raws["same_names"], work)
    assert {p.name: p.read_bytes() for p in work.glob("*.json")} == before


def test_overwrite_starts_the_work_folder_clean(raws, preprocessed, tmp_path):
    work = copy(preprocessed, tmp_path)
    (work / "results" / CONFIG / "fold_0").mkdir(parents=True)
    plan(raws["four"], work, overwrite=True)
    assert not (work / "preprocessed").exists() and not (work / "results").exists()
    splits = json.loads((work / "splits.json").read_text())
    assert sorted(c for s in splits for c in s["val"]) == [f"demo_{i:03d}" for i in range(1, 5)]


def test_replanning_the_same_dataset_keeps_the_splits(raws, tmp_path):
    work = tmp_path / "work"
    plan(raws["four"], work)
    mine = [{"train": ["demo_001", "demo_002"], "val": ["demo_003", "demo_004"]},
            {"train": ["demo_003", "demo_004"], "val": ["demo_001", "demo_002"]}]
    (work / "splits.json").write_text(json.dumps(mine))
    plan(raws["four"], work, folds=2)  # --folds agrees with the kept file
    assert json.loads((work / "splits.json").read_text()) == mine


# ---------------------------------------------------------------------------------------------
# a preprocessed folder records its plan and case list; preprocess redoes, train refuses


def test_the_record_lies_beside_the_data_folder_not_among_the_case_files(preprocessed):
    folder = preprocessed / "preprocessed" / CONFIG
    record = json.loads(record_path(folder).read_text())
    assert record_path(folder).parent == folder.parent
    assert record["cases"] == CASES
    assert record["fields"]["spacing"] == list(load_plans(preprocessed / "plans.json").configurations[CONFIG].spacing)
    names = {p.name for p in folder.iterdir()}
    assert names == {f"{case}{end}" for case in CASES for end in (".npy", "_seg.npy", ".json")}


def test_preprocess_redoes_a_configuration_whose_plan_changed(preprocessed, tmp_path, caplog):
    work = copy(preprocessed, tmp_path)
    old_shape = np.load(work / "preprocessed" / CONFIG / "demo_001.npy").shape
    spacing = load_plans(work / "plans.json").configurations[CONFIG].spacing
    edit_plan(work, spacing=tuple(2 * s for s in spacing))
    with caplog.at_level(logging.INFO):
        assert run_preprocessing(work, workers=1) == 3
    assert "redoing" in caplog.text and "spacing" in caplog.text
    new_shape = np.load(work / "preprocessed" / CONFIG / "demo_001.npy").shape
    assert all(n < o for n, o in zip(new_shape[1:], old_shape[1:])), (old_shape, new_shape)
    assert fold_cases(work, load_plans(work / "plans.json"), fold("0"))  # train accepts it again


def test_network_fields_do_not_invalidate_shared_data(preprocessed, tmp_path):
    work = copy(preprocessed, tmp_path)
    edit_plan(work, batch_size=1)
    assert run_preprocessing(work, workers=1) == 0  # nothing redone


@pytest.mark.parametrize("damage", ["spacing", "no record"])
def test_train_refuses_data_that_does_not_match_its_plan(preprocessed, tmp_path, damage):
    work = copy(preprocessed, tmp_path)
    if damage == "spacing":
        spacing = load_plans(work / "plans.json").configurations[CONFIG].spacing
        edit_plan(work, spacing=tuple(s + 0.5 for s in spacing))
    else:  # a folder written before records existed
        record_path(work / "preprocessed" / CONFIG).unlink()
    with pytest.raises(UserError, match=f"preprocessed data of {CONFIG} does not match") as error:
        train_main([str(work), "--device", "cpu", "--train-config", "debug"])
    assert f"nnlite.preprocess {work} --configs {CONFIG}" in error.value.hint
    assert not (work / "results").exists()


# ---------------------------------------------------------------------------------------------
# splits.json names exactly the dataset's cases


@pytest.mark.parametrize("splits, named", [
    ([{"train": ["demo_001", "demo_002"], "val": ["demo_003", "ghost"]}], "'ghost'"),
    ([{"train": ["demo_001"], "val": ["demo_002"]}], "'demo_003'"),
])
def test_splits_that_name_unknown_or_miss_cases_are_an_error(raws, preprocessed, tmp_path, splits, named):
    work = copy(preprocessed, tmp_path)
    (work / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(UserError, match=named):
        fold_cases(work, load_plans(work / "plans.json"), fold("0"))
    with pytest.raises(UserError, match=named):
        plan(raws["a"], work)


# ---------------------------------------------------------------------------------------------
# any number of cases and folds


def test_fewer_cases_than_folds_make_one_fold_per_case(raws, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        plan(raws["four"], tmp_path / "work")
    splits = json.loads((tmp_path / "work" / "splits.json").read_text())
    assert [len(s["val"]) for s in splits] == [1, 1, 1, 1]
    assert "4 folds instead of 5" in caplog.text


def test_folds_flag_sets_the_number_of_folds(raws, tmp_path):
    plan(raws["four"], tmp_path / "work", folds=2)
    assert len(json.loads((tmp_path / "work" / "splits.json").read_text())) == 2


def test_more_folds_than_cases_is_refused_before_anything_is_written(raws, tmp_path):
    result = run_command("plan", raws["four"], tmp_path / "work", "--folds", "5")
    assert_one_line_error(result, "--folds", "5 folds need at least 5 cases")
    assert not (tmp_path / "work").exists()


def test_a_single_case_plans_and_trains_on_all_only(raws, tmp_path):
    work = tmp_path / "work"
    plan(raws["one"], work)
    assert not (work / "splits.json").exists()
    run_preprocessing(work, workers=1)
    plans = load_plans(work / "plans.json")
    assert fold_cases(work, plans, fold("all")) == (["demo_001"], ["demo_001"])
    with pytest.raises(UserError, match="single case") as error:
        fold_cases(work, plans, fold("0"))
    assert "--fold all" in error.value.hint


def test_any_fold_that_splits_json_holds_can_be_trained(preprocessed, tmp_path):
    work = copy(preprocessed, tmp_path)
    seven = [{"train": [c for c in CASES if c != CASES[k % 3]], "val": [CASES[k % 3]]} for k in range(7)]
    (work / "splits.json").write_text(json.dumps(seven))
    assert fold_cases(work, load_plans(work / "plans.json"), fold("6")) == (["demo_002", "demo_003"],
                                                                             ["demo_001"])
    with pytest.raises(UserError, match="0–6 or all"):
        fold_cases(work, load_plans(work / "plans.json"), fold("7"))


def test_train_takes_any_fold_number_on_the_command_line(preprocessed, tmp_path, monkeypatch):
    from nnlite.training import trainer

    work = copy(preprocessed, tmp_path)
    seven = [{"train": [c for c in CASES if c != CASES[k % 3]], "val": [CASES[k % 3]]} for k in range(7)]
    (work / "splits.json").write_text(json.dumps(seven))
    asked = []
    monkeypatch.setattr(trainer, "train_folds", lambda work, config, folds, **kw: asked.append(list(folds)))
    assert train_main([str(work), "--fold", "6", "--device", "cpu"]) == 0
    assert train_main([str(work), "--fold", "cv", "--device", "cpu"]) == 0
    assert asked == [["6"], [str(k) for k in range(7)]]
