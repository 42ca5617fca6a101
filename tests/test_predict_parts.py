"""predict split across processes and machines: `--part I --num-parts N` takes the sorted cases
I, I + N, … (nnU-Net's -part_id/-num_parts), the parts share one OUTPUT_DIR, and a torchrun
launch splits the cases by RANK / WORLD_SIZE."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from command_line import assert_one_line_error, run_command
from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.common.cli import run
from nnlite.common.errors import UserError
from nnlite.inference.case_classification import read_classification
from nnlite.inference.options import PredictOptions, PredictReport, resolve_part, select_part
from nnlite.predict import main as predict_main

CLASSES = ("benign", "malignant")
CASES = ("c03", "a10", "b2", "a9", "c1")  # sorted: a10 a9 b2 c03 c1 (by name, not by number)
ARGS = ("--device", "cpu", "--no-mirroring", "--folds", "0")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@given(cases=st.sets(st.text("abc_019", min_size=1, max_size=6), max_size=40),
       num_parts=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_the_parts_cover_every_case_exactly_once(cases, num_parts, seed):
    """Dealt like cards: the k-th name in sorted order goes to part k mod N, whatever order the
    folder listed them in; nnU-Net takes np.unique (sorted) names [part::num_parts]."""
    listed = list(cases)
    np.random.default_rng(seed).shuffle(listed)
    parts = [select_part(listed, part, num_parts) for part in range(num_parts)]
    assert Counter(case for part in parts for case in part) == Counter(cases)  # each case once
    dealt: list[list[str]] = [[] for _ in range(num_parts)]
    for k, case in enumerate(sorted(cases)):
        dealt[k % num_parts].append(case)
    assert parts == dealt
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [list(np.unique(np.array(sorted(cases), dtype=str))[p::num_parts]) for p in range(num_parts)]


def test_select_part_refuses_a_part_outside_the_parts():
    with pytest.raises(UserError, match="--part"):
        select_part(["a", "b"], 2, 2)
    with pytest.raises(UserError, match="--num-parts"):
        PredictOptions(part=0, num_parts=0)


@pytest.mark.parametrize("flags, where, problem", [
    (("--part", "3", "--num-parts", "3"), "--part", "must be one of 0 … 2"),
    (("--part", "-1", "--num-parts", "2"), "--part", "must be one of 0 … 1"),
    (("--part", "0", "--num-parts", "0"), "--num-parts", "must be at least 1"),
    (("--part", "1"), "--part", "needs --num-parts"),
    (("--num-parts", "2"), "--num-parts", "needs --part"),
], ids=["part-equal-to-parts", "negative-part", "zero-parts", "part-alone", "num-parts-alone"])
def test_bad_parts_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, flags, where, problem):
    """Neither WORK nor INPUT_DIR exists: the parts are refused first, and nothing is written."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    code = run(predict_main, [str(tmp_path / "no_work"), str(tmp_path / "no_input"), str(out), *flags])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {where}: ") and problem in err[0], err
    assert not out.exists()


def test_bad_parts_through_the_console_script(tmp_path):
    result = run_command("predict", tmp_path / "no_work", tmp_path / "no_input", tmp_path / "out",
                         "--part", "2", "--num-parts", "2")
    assert_one_line_error(result, "error: --part: ", "got 2")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def capture_predict(monkeypatch):
    """predict's main up to the library call: the PredictOptions it would predict with."""
    import nnlite.inference.predictor as predictor

    seen: list[PredictOptions] = []

    def fake_predict(work, input_dir, output_dir, options):
        seen.append(options)
        return PredictReport()

    monkeypatch.setattr(predictor, "predict_folder", fake_predict)
    return seen


def torchrun_env(monkeypatch, rank: int, world_size: int, local_rank: int) -> None:
    for name, value in zip(TORCHRUN_VARIABLES, (rank, world_size, local_rank)):
        monkeypatch.setenv(name, str(value))


def test_a_torchrun_launch_predicts_its_ranks_part_on_its_own_gpu(tmp_path, monkeypatch, capture_predict):
    torchrun_env(monkeypatch, rank=5, world_size=8, local_rank=1)  # second node, second GPU
    devices: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    assert predict_main([str(tmp_path), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    assert (capture_predict[-1].part, capture_predict[-1].num_parts) == (5, 8)
    assert devices == [1]
    # --device cpu: no GPU chosen; --part given: the flags win over the launch
    assert predict_main([str(tmp_path), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu",
                         "--part", "0", "--num-parts", "2"]) == 0
    assert (capture_predict[-1].part, capture_predict[-1].num_parts) == (0, 2) and devices == [1]


def test_a_torchrun_launch_without_cuda_stays_on_the_cpu(tmp_path, monkeypatch, capture_predict):
    torchrun_env(monkeypatch, rank=1, world_size=3, local_rank=1)
    devices: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    assert predict_main([str(tmp_path), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    assert (capture_predict[-1].part, capture_predict[-1].num_parts, devices) == (1, 3, [])


def test_resolve_part_reads_the_torchrun_variables():
    assert resolve_part(None, None, {}) == (0, 1, None)
    assert resolve_part(None, None, {"WORLD_SIZE": "1", "RANK": "0"}) == (0, 1, None)
    assert resolve_part(None, None, {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}) == (3, 4, 3)
    assert resolve_part(2, 3, {"WORLD_SIZE": "4", "RANK": "1"}) == (2, 3, None)
    with pytest.raises(UserError, match="RANK"):
        resolve_part(None, None, {"WORLD_SIZE": "4"})


def write_cases(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir()
    for i, case in enumerate(CASES):
        volume = rng.normal(0, 1, (9 + i % 2, 20, 18)).astype(np.float32)
        volume[2:6, 4:12, 3:10] += 3
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([1.0, 1.0, 2.0, 1.0])),
                 folder / f"{case}_0000.nii.gz")


@pytest.fixture
def classed_work(tmp_path) -> Path:
    """A random-weight tiny model with a case-classification head (so a run writes classification.csv)."""
    plans = tiny_plans(labels=2)
    config = plans.configurations[CONFIG]
    plans = replace(plans, case_classes=CLASSES,
                    configurations={CONFIG: replace(config, network=replace(config.network, class_head=2))})
    save_random_model(tmp_path / "work", plans, folds=(0,))
    return tmp_path / "work"


def label_maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_two_parts_into_one_folder_equal_one_run(tmp_path, classed_work, rng, monkeypatch, capsys):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    write_cases(tmp_path / "in", rng)
    whole, shared = tmp_path / "whole", tmp_path / "shared"
    assert predict_main([str(classed_work), str(tmp_path / "in"), str(whole), *ARGS]) == 0
    # another process's case being written into the shared folder: no part may delete it
    in_flight = shared / ".zz.nii.gz.tmp" / "zz.nii.gz.tmp"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"being written")
    capsys.readouterr()
    for part in (1, 0):
        assert predict_main([str(classed_work), str(tmp_path / "in"), str(shared), *ARGS,
                             "--part", str(part), "--num-parts", "2"]) == 0
    assert "part 0 of 2: predicted 3, skipped 0" in capsys.readouterr().out
    assert in_flight.is_file()
    assert label_maps(shared).keys() == label_maps(whole).keys() == {f"{c}.nii.gz" for c in CASES}
    for name, labels in label_maps(whole).items():
        np.testing.assert_array_equal(label_maps(shared)[name], labels, err_msg=name)

    # each part wrote its own rows; classification.csv appears with the whole-folder run after them
    assert not (shared / "classification.csv").exists()
    rows = [read_classification(shared / f"classification.part-{p}-of-2.csv", CLASSES) for p in (0, 1)]
    assert sorted(rows[0]) == ["a10", "b2", "c1"] and sorted(rows[1]) == ["a9", "c03"]
    assert predict_main([str(classed_work), str(tmp_path / "in"), str(shared), *ARGS]) == 0
    assert "predicted 0, skipped 5" in capsys.readouterr().out
    merged = read_classification(shared / "classification.csv", CLASSES)
    expected = read_classification(whole / "classification.csv", CLASSES)
    assert merged.keys() == expected.keys()
    assert all(np.allclose(merged[c], expected[c], atol=1e-6) for c in CASES)
    assert not list(shared.glob("classification.part-*")) and not in_flight.exists()


def test_a_part_rerun_keeps_its_rows_and_owns_the_same_cases(tmp_path, classed_work, rng, monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    write_cases(tmp_path / "in", rng)
    out = tmp_path / "out"
    flags = [*ARGS, "--part", "1", "--num-parts", "2"]
    assert predict_main([str(classed_work), str(tmp_path / "in"), str(out), *flags]) == 0
    (out / "a9.nii.gz").unlink()  # a case of part 1 lost: the rerun redoes only it
    assert predict_main([str(classed_work), str(tmp_path / "in"), str(out), *flags]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a9.nii.gz", "c03.nii.gz"]
    assert sorted(read_classification(out / "classification.part-1-of-2.csv", CLASSES)) == ["a9", "c03"]
