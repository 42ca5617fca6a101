"""Uncertainty maps and the per-case quality score (inference/uncertainty.py, docs/uncertainty.md):
entropy and mutual information against numpy on worked examples, zero disagreement with one member,
`predict --uncertainty` files in the input's geometry and format, uncertainty.csv (parts merged),
the score's direction, and the final validation's summary.json."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from inference_fixtures import save_random_model, tiny_plans
from nnlite.evaluation.metrics import list_segs
from nnlite.evaluation.quality import add_quality, oracle_share, spearman, worst_share
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.inference.sliding_window import mirror_subsets, predict_sliding_window
from nnlite.inference.uncertainty import (CSV_COLUMNS, UncertaintySums, entropy_scale, quality_row, read_rows)
from nnlite.predict import main as predict_main

SHAPE = (9, 22, 18)  # (Z, Y, X) of the test volumes
AFFINE = np.array([[0.7, 0, 0, 5.0], [0, 0.8, 0, -3.0], [0, 0, 2.1, 1.0], [0, 0, 0, 1]])


def numpy_entropy(p: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    """Σ_k −p log p (regions: + −(1−p) log(1−p)) over axis 0, in nats, straight from the definition."""
    def h(q):
        return np.where(q > 0, -q * np.log(np.where(q > 0, q, 1)), 0.0)

    return (h(p) + (h(1 - p) if sigmoid else 0)).sum(axis=0)


def numpy_uncertainty(members: list[np.ndarray], sigmoid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(entropy, mutual information) normalised, of members' probabilities (K, *S) averaged."""
    mean = np.mean(members, axis=0)
    scale = entropy_scale(mean.shape[0], sigmoid)
    entropy = numpy_entropy(mean, sigmoid)
    mutual = entropy - np.mean([numpy_entropy(m, sigmoid) for m in members], axis=0)
    return entropy / scale, mutual / scale


class Affine(nn.Module):
    """A 1×1×1 convolution plus a position-dependent bias: not mirror-symmetric, so the mirrored
    members really differ."""

    def __init__(self, classes: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv3d(1, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
        self.ramp = torch.randn(classes, 1, 1, 6, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.ramp * torch.linspace(-1, 1, x.shape[-1])


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("n_networks, mirror_axes", [(2, (0, 1, 2)), (1, (2,)), (3, ())])
def test_window_entropy_and_mutual_information_match_numpy(sigmoid, n_networks, mirror_axes, fp32_on_cpu):
    """One tile (the patch is the volume): every member (network × mirror) by hand in numpy."""
    torch.manual_seed(0)
    networks = [Affine(3, seed).eval() for seed in range(n_networks)]
    data = torch.randn(1, 4, 5, 6)
    out = predict_sliding_window(networks, data, (4, 5, 6), mirror_axes=mirror_axes,
                                 output="sigmoid" if sigmoid else "probs", disagreement=True)
    members = []
    with torch.no_grad():
        for network in networks:
            for subset in mirror_subsets(mirror_axes):
                dims = tuple(1 + a for a in subset)
                x = data.flip(dims) if dims else data
                logits = network(x[None])[0]
                p = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 0)
                members.append((p.flip(dims) if dims else p).numpy().astype(np.float64))
    entropy, mutual = numpy_uncertainty(members, sigmoid)
    np.testing.assert_allclose(out[:-1].numpy(), np.mean(members, axis=0), atol=1e-5)
    scale = entropy_scale(3, sigmoid)
    np.testing.assert_allclose(out[-1].numpy() / scale, mutual, atol=2e-5)
    assert mutual.max() > 1e-3  # the members really disagree: a zero map would not pass
    sums = UncertaintySums(3, sigmoid)
    for k in range(3):
        sums.add(k, out[k].numpy(), [out[k].numpy()])
    got_entropy, got_mutual = sums.maps([out[-1].numpy()])
    np.testing.assert_allclose(got_entropy, entropy, atol=2e-5)
    np.testing.assert_allclose(got_mutual, mutual, atol=2e-5)


def test_one_member_has_no_disagreement_anywhere(fp32_on_cpu):
    network = Affine(3, 0).eval()
    out = predict_sliding_window([network], torch.randn(1, 7, 9, 11), (4, 5, 6), mirror_axes=(),
                                 disagreement=True)  # overlapping tiles, one member each
    assert torch.count_nonzero(out[-1]) == 0


def test_an_ensemble_combines_its_configurations_as_one_set_of_members(rng):
    """Two configurations of two members each: MI over the configurations' means and their own MI
    equals the MI of the four members directly."""
    members = [rng.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1) for _ in range(4)]
    configs = [members[:2], members[2:]]
    sums = UncertaintySums(3, False)
    means = [np.mean(c, axis=0) for c in configs]
    for k in range(3):
        sums.add(k, np.mean([m[k] for m in means], axis=0), [m[k] for m in means])
    own = [numpy_uncertainty(c)[1] * math.log(3) for c in configs]  # nats, as a configuration gives it
    entropy, mutual = sums.maps(own)
    want_entropy, want_mutual = numpy_uncertainty(members)
    np.testing.assert_allclose(entropy, want_entropy, atol=1e-5)
    np.testing.assert_allclose(mutual, want_mutual, atol=1e-5)


def test_the_score_grows_with_the_uncertain_volume():
    seg = np.zeros((6, 10, 10), np.uint8)
    seg[2:4, 3:7, 3:7] = 1
    rows = []
    for doubt in (0.01, 0.2, 0.45):
        p1 = np.where(seg == 1, 1 - doubt, doubt).astype(np.float32)
        probs = np.stack([1 - p1, p1])
        sums = UncertaintySums(2, False)
        for k in range(2):
            sums.add(k, probs[k], [probs[k]])
        entropy, mutual = sums.maps([np.zeros(seg.shape, np.float32)])
        rows.append(quality_row(seg, entropy, mutual, sums, regions=False))
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores) and scores[0] < 0.1 < scores[-1] < 1
    # 600 voxels doubted by 0.01 against 32 predicted at 0.99: (6) / (2 · 31.68 + 6)
    assert scores[0] == pytest.approx(6 / (2 * 32 * 0.99 + 6), rel=1e-5)
    assert rows[0]["foreground_voxels"] == 32 and rows[-1]["boundary_entropy"] > rows[0]["boundary_entropy"]


def test_score_against_dice_error_on_a_hand_example():
    errors = [0.1, 0.5, 0.2, 0.9, 0.0]
    assert spearman([1, 3, 2, 5, 0], errors) == pytest.approx(1.0)
    assert spearman([-1, -3, -2, -5, 0], errors) == pytest.approx(-1.0)  # a flipped score
    assert worst_share([1, 3, 2, 5, 0], errors) == pytest.approx(0.9 / 1.7)  # ceil(0.2 · 5) = 1 case
    assert oracle_share(errors) == pytest.approx(0.9 / 1.7)
    summary = {"per_case": [{"case": c, "metrics": {"1": {"dice": 1 - e}}} for c, e in zip("abcde", errors)]}
    add_quality(summary, {c: {"score": s} for c, s in zip("abcde", [1, 3, 2, 5, 0])})
    assert summary["per_case"][3]["uncertainty"] == {"score": 5}
    assert summary["uncertainty"]["spearman_score_vs_dice_error"] == pytest.approx(1.0)


# --- predict --uncertainty ---------------------------------------------------------------------------

@pytest.fixture
def two_folds(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2), folds=(0, 1))
    return work


def nifti_inputs(folder, rng, cases=("a", "b")):
    folder.mkdir()
    for case in cases:
        volume = rng.normal(100, 20, SHAPE).astype(np.float32)
        volume[2:5, 4:10, 3:9] += 300
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), AFFINE), str(folder / f"{case}_0000.nii.gz"))
    return folder


def test_predict_uncertainty_writes_maps_in_the_input_geometry_and_the_csv(tmp_path, two_folds, rng):
    inputs, out = nifti_inputs(tmp_path / "in", rng), tmp_path / "out"
    assert predict_main([str(two_folds), str(inputs), str(out), "--device", "cpu", "--uncertainty",
                         "--save-probabilities"]) == 0
    for case in ("a", "b"):
        source = nib.load(str(inputs / f"{case}_0000.nii.gz"))
        entropy_image = nib.load(str(out / f"{case}_uncertainty.nii.gz"))
        mutual_image = nib.load(str(out / f"{case}_disagreement.nii.gz"))
        for image in (entropy_image, mutual_image):
            assert image.shape == source.shape and image.get_data_dtype() == np.float32
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
        entropy = entropy_image.get_fdata().transpose(2, 1, 0)
        mutual = mutual_image.get_fdata().transpose(2, 1, 0)
        assert 0 <= mutual.min() and (mutual <= entropy + 1e-6).all() and entropy.max() <= 1
        assert mutual.max() > 1e-3  # two folds × 8 mirrors disagree somewhere
        # the entropy map is the normalised entropy of the saved (float16) probabilities
        probs = load_probabilities(out / f"{case}.npz").astype(np.float64)
        np.testing.assert_allclose(entropy, numpy_entropy(probs) / math.log(3), atol=3e-3)
    with open(out / "uncertainty.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == CSV_COLUMNS and [row["case"] for row in table] == ["a", "b"]
    assert all(0 <= float(row["score"]) < 1 for row in table)
    assert sorted(list_segs(out)) == ["a", "b"]  # evaluate and friends skip the maps


def test_one_fold_without_mirroring_writes_a_zero_disagreement_map(tmp_path, two_folds, rng):
    inputs, out = nifti_inputs(tmp_path / "in", rng, ("a",)), tmp_path / "out"
    assert predict_main([str(two_folds), str(inputs), str(out), "--device", "cpu", "--uncertainty",
                         "--folds", "0", "--no-mirroring"]) == 0
    assert not np.any(nib.load(str(out / "a_disagreement.nii.gz")).get_fdata())
    assert np.any(nib.load(str(out / "a_uncertainty.nii.gz")).get_fdata())
    assert read_rows(out / "uncertainty.csv")["a"]["boundary_disagreement"] == 0


def test_mha_inputs_get_mha_maps_with_their_geometry(tmp_path, two_folds, rng):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = sitk.GetImageFromArray(rng.normal(100, 20, SHAPE).astype(np.float32))
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 35.0))
    sitk.WriteImage(image, str(inputs / "a_0000.mha"))
    assert predict_main([str(two_folds), str(inputs), str(out), "--device", "cpu", "--uncertainty"]) == 0
    written = sitk.ReadImage(str(out / "a_uncertainty.mha"))
    assert written.GetSize() == image.GetSize() and written.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-6)


def test_parts_write_their_own_csv_and_a_whole_run_merges_them(tmp_path, two_folds, rng):
    inputs, out = nifti_inputs(tmp_path / "in", rng, ("a", "b", "c")), tmp_path / "out"
    common = [str(two_folds), str(inputs), str(out), "--device", "cpu", "--uncertainty", "--folds", "0"]
    for part in ("0", "1"):
        assert predict_main([*common, "--part", part, "--num-parts", "2"]) == 0
    assert sorted(read_rows(out / "uncertainty.part-0-of-2.csv")) == ["a", "c"]
    assert sorted(read_rows(out / "uncertainty.part-1-of-2.csv")) == ["b"]
    assert not (out / "uncertainty.csv").exists()
    assert predict_main(common) == 0  # every case done: merges the parts
    assert sorted(read_rows(out / "uncertainty.csv")) == ["a", "b", "c"]
    assert not list(out.glob("uncertainty.part-*"))


def test_a_case_without_its_maps_is_predicted_again(tmp_path, two_folds, rng):
    inputs, out = nifti_inputs(tmp_path / "in", rng, ("a",)), tmp_path / "out"
    common = [str(two_folds), str(inputs), str(out), "--device", "cpu", "--folds", "0"]
    assert predict_main(common) == 0
    assert predict_main([*common, "--uncertainty"]) == 0
    assert (out / "a_uncertainty.nii.gz").is_file() and "a" in read_rows(out / "uncertainty.csv")


# --- the final validation ----------------------------------------------------------------------------

@pytest.mark.slow
def test_the_final_validation_scores_each_case_beside_its_dice(tmp_path):
    from nnlite.train import main as train_main
    from tests.work_fixtures import CONFIG, small_work

    work = small_work(tmp_path)
    assert train_main([str(work), "--fold", "0", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1",
                       "--train-config", "debug", "--device", "cpu", "--workers", "0"]) == 0
    validation = work / "results" / CONFIG / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    for entry in summary["per_case"]:
        assert set(entry["uncertainty"]) == set(CSV_COLUMNS[1:]) and "dice" in entry["metrics"]["1"]
        assert (validation / "uncertainty" / f"{entry['case']}_uncertainty.nii.gz").is_file()
    assert summary["uncertainty"]["cases"] == len(summary["per_case"])
    assert not list(validation.glob("*_uncertainty*"))  # not beside the label maps: folders list those


def test_regions_score_every_region_from_its_own_probability():
    """Region models: every region (also the first) is a structure of its own, A_r = p_r > 0.5."""
    seg = np.zeros((4, 8, 8), np.uint8)
    seg[1:3, 2:6, 2:6] = 1
    seg[1:3, 3:5, 3:5] = 2  # the core inside the lesion
    lesion = np.where(seg >= 1, 0.9, 0.0).astype(np.float32)
    core = np.where(seg == 2, 0.6, 0.0).astype(np.float32)
    sums = UncertaintySums(2, True)
    for k, channel in enumerate((lesion, core)):
        sums.add(k, channel, [channel])
    entropy, mutual = sums.maps([np.zeros(seg.shape, np.float32)])
    row = quality_row(seg, entropy, mutual, sums, regions=True)
    lesion_error = (32 * 0.1) / (2 * 32 * 0.9 + 32 * 0.1)
    core_error = (8 * 0.4) / (2 * 8 * 0.6 + 8 * 0.4)
    assert row["score"] == pytest.approx((lesion_error + core_error) / 2, rel=1e-5)
    assert row["foreground_voxels"] == 32 and entropy.max() <= 1
