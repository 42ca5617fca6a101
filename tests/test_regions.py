"""Region-based training: dataset.json parsing, region targets, the Dice + BCE loss against a direct
computation, painting in regions_class_order, per-region pseudo-Dice and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.common.errors import UserError
from nnlite.data.dataset import integer_labels, labels_and_regions
from nnlite.data.image_io import write_seg
from nnlite.data.regions import paint_regions, parse_region_labels, region_masks
from nnlite.evaluate import main as evaluate_main
from nnlite.evaluation.metrics import confusion_counts, evaluate_folder
from nnlite.evaluation.scoring_inputs import labels_to_score
from nnlite.inference.outputs import seg_from_probabilities
from nnlite.network.region_loss import RegionDiceBCELoss, region_confusion_counts, region_targets
from nnlite.common.labels import Region, scored_classes

BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
BRATS_ORDER = [1, 2, 3]
BRATS = parse_region_labels("dataset.json", BRATS_LABELS, BRATS_ORDER)[1]
# overlapping but not nested: painting order decides the shared label 2
CROSSING = (Region("a", (1, 2), 1), Region("b", (2, 3), 3))


# ---------------------------------------------------------------------------------------------
# dataset.json


def test_brats_regions_parse_in_dataset_json_order():
    labels, regions = parse_region_labels("dataset.json", {**BRATS_LABELS, "ignore": 4}, BRATS_ORDER)
    assert labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3, "ignore": 4}
    assert regions == (Region("whole tumor", (1, 2, 3), 1), Region("tumor core", (2, 3), 2),
                       Region("enhancing tumor", (3,), 3, scalar=True))  # written as a bare 3


@pytest.mark.parametrize("labels, order, message", [
    (BRATS_LABELS, None, "key 'regions_class_order': missing"),
    (BRATS_LABELS, [1, 2], "one integer per region"),
    (BRATS_LABELS, [1, 2, 2], "names a label twice"),
    (BRATS_LABELS, [1, 3, 2], "'enhancing tumor' would be painted as 2"),
    ({"background": 0, "a": [1, 3]}, [1], "consecutive"),
    ({"background": 0, "a": [1, 2], "ignore": 2}, [1], "'ignore' must be"),
    ({"background": [0], "a": [1, 2]}, [1], "'background' must exist and be 0"),
    ({"background": 0, "a": [1, "2"]}, [1], "region 'a'"),
])
def test_bad_region_declarations_name_the_key(labels, order, message):
    with pytest.raises(UserError, match=message) as error:
        parse_region_labels("dataset.json", labels, order)
    assert error.value.where == "dataset.json"


# nnU-Net's LabelManager: region-based iff some value is a list/tuple of MORE than one label;
# otherwise a one-element list is flattened to its label (plain softmax classes).
@pytest.mark.parametrize("labels, regions", [
    ({"background": 0, "tumour": [1]}, None),
    ({"background": 0, "tumour": [1], "cyst": 2}, None),
    ({"background": 0, "a": [1, 2], "b": [2]}, ((1, 2), (2,))),
    ({"background": 0, "a": [1, 2], "b": 2}, ((1, 2), (2,))),
])
def test_a_dataset_is_region_based_only_with_a_list_of_more_than_one_label(labels, regions):
    meta = {"labels": labels, "regions_class_order": [1, 2]}
    parsed, found = labels_and_regions("dataset.json", meta, integer_labels("plain labels expected"))
    if regions is None:
        assert found == () and parsed == {"background": 0, "tumour": 1, **({"cyst": 2} if "cyst" in labels else {})}
    else:
        assert tuple(region.labels for region in found) == regions


# ---------------------------------------------------------------------------------------------
# targets, loss and pseudo-Dice

label_maps = st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1)).map(
    lambda args: np.random.default_rng(args[3]).integers(0, 5, size=(args[0], 1, args[1], args[2], 3)))


@given(label_maps, st.booleans())
def test_region_targets_are_label_membership(seg, with_ignore):
    target = region_targets(torch.from_numpy(seg), BRATS, 4 if with_ignore else None).numpy()
    assert target.dtype == np.uint8 and target.shape[1] == 3 + with_ignore
    for channel, members in enumerate(([1, 2, 3], [2, 3], [3])):
        np.testing.assert_array_equal(target[:, channel], np.isin(seg[:, 0], members))
    if with_ignore:
        np.testing.assert_array_equal(target[:, 3], seg[:, 0] == 4)


def direct_region_loss(logits: np.ndarray, seg: np.ndarray, batch_dice: bool, ignore: int | None) -> float:
    """The loss written out voxel by voxel in float64: mean BCE + (−mean soft Dice)."""
    members = ([1, 2, 3], [2, 3], [3])
    y = np.stack([np.isin(seg[:, 0], m) for m in members], 1).astype(np.float64)
    valid = np.ones_like(seg, dtype=np.float64) if ignore is None else (seg != ignore).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    bce = (bce * valid).sum() / max(valid.sum() * 3, 1)
    axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    inter = (p * y * valid).sum(axes)
    dice = (2 * inter + 1e-5) / np.maximum((y * valid).sum(axes) + (p * valid).sum(axes) + 1e-5, 1e-8)
    return bce - dice.mean()


@settings(deadline=None)
@given(label_maps, st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_region_loss_matches_a_direct_computation(seg, batch_dice, with_ignore, seed):
    ignore = 4 if with_ignore else None
    if ignore is None:
        seg = np.minimum(seg, 3)
    logits = np.random.default_rng(seed).normal(0, 2, size=(seg.shape[0], 3, *seg.shape[2:]))
    target = region_targets(torch.from_numpy(seg), BRATS, ignore)
    loss = RegionDiceBCELoss(3, batch_dice)(torch.from_numpy(logits).float(), target)
    assert float(loss) == pytest.approx(direct_region_loss(logits, seg, batch_dice, ignore), abs=1e-5)


def test_region_loss_is_minimal_for_a_confident_right_answer(rng):
    seg = torch.from_numpy(rng.integers(0, 4, size=(2, 1, 4, 6, 6)))
    target = region_targets(seg, BRATS)
    right = (target.float() * 2 - 1) * 20  # logit ±20 on the right side of every region
    loss_fn = RegionDiceBCELoss(3, batch_dice=False)
    assert float(loss_fn(right, target)) == pytest.approx(-1.0, abs=1e-4)
    assert float(loss_fn(-right, target)) > 10


def test_region_pseudo_dice_counts_threshold_at_half_and_skip_ignored():
    seg = torch.tensor([0, 1, 2, 3, 4, 3]).view(1, 1, 1, 1, 6)
    target = region_targets(seg, BRATS, ignore_label=4)
    logits = torch.tensor([[1., 1, 1, -1, 1, 1], [-1, -1, 1, 1, 1, -1], [-1, -1, -1, 1, 1, 1]]).view(1, 3, 1, 1, 6)
    tp, fp, fn = region_confusion_counts(logits, target, 3).tolist()
    assert tp == [3, 2, 2] and fp == [1, 0, 0] and fn == [1, 1, 0]


# ---------------------------------------------------------------------------------------------
# painting


@given(st.integers(0, 2**31 - 1), st.sampled_from([BRATS, CROSSING]))
def test_painting_writes_the_last_region_above_half(seed, regions):
    probs = np.random.default_rng(seed).random((len(regions), 3, 4, 5)).astype(np.float32)
    seg = paint_regions(probs, regions)
    for index in np.ndindex(seg.shape):
        above = [r.painted_as for r, p in zip(regions, probs[(slice(None), *index)]) if p > 0.5]
        assert seg[index] == (above[-1] if above else 0)


@given(label_maps)
def test_nested_regions_paint_back_to_the_label_map(seg):
    seg = np.minimum(seg[0, 0], 3)
    masks = region_masks(seg, BRATS).astype(np.float32)
    np.testing.assert_array_equal(paint_regions(masks, BRATS), seg)
    np.testing.assert_array_equal(seg_from_probabilities(masks, BRATS), seg)


def test_overlapping_regions_paint_in_order():
    probs = np.array([[0.9, 0.9, 0.2, 0.5], [0.1, 0.8, 0.7, 0.51]], np.float32)  # (R=2, 4 voxels)
    assert paint_regions(probs, CROSSING).tolist() == [1, 3, 3, 3]
    assert paint_regions(probs[::-1].copy(), CROSSING[::-1]).tolist() == [1, 1, 3, 3]


# ---------------------------------------------------------------------------------------------
# evaluation


@given(st.integers(0, 2**31 - 1))
def test_region_counts_are_union_masks(seed):
    rng = np.random.default_rng(seed)
    pred, ref = rng.integers(0, 4, (2, 5, 6, 7))
    ref[0, 0] = 4  # unannotated row
    counts = confusion_counts(pred, ref, scored_classes({}, BRATS), ignore_label=4)
    for region in BRATS:
        p, r = np.isin(pred, region.labels) & (ref != 4), np.isin(ref, region.labels)
        got = counts[region.name]
        assert (got.tp, got.fp, got.fn) == ((p & r).sum(), (p & ~r).sum(), (~p & r).sum())


def write_pair(tmp_path: Path, pred: np.ndarray, ref: np.ndarray) -> tuple[Path, Path]:
    for folder, seg in (("pred", pred), ("ref", ref)):
        write_seg(tmp_path / folder / "case_a.nii.gz", seg, np.eye(4))
    return tmp_path / "pred", tmp_path / "ref"


def test_evaluate_with_a_region_dataset_json_scores_each_region_by_name(tmp_path, capsys):
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2] = [[1, 1, 2, 2], [3, 3, 0, 0]]
    pred = ref.copy()
    pred[0, 1, :2] = 2  # enhancing (3) predicted as core (2): whole and core right, enhancing missed
    pred_dir, ref_dir = write_pair(tmp_path, pred, ref)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": BRATS_LABELS, "regions_class_order": BRATS_ORDER}))
    assert evaluate_main([str(pred_dir), str(ref_dir), "--dataset-json", str(dataset_json)]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["labels"] == ["whole tumor", "tumor core", "enhancing tumor"]
    assert summary["mean"]["whole tumor"]["dice"] == 1.0
    assert summary["mean"]["tumor core"]["dice"] == 1.0
    assert summary["mean"]["enhancing tumor"]["dice"] == 0.0
    assert summary["foreground_mean"]["dice"] == pytest.approx(2 / 3)
    assert "enhancing tumor" in capsys.readouterr().out


@pytest.mark.parametrize("enhancing, key", [(3, "3"), ([3], "(3,)")])
def test_nnunet_layout_keys_regions_as_nnunet_does(tmp_path, enhancing, key):
    """nnU-Net's keys are str() of each region as its LabelManager holds it: lists become tuples
    ("(2, 3)", a one-label list "(3,)"), a bare integer stays an integer ("3")."""
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2] = [[1, 1, 2, 2], [3, 3, 0, 0]]
    pred = ref.copy()
    pred[0, 1, :2] = 2  # enhancing missed, as above
    pred_dir, ref_dir = write_pair(tmp_path, pred, ref)
    dataset_json = tmp_path / "dataset.json"
    labels = {**BRATS_LABELS, "enhancing tumor": enhancing}
    dataset_json.write_text(json.dumps({"labels": labels, "regions_class_order": BRATS_ORDER}))
    assert evaluate_main([str(pred_dir), str(ref_dir), "--dataset-json", str(dataset_json),
                          "--format", "nnunet"]) == 0
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert list(summary["mean"]) == ["(1, 2, 3)", "(2, 3)", key]
    assert summary["mean"][key]["Dice"] == 0.0 and summary["mean"]["(2, 3)"]["Dice"] == 1.0
    assert summary["metric_per_case"][0]["metrics"]["(1, 2, 3)"]["TP"] == 6


def test_region_evaluation_refuses_a_value_in_no_region(tmp_path):
    ref = np.zeros((2, 4, 4), np.uint8)
    pred_dir, ref_dir = write_pair(tmp_path, np.full_like(ref, 5), ref)
    with pytest.raises(UserError, match="label 5"):
        evaluate_folder(pred_dir, ref_dir, scored_classes({}, BRATS))


def test_a_region_dataset_json_gives_regions_and_its_ignore_label(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {**BRATS_LABELS, "ignore": 4}, "regions_class_order": BRATS_ORDER}))
    label_set = labels_to_score(None, path, None)
    assert label_set.regions == BRATS and label_set.ignore_label == 4 and label_set.labels is None


# ---------------------------------------------------------------------------------------------
# end to end: a BraTS-style dataset through every command


def write_brats_like(raw: Path, n_cases: int = 4) -> Path:
    """Two MRI-like channels; labels 1 edema ⊃ 2 necrosis + 3 enhancing ring; BraTS's regions."""
    from nnlite.data.image_io import write_image

    shape, affine = (12, 32, 32), np.eye(4)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    for index in range(n_cases):
        rng = np.random.default_rng(index)
        centre = rng.uniform([4, 10, 10], [8, 22, 22])
        radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        seg = np.select([radius < 2.5, radius < 4, radius < 7], [2, 3, 1], 0).astype(np.uint8)
        t1c = 100 + 200 * (seg == 3) + 30 * (seg == 2) + rng.normal(0, 10, shape)
        flair = 100 + 150 * (seg > 0) - 60 * (seg == 2) + rng.normal(0, 10, shape)
        for channel, image in enumerate((t1c, flair)):
            write_image(raw / "imagesTr" / f"brats_{index:03d}_{channel:04d}.nii.gz", image.astype(np.float32),
                        affine)
        write_seg(raw / "labelsTr" / f"brats_{index:03d}.nii.gz", seg, affine)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1c", "1": "FLAIR"}, "labels": BRATS_LABELS, "regions_class_order": BRATS_ORDER,
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return raw


@pytest.mark.slow
def test_brats_style_dataset_runs_every_command(tmp_path, capsys):
    from nnlite.check import main as check_main
    from nnlite.data.image_io import read_image
    from nnlite.plan import main as plan_main
    from nnlite.predict import main as predict_main
    from nnlite.preprocess import main as preprocess_main
    from nnlite.train import main as train_main
    from nnlite.training import checkpoints

    raw, work = write_brats_like(tmp_path / "raw"), tmp_path / "work"
    assert check_main([str(raw), "--workers", "1"]) == 0
    assert "whole tumor=[1, 2, 3]" in capsys.readouterr().out
    assert plan_main([str(raw), str(work), "--configs", "3d_fullres", "--gpu-memory-gb", "1",
                      "--workers", "1"]) == 0
    assert preprocess_main([str(work), "--workers", "1"]) == 0
    assert train_main([str(work), "--train-config", "debug", "--device", "cpu", "--workers", "0",
                       "--epochs", "1", "--iters-per-epoch", "3", "--val-iters", "1"]) == 0
    fold = work / "results" / "3d_fullres" / "fold_0"
    heads = [v for k, v in torch.load(fold / checkpoints.FINAL, weights_only=True)["network"].items()
             if k.endswith("weight") and "head" in k]
    assert heads and all(w.shape[0] == 3 for w in heads)  # one output per region
    val_summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert val_summary["labels"] == ["whole tumor", "tumor core", "enhancing tumor"]
    case = json.loads((work / "splits.json").read_text())[0]["val"][0]
    with np.load(fold / "validation" / f"{case}.npz") as saved:
        assert saved["probabilities"].shape[0] == 3  # saved probabilities: one channel per region
    images = tmp_path / "input"
    images.mkdir()
    for path in (raw / "imagesTr").glob(f"{case}_*.nii.gz"):
        (images / path.name).symlink_to(path)
    assert predict_main([str(work), str(images), str(tmp_path / "pred"), "--device", "cpu",
                         "--no-mirroring"]) == 0
    predicted = np.rint(read_image(tmp_path / "pred" / f"{case}.nii.gz").array)
    assert set(np.unique(predicted).tolist()) <= {0, 1, 2, 3}
    assert evaluate_main([str(tmp_path / "pred"), str(raw / "labelsTr"), "--dataset-json",
                          str(raw / "dataset.json"), "--output", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["mean"]) == ["whole tumor", "tumor core", "enhancing tumor"]


def test_postprocessing_decides_per_region(tmp_path):
    from nnlite.evaluation.postprocessing import decide_postprocessing
    from nnlite.evaluation.metrics import matched_cases

    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:4, 2:7, 2:7] = 1
    ref[2:4, 3:6, 3:6] = 3
    pred = ref.copy()
    pred[5, 10, 10] = 3  # a stray enhancing voxel far from the tumour
    pred_dir, ref_dir = write_pair(tmp_path, pred, ref)
    decision = decide_postprocessing(matched_cases(pred_dir, ref_dir), scored_classes({}, BRATS))
    assert decision["regions"] == ["whole tumor", "tumor core", "enhancing tumor"]
    assert decision["steps"][0] == [1, 2, 3]  # merging every region removes the stray voxel
    assert [d.get("region") for d in decision["decisions"][1:]] == decision["regions"]
    assert decision["decisions"][2]["labels"] == [2, 3]


def test_check_refuses_a_label_value_outside_the_regions(tmp_path):
    from nnlite.data.dataset import check_case, load_dataset

    raw = write_brats_like(tmp_path / "raw", n_cases=1)
    dataset = load_dataset(raw)
    assert dataset.regions == BRATS and dataset.labels["label_3"] == 3
    check_case(dataset, dataset.cases[0])
    seg = np.zeros((12, 32, 32), np.uint8)
    seg[0, 0, 0] = 4
    write_seg(dataset.cases[0].label, seg, np.eye(4))
    with pytest.raises(UserError, match=r"\[4\] are not declared") as error:
        check_case(dataset, dataset.cases[0])
    assert error.value.where == str(dataset.cases[0].label)


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_loader_turns_augmented_labels_into_region_targets(tmp_path, augment_on):
    """Same seed, same batches: the region loader's targets are exactly the region masks of the
    label loader's augmented, downsampled targets (conversion after augmentation, every DS level)."""
    from dataclasses import replace

    from nnlite.loading.loader import build_loader
    from tests.loader_fixtures import toy_dataset, toy_plans

    names = toy_dataset(tmp_path, 3)
    plans = toy_plans((8, 12, 12), batch_size=2)
    nested = (Region("both", (1, 2), 1), Region("two", (2,), 2))
    common = dict(work=tmp_path, config_name="3d_fullres", case_names=names, batch_size=2, augment=True,
                  seed=3, workers=0, augment_on=augment_on, device="cpu")
    with build_loader(plans=plans, **common) as labels, \
            build_loader(plans=replace(plans, regions=nested), **common) as regions:
        for _ in range(3):
            plain, region = next(labels), next(regions)
            torch.testing.assert_close(region["data"], plain["data"])
            assert len(region["target"]) == len(plain["target"]) == 2
            for seg, target in zip(plain["target"], region["target"]):
                assert target.shape == (2, 2, *seg.shape[2:]) and target.dtype == torch.uint8
                torch.testing.assert_close(target, region_targets(seg, nested))


def test_best_ensembles_region_probabilities_and_scores_regions(tmp_path):
    """Two configurations, each right on one half: their averaged sigmoids, painted, are right
    everywhere, so `best` picks the ensemble, and every summary is per region."""
    from dataclasses import replace

    from inference_fixtures import tiny_plans
    from nnlite.best import main as best_main
    from nnlite.common.files import write_json_atomic
    from nnlite.inference.saved_probabilities import write_probabilities
    from nnlite.inference.models import load_best
    from nnlite.planning.splits import make_splits
    from nnlite.plans import save_plans

    shape, affine, cases = (6, 10, 10), np.diag([1.0, 1.0, 2.0, 1.0]), [f"case_{i}" for i in range(6)]
    nested = (Region("both", (1, 2), 1), Region("two", (2,), 2))
    ref = np.zeros(shape, np.uint8)
    ref[1:5, 2:8, 1:4], ref[1:5, 2:8, 6:9] = 1, 2
    raw, work = tmp_path / "raw", tmp_path / "work"
    for case in cases:
        write_seg(raw / "labelsTr" / f"{case}.nii.gz", ref, affine)
    full = tiny_plans(labels=2, raw_path=str(raw)).configurations["3d_fullres"]
    save_plans(replace(tiny_plans(labels=2, raw_path=str(raw)), regions=nested,
                       configurations={"2d": full, "3d_fullres": full}), work / "plans.json")
    splits = make_splits(cases, n_folds=3)
    write_json_atomic(work / "splits.json", splits)
    for config, good_left in (("2d", True), ("3d_fullres", False)):
        probs = np.where(region_masks(ref, nested), 0.9, 0.05).astype(np.float32)
        miss = (np.arange(10) >= 5) if good_left else (np.arange(10) < 5)
        probs[:, (ref > 0) & miss] = 0.45  # just below the threshold: this half is missed
        for fold, split in enumerate(splits):
            folder = work / "results" / config / f"fold_{fold}"
            write_json_atomic(folder / "config.json", {"validation": {"step": 0.5, "mirroring": False}})
            for case in split["val"]:
                write_seg(folder / "validation" / f"{case}.nii.gz", paint_regions(probs, nested), affine)
                write_probabilities(folder / "validation" / f"{case}.npz", probs.astype(np.float16))
    assert best_main([str(work)]) == 0
    best = load_best(work)
    assert best["winner"]["name"] == "2d+3d_fullres"
    assert best["winner"]["foreground_dice"] == pytest.approx(1.0)
    summary = json.loads((work / "results" / "ensembles" / "2d+3d_fullres" / "summary.json").read_text())
    assert summary["labels"] == ["both", "two"]
