"""Keep-largest-component: connectivity, and the reference's acceptance rule on hand-made folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference_fixtures import tiny_plans
from nnlite.data.image_io import read_image, write_seg
from nnlite.evaluation.metrics import label_classes, matched_cases
from nnlite.evaluation.postprocessing import decide_postprocessing, describe_decisions
from nnlite.inference.largest_component import (apply_postprocessing, keep_largest_component,
                                                load_postprocessing)
from nnlite.plans import save_plans
from nnlite.postprocess import main as postprocess_main

AFFINE = np.eye(4)
SHAPE = (12, 12, 12)


def test_small_component_removed_diagonal_neighbour_kept():
    seg = np.zeros(SHAPE, np.uint8)
    seg[1:4, 1:4, 1:4] = 1
    seg[4, 4, 4] = 2  # touches the blob only at a corner: 26-connected, kept
    seg[9, 9, 9] = 1  # isolated: removed
    out = keep_largest_component(seg, [1, 2])
    assert out[4, 4, 4] == 2 and out[9, 9, 9] == 0
    assert (out[1:4, 1:4, 1:4] == 1).all()
    assert keep_largest_component(seg, [2])[4, 4, 4] == 2  # sole component of label 2
    np.testing.assert_array_equal(apply_postprocessing(seg, []), seg)


def _blob(seg: np.ndarray, value: int, region: tuple[slice, ...]) -> None:
    seg[region] = value


A = (slice(1, 4),) * 3  # 27 voxels of label 1
F = (slice(6, 8), slice(6, 8), slice(6, 11))  # 20 spurious voxels, far from A


def _write_pair(root: Path, case: str, pred: np.ndarray, ref: np.ndarray) -> None:
    write_seg(root / "pred" / f"{case}.nii.gz", pred, AFFINE)
    write_seg(root / "ref" / f"{case}.nii.gz", ref, AFFINE)


def test_spurious_component_removed_and_dice_rises(tmp_path):
    for i in range(3):
        ref = np.zeros(SHAPE, np.uint8)
        _blob(ref, 1, A)
        pred = ref.copy()
        _blob(pred, 1, F)
        _write_pair(tmp_path, f"c{i}", pred, ref)
    decision = decide_postprocessing(matched_cases(tmp_path / "pred", tmp_path / "ref"), label_classes([1]))
    assert decision["steps"] == [[1]]
    assert decision["foreground_dice_before"] == pytest.approx(54 / 74)
    assert decision["foreground_dice_after"] == pytest.approx(1.0)


def test_a_component_in_unannotated_voxels_costs_nothing(tmp_path):
    """The spurious component lies where the reference says "ignore" (2): removing it gains no Dice."""
    for i in range(3):
        ref = np.zeros(SHAPE, np.uint8)
        _blob(ref, 1, A)
        _blob(ref, 2, F)
        pred = np.where(ref > 0, 1, 0).astype(np.uint8)
        _write_pair(tmp_path, f"c{i}", pred, ref)
    pairs = matched_cases(tmp_path / "pred", tmp_path / "ref")
    decision = decide_postprocessing(pairs, label_classes([1]), ignore_label=2)
    assert decision["steps"] == [] and decision["foreground_dice_before"] == pytest.approx(1.0)
    assert decide_postprocessing(pairs, label_classes([1]))["steps"] == [[1]]  # scored as false positives: removed


def _rejecting_folders(root: Path) -> None:
    """6 cases gain on label 1 when the spurious blob goes; 1 case loses its detached label 2.

    Foreground mean rises (label 1: +6·(1 − 54/74)/7, label 2: −1/7, halved), but label 2 gets
    worse, so step 1 is rejected; the per-label step for label 1 alone is accepted.
    """
    for i in range(6):
        ref = np.zeros(SHAPE, np.uint8)
        _blob(ref, 1, A)
        ref[4, 1, 1] = 2  # attached to A: survives the merged step
        pred = ref.copy()
        _blob(pred, 1, F)
        _write_pair(root, f"gain{i}", pred, ref)
    ref = np.zeros(SHAPE, np.uint8)
    _blob(ref, 1, A)
    ref[10, 10, 10] = 2  # detached label 2: the merged step removes it
    _write_pair(root, "loss", ref.copy(), ref)


def test_step_rejected_when_a_label_gets_worse(tmp_path):
    _rejecting_folders(tmp_path)
    decision = decide_postprocessing(matched_cases(tmp_path / "pred", tmp_path / "ref"), label_classes([1, 2]))
    merged, label1, label2 = decision["decisions"]
    assert merged["dice_after"] > merged["dice_before"] and not merged["accepted"]
    assert label1["accepted"] and not label2["accepted"]
    assert decision["steps"] == [[1]]
    assert decision["foreground_dice_after"] > decision["foreground_dice_before"]


def _work_with_one_validated_fold(tmp_path):
    """WORK whose fold 0 validated the rejecting folders' predictions, with RAW/labelsTr beside."""
    _rejecting_folders(tmp_path)
    work = tmp_path / "work"
    validation = work / "results" / "3d_fullres" / "fold_0" / "validation"
    validation.mkdir(parents=True)
    for path in (tmp_path / "pred").iterdir():
        path.rename(validation / path.name)
    save_plans(tiny_plans(labels=2, raw_path=str(tmp_path)), work / "plans.json")
    (tmp_path / "ref").rename(tmp_path / "labelsTr")
    return work


def test_postprocess_command_writes_json_used_by_apply(tmp_path):
    work = _work_with_one_validated_fold(tmp_path)
    assert postprocess_main([str(work)]) == 0
    steps = load_postprocessing(work / "results" / "3d_fullres" / "postprocessing.json")
    assert steps == [[1]]
    written = work / "results" / "3d_fullres" / "postprocessed" / "gain0.nii.gz"
    assert read_image(written).array[6, 6, 6] == 0  # the spurious label-1 blob is gone
    assert read_image(written).array[4, 1, 1] == 2


def test_postprocess_command_reports_each_step_once_by_name(tmp_path, capsys, caplog):
    work = _work_with_one_validated_fold(tmp_path)
    caplog.set_level("INFO", logger="nnlite")
    assert postprocess_main([str(work)]) == 0
    steps = [r.getMessage() for r in caplog.records if "largest component" in r.getMessage()]
    steps += [line for line in capsys.readouterr().out.splitlines() if "largest component" in line]
    assert [line.split(":")[0] for line in steps] == [
        "keep the largest component of all foreground merged (labels 1, 2)",
        "keep the largest component of label l1 (1)", "keep the largest component of label l2 (2)"]
    assert steps[0].endswith("rejected") and steps[1].endswith("accepted") and steps[2].endswith("rejected")


def test_region_steps_are_named_by_region():
    decision = {"decisions": [
        {"labels": [1, 2, 3], "dice_before": 0.5, "dice_after": 0.6, "accepted": True},
        {"labels": [2, 3], "dice_before": 0.6, "dice_after": 0.7, "accepted": True, "region": "tumor core"},
        {"labels": [3], "dice_before": 0.4, "dice_after": 0.3, "accepted": False, "region": "enhancing"}]}
    labels = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
    assert describe_decisions(decision, labels) == [
        "keep the largest component of all foreground merged (labels 1, 2, 3): Dice 0.5000 -> 0.6000, accepted",
        "keep the largest component of region 'tumor core' (labels 2, 3): Dice 0.6000 -> 0.7000, accepted",
        "keep the largest component of region 'enhancing' (labels 3): Dice 0.4000 -> 0.3000, rejected"]
