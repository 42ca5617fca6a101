"""predict --memory-gb: the estimate of a case's footprint, cases run one at a time when they do
not fit together, and a case that cannot fit is one line while the others are predicted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inference_fixtures import save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.common.host_memory import GIB, MemoryBudget, memory_budget
from nnlite.inference.case_memory import (CASES_IN_FLIGHT, EXPORT_BYTES, NETWORK_BYTES, RAW_BYTES, MemoryGate,
                                          case_footprint, shapes_of)
from nnlite.inference.case_queue import predict_cases
from nnlite.inference.options import PredictReport
from nnlite.predict import main as predict_main

MIB = 2**20
ARGS = ("--device", "cpu", "--no-mirroring", "--folds", "0")


def test_footprint_counts_raw_network_and_export_bytes():
    shapes = shapes_of((2, 10, 20, 30), [(2, 5, 10, 15)])
    raw, net = 10 * 20 * 30, 5 * 10 * 15
    expected = raw * (2 * RAW_BYTES + EXPORT_BYTES) + net * (2 * 4 + 4 * NETWORK_BYTES)
    assert case_footprint(shapes, classes=3, save_probabilities=False) == expected
    assert case_footprint(shapes, 3, True) == expected + (2 + 3 * 4) * raw  # one streamed channel, not K
    # a second member (an ensemble) adds its own network-space arrays, not another export
    two = shapes_of((2, 10, 20, 30), [(2, 5, 10, 15), (2, 10, 20, 30)])
    assert case_footprint(two, 3, False) == expected + raw * (2 * 4 + 4 * NETWORK_BYTES)


def test_gate_refuses_only_under_an_explicit_budget_and_overlaps_when_three_fit():
    explicit = MemoryGate(MemoryBudget(GIB, explicit=True), used=GIB // 2, classes=3, save_probabilities=False)
    with pytest.raises(UserError) as caught:
        explicit.check("big", GIB)
    assert caught.value.where == "big" and "--memory-gb 1" in caught.value.problem
    explicit.check("fits", GIB // 2)
    assert explicit.may_overlap(GIB // 2 // CASES_IN_FLIGHT)
    assert not explicit.may_overlap(GIB // 2 // CASES_IN_FLIGHT + 1)
    default = MemoryGate(MemoryBudget(GIB, explicit=False), used=GIB // 2, classes=3, save_probabilities=False)
    default.check("big", 4 * GIB)  # the available memory only decides whether cases overlap
    assert memory_budget(None).total > 0 and not memory_budget(None).explicit


class _Given:
    def __init__(self, voxels: int):
        self.data = {"3d": (np.zeros((1, voxels, 1, 1), np.float32), None)}
        self.raw = None


def _run(voxels: dict[str, int], usable: int) -> list[str]:
    """predict_cases with fake reading/predicting/writing; returns the events in order."""
    events, lock = [], threading.Lock()

    def note(event: str) -> None:
        with lock:
            events.append(event)

    def read(case):
        note(f"read {case}")
        return _Given(voxels[case])

    def predictor(case, given):
        note(f"predict {case}")
        return type("P", (), {"class_probs": None})()

    def write(case, prediction):
        time.sleep(0.05)  # a slow export: a read that does not wait for it comes first
        note(f"wrote {case}")

    gate = MemoryGate(MemoryBudget(usable, explicit=True), used=0, classes=1, save_probabilities=False)
    report = PredictReport()
    predict_cases(predictor, list(voxels), read, write, report, gate)
    assert not report.failed
    return events


def test_cases_that_do_not_fit_together_run_one_at_a_time():
    small = {"a": 10, "b": 10, "c": 10}
    one = case_footprint(shapes_of((1, 10, 1, 1), [(1, 10, 1, 1)]), 1, False)
    sequential = _run(small, usable=one * 2)  # two fit, three (one read, one predicted, one exported) do not
    assert sequential == ["read a", "predict a", "wrote a", "read b", "predict b", "wrote b",
                          "read c", "predict c", "wrote c"]
    overlapped = _run(small, usable=one * CASES_IN_FLIGHT)
    assert overlapped.index("read b") < overlapped.index("wrote a")  # read ahead while a is exported


def _inputs(folder: Path, shapes: dict[str, tuple[int, int, int]]) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for case, shape in shapes.items():
        volume = rng.normal(0, 1, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([1.0, 1.0, 2.0, 1.0])),
                 folder / f"{case}_0000.nii.gz")


def test_a_case_that_cannot_fit_is_one_line_and_the_others_are_predicted(tmp_path, capsys, monkeypatch):
    save_random_model(tmp_path / "work", tiny_plans(labels=2), folds=(0,))
    _inputs(tmp_path / "in", {"big": (40, 120, 120), "small": (8, 20, 18)})
    import nnlite.inference.predictor as predictor

    monkeypatch.setattr(predictor, "resident_bytes", lambda: 0)  # the budget is what the cases may use
    raw_part = 40 * 120 * 120 * (RAW_BYTES + EXPORT_BYTES)  # what the big case needs whatever its network space
    budget_gb = raw_part * 0.9 / GIB  # the small case (2880 voxels) fits many times over, the big one not at all
    code = predict_main([str(tmp_path / "work"), str(tmp_path / "in"), str(tmp_path / "out"), *ARGS,
                         "--memory-gb", f"{budget_gb:.6f}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: big: needs about "), err
    assert (tmp_path / "out" / "small.nii.gz").is_file()
    assert not list((tmp_path / "out").glob("big*"))
