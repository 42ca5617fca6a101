"""Calibration: the ECE of saved probabilities, the temperature fitted on them, and `predict`
applying it (evaluation/calibration.py, inference/temperature.py; docs/uncertainty.md)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.common.layout import temperature_file
from nnlite.data.image_io import read_image, write_image, write_seg
from nnlite.evaluation.calibration import (BAND_VOXELS, CalibrationBins, CaseVoxels, calibrate_folder, case_bins,
                                           case_voxels, ece_report, fit_temperature, merge_bins)
from nnlite.inference.outputs import write_case_outputs
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.inference.temperature import prediction_temperature, read_temperature, scale_probabilities
from nnlite.predict import main as predict_main

LABELS = SimpleNamespace(ignore_label=None, regions=())  # what calibration reads of a label dataset's plans
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def test_ece_of_a_hand_worked_example():
    # six voxels, two classes: (p background, p foreground), reference label
    probs = np.array([[0.1, 0.9], [0.22, 0.78], [0.7, 0.3], [0.45, 0.55], [1.0, 0.0], [0.12, 0.88]]).T
    ref = np.array([1, 0, 0, 1, 0, 0])
    # confidences 0.9 (right), 0.78 (wrong), 0.7 (right), 0.55 (right), 1.0 (right), 0.88 (wrong);
    # of 15 bins: 0.9 and 0.88 share bin 13 (accuracy 1/2, confidence 0.89), the rest are alone:
    # ECE = (2·|0.5 − 0.89| + |0 − 0.78| + |1 − 0.7| + |1 − 0.55| + |1 − 1.0|) / 6 = 2.31 / 6
    voxels = CaseVoxels(probs.astype(np.float32), ref, np.ones(6, bool))
    bins = case_bins(voxels)["all"]
    assert bins.count.tolist() == [0] * 8 + [1, 0, 1, 1, 0, 2, 1]
    assert bins.ece() == pytest.approx(2.31 / 6, abs=1e-6)
    assert CalibrationBins().ece() != CalibrationBins().ece()  # no voxels: NaN


def test_the_foreground_set_is_a_band_around_predicted_or_reference_foreground_without_ignored_voxels():
    shape = (1, 1, 16)
    ref = np.zeros(shape, np.int64)
    ref[..., 0] = 1  # reference foreground at x = 0
    ref[..., 15] = 3  # the ignore label at x = 15
    probs = np.zeros((2, *shape), np.float32)
    probs[0] = 1.0  # background everywhere, sure and (but at x = 0) right
    probs[:, ..., 0] = [[[0.9]], [[0.1]]]
    probs[:, ..., 10] = [[[0.2]], [[0.8]]]  # predicted foreground at x = 10
    voxels = case_voxels(probs, ref, SimpleNamespace(ignore_label=3, regions=()))
    near = np.zeros(15, bool)
    near[: BAND_VOXELS + 1] = True
    near[10 - BAND_VOXELS : 10 + BAND_VOXELS + 1] = True
    assert voxels.target.size == 15  # x = 15 (ignore) left out
    assert voxels.near_foreground.tolist() == near.tolist()
    report = ece_report(merge_bins([case_bins(voxels)]))
    assert report["voxels_all"] == 15 and report["voxels_foreground"] == int(near.sum())
    # far background is right at confidence 1: counted in `all` (diluting its ECE), not in `foreground`
    assert report["ece_all"] < report["ece_foreground"]


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_the_fit_recovers_a_known_temperature_on_synthetic_logits(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (3, 40_000))
    truth = softmax(logits / true_temperature)  # labels are drawn from the calibrated probabilities
    labels = (rng.random(40_000)[None] > np.cumsum(truth, axis=0)).sum(axis=0)
    given = softmax(logits).astype(np.float32)  # the network's probabilities: off by the temperature
    fitted = fit_temperature(CaseVoxels(given, labels, np.ones(labels.size, bool)))
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    scaled = CaseVoxels(scale_probabilities(given, fitted), labels, np.ones(labels.size, bool))
    assert case_bins(scaled)["all"].ece() < 0.5 * case_bins(CaseVoxels(given, labels, scaled.near_foreground))["all"].ece()


def test_temperature_on_probabilities_is_temperature_on_logits_and_keeps_the_label_map():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 4.0, (4, 5, 6, 7))
    for temperature in (0.3, 1.7):
        scaled = scale_probabilities(softmax(logits), temperature)
        np.testing.assert_allclose(scaled, softmax(logits / temperature), atol=1e-5)
        assert (scaled.argmax(0) == logits.argmax(0)).all()
    region = 1 / (1 + np.exp(-logits))  # sigmoid regions: sigmoid(logit / T), > 0.5 unchanged
    np.testing.assert_allclose(scale_probabilities(region, 2.5, sigmoid=True), 1 / (1 + np.exp(-logits / 2.5)),
                               atol=1e-5)
    with pytest.raises(UserError, match="finite number > 0"):
        scale_probabilities(region, 0.0)


def test_calibrate_folder_fits_an_overconfident_folder_and_writes_the_temperature(tmp_path):
    rng = np.random.default_rng(2)
    folder, refs = tmp_path / "crossval", tmp_path / "labelsTr"
    refs.mkdir()
    for case in ("a", "b"):
        logits = rng.normal(0.0, 2.0, (2, 6, 8, 8))
        ref = (rng.random((6, 8, 8)) < softmax(logits)[1]).astype(np.uint8)  # calibrated at T = 1
        overconfident = softmax(3.0 * logits)  # what the "network" saved: T = 3 undoes it
        write_case_outputs(folder / f"{case}.nii.gz", overconfident.argmax(0).astype(np.uint8), AFFINE,
                           probabilities=overconfident.astype(np.float16))
        write_seg(refs / f"{case}.nii.gz", ref, AFFINE)
    out = tmp_path / temperature_file("work", CONFIG).name
    result = calibrate_folder(folder, refs, LABELS, out, "test")
    assert read_temperature(out) == pytest.approx(result["temperature"]) and 2.0 < result["temperature"] < 4.5
    assert result["ece_after"]["ece_foreground"] < result["ece_before"]["ece_foreground"]
    (folder / "b.npz").unlink()
    assert calibrate_folder(folder, refs, LABELS, out, "test") is None and not out.exists()  # never stale


def test_predict_applies_the_fitted_temperature_to_saved_probabilities_only(tmp_path):
    work, inputs = tmp_path / "work", tmp_path / "in"
    save_random_model(work, tiny_plans(), folds=(0,))
    rng = np.random.default_rng(3)
    write_image(inputs / "a_0000.nii.gz", rng.normal(0, 1, (9, 19, 13)).astype(np.float32), AFFINE)
    common = [str(work), str(inputs), "--device", "cpu", "--save-probabilities", "--no-mirroring"]
    assert predict_main([common[0], common[1], str(tmp_path / "plain"), *common[2:]]) == 0
    assert prediction_temperature(work, [CONFIG]) == 1.0  # nothing fitted: nothing applied
    temperature_file(work, CONFIG).write_text(json.dumps({"temperature": 2.5}))
    assert predict_main([common[0], common[1], str(tmp_path / "scaled"), *common[2:]]) == 0
    assert predict_main([common[0], common[1], str(tmp_path / "raw"), *common[2:], "--no-temperature"]) == 0
    plain, raw = (load_probabilities(tmp_path / name / "a.npz").astype(np.float32) for name in ("plain", "raw"))
    scaled = load_probabilities(tmp_path / "scaled" / "a.npz").astype(np.float32)
    np.testing.assert_array_equal(raw, plain)
    np.testing.assert_allclose(scaled, scale_probabilities(raw, 2.5), atol=2e-3)  # float16 both ways
    assert np.abs(scaled - raw).max() > 0.05  # it did change them
    labels = [read_image(tmp_path / name / "a.nii.gz").array for name in ("raw", "scaled")]
    np.testing.assert_array_equal(labels[0], labels[1])  # the label map is the same for any T
    best = {"calibration": {"temperature": 0.5, "file": "x"}}
    assert prediction_temperature(work, [CONFIG], best) == 0.5 and prediction_temperature(work, [], {}) == 1.0


def test_a_broken_temperature_file_is_one_user_error(tmp_path):
    path = tmp_path / "temperature.json"
    path.write_text(json.dumps({"temperature": -1}))
    with pytest.raises(UserError, match="finite number > 0"):
        read_temperature(path)
    path.write_text(json.dumps({"T": 2}))
    with pytest.raises(UserError, match="not a temperature file"):
        read_temperature(path)
    assert read_temperature(Path(tmp_path / "absent.json")) is None


def test_best_fits_each_configuration_and_the_winning_ensemble(tmp_path):
    from dataclasses import replace

    from test_selection import CASES, left_half, reference, write_config
    from nnlite.best import main as best_main
    from nnlite.common.cli import run
    from nnlite.common.files import write_json_atomic
    from nnlite.inference.models import load_best
    from nnlite.planning.splits import make_splits
    from nnlite.plans import save_plans

    for case in CASES:  # test_selection's WORK: two configurations, each right on one half
        write_seg(tmp_path / "raw" / "labelsTr" / f"{case}.nii.gz", reference(case), AFFINE)
    work, plans = tmp_path / "work", tiny_plans(labels=2, raw_path=str(tmp_path / "raw"))
    full = plans.configurations[CONFIG]
    save_plans(replace(plans, configurations={"2d": full, CONFIG: full}), work / "plans.json")
    write_json_atomic(work / "splits.json", make_splits(CASES, n_folds=3))
    write_config(work, "2d", left_half(), mirroring=False)
    write_config(work, "3d_fullres", ~left_half(), mirroring=False)
    assert run(best_main, [str(work)]) == 0
    for config in ("2d", "3d_fullres"):  # the crossval step fits every configuration
        fitted = json.loads(temperature_file(work, config).read_text())
        assert fitted["cases"] == 6 and fitted["ece_after"]["ece_foreground"] <= fitted["ece_before"]["ece_foreground"]
    best = load_best(work)
    ensemble = work / "results" / "ensembles" / "2d+3d_fullres" / "temperature.json"
    assert best["calibration"] == {"temperature": read_temperature(ensemble), "file": str(ensemble)}
    assert prediction_temperature(work, ["2d", "3d_fullres"], best) == read_temperature(ensemble)


@pytest.mark.slow
def test_the_final_validation_reports_the_ece_of_its_saved_probabilities(tmp_path):
    from scipy import ndimage

    from test_demo import SCHEDULE, fold_dir, tiny_work_from
    from nnlite.data.demo_dataset import generate_demo_dataset
    from nnlite.evaluation.metrics import read_label_map
    from nnlite.train import main as train_main

    raw = generate_demo_dataset(tmp_path / "raw", n_cases=4)
    work = tiny_work_from(raw, tmp_path / "work")
    assert train_main([str(work), "--epochs", "1", "--iters-per-epoch", "2", *SCHEDULE[:-2],
                       "--set", "validation.mirroring=false"]) == 0
    validation = fold_dir(work) / "validation"
    reported = json.loads((validation / "summary.json").read_text())["calibration"]
    confidence, correct, near = [], [], []  # recomputed here from the .npz and the raw labels
    for case in json.loads((work / "splits.json").read_text())[0]["val"]:
        probs = load_probabilities(validation / f"{case}.npz").astype(np.float32)
        ref = read_label_map(raw / "labelsTr" / f"{case}.nii.gz")[0]
        foreground = (probs.argmax(0) > 0) | (ref > 0)
        near.append(ndimage.binary_dilation(foreground, np.ones((3, 3, 3)), iterations=BAND_VOXELS).ravel())
        confidence.append(probs.max(0).ravel())
        correct.append((probs.argmax(0) == ref).ravel())
    confidence, correct, near = map(np.concatenate, (confidence, correct, near))
    for name, keep in (("all", np.ones_like(near)), ("foreground", near)):
        edges = np.linspace(0, 1, 16)
        gaps = [abs(correct[keep & (confidence > lo) & (confidence <= hi)].sum()
                    - confidence[keep & (confidence > lo) & (confidence <= hi)].sum())
                for lo, hi in zip(edges[:-1], edges[1:])]
        assert reported[f"ece_{name}"] == pytest.approx(sum(gaps) / keep.sum(), abs=1e-4), name
        assert reported[f"voxels_{name}"] == keep.sum()


def test_a_region_channel_counts_as_a_two_class_prediction():
    from nnlite.common.labels import Region

    regions = (Region("whole", (1, 2), 1), Region("core", (2,), 2))
    ref = np.array([[[0, 1, 2]]])
    probs = np.array([[[[0.2, 0.7, 0.9]]], [[[0.6, 0.1, 0.8]]]], np.float32)  # (R, 1, 1, 3)
    voxels = case_voxels(probs, ref, SimpleNamespace(ignore_label=None, regions=regions))
    np.testing.assert_allclose(voxels.probs[1], [0.2, 0.7, 0.9, 0.6, 0.1, 0.8])  # p, region by region
    np.testing.assert_allclose(voxels.probs[0], 1 - voxels.probs[1])
    assert voxels.target.tolist() == [0, 1, 1, 0, 0, 1]  # membership of each voxel in each region
    bins = case_bins(voxels)["all"]  # confidences 0.8, 0.7, 0.9, 0.6 (wrong), 0.9, 0.8
    assert bins.count.sum() == 6 and bins.correct.sum() == 5
