"""The Python API (nnlite/api.py, docs/python.md): the commands' code without the shell.

`Predictor.predict` on an in-memory array returns exactly the label map (and probabilities, and
classification row) that `python -m nnlite.predict` writes for the same image — for a label model,
a region model and a model with a classification head; bad input is a UserError, never SystemExit;
`import nnlite` imports no torch; docs/python.md's walk through runs as written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nnlite
from command_line import REPO
from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.common.errors import UserError
from nnlite.data.regions import parse_region_labels
from nnlite.inference.case_classification import read_classification
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.predict import main as predict_main

# an oblique affine: voxel axes swapped and flipped, spacing (z, y, x) = (2.5, 1.0, 1.2) ≠ the plan's
AFFINE = np.array([[0.0, -1.0, 0.0, 3.0], [1.2, 0.0, 0.0, -2.0], [0.0, 0.0, 2.5, 1.0], [0.0, 0.0, 0.0, 1.0]])
BRATS = parse_region_labels("dataset.json", {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                             "enhancing tumor": 3}, [1, 2, 3])[1]
CLASSES = ("benign", "malignant")
FLAGS = ["--folds", "0", "--device", "cpu"]


def write_case(folder: Path, case: str, channels: int, seed: int = 0) -> list[Path]:
    """A (9, 20, 18) volume per channel with a bright block, as <case>_<CCCC>.nii.gz."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for channel in range(channels):
        volume = rng.normal(0, 1, (9, 20, 18)).astype(np.float32)
        volume[2:6, 4:12, 3:10] += 3
        paths.append(folder / f"{case}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), AFFINE), paths[-1])
    return paths


def read_voxels(paths: list[Path]) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """What a user holds: (C, Z, Y, X) float32, the header's spacing (z, y, x), the affine."""
    images = [nib.load(p) for p in paths]
    data = np.stack([np.asarray(i.dataobj, dtype=np.float32).transpose(2, 1, 0) for i in images])
    return data, tuple(float(z) for z in images[0].header.get_zooms()[::-1]), images[0].affine


def written_labels(path: Path) -> np.ndarray:
    image = nib.load(path)
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def predict_with_command(work: Path, tmp_path: Path, channels: int, *flags: str) -> tuple[Path, list[Path]]:
    paths = write_case(tmp_path / "in", "c1", channels)
    out = tmp_path / "out"
    assert predict_main([str(work), str(tmp_path / "in"), str(out), *FLAGS, *flags]) == 0
    return out, paths


def assert_same_as_written(prediction, out: Path, probabilities: bool = True) -> None:
    written = written_labels(out / "c1.nii.gz")
    assert prediction.labels.dtype == written.dtype and prediction.labels.shape == written.shape
    np.testing.assert_array_equal(prediction.labels, written)
    np.testing.assert_allclose(prediction.affine, nib.load(out / "c1.nii.gz").affine, atol=1e-6)
    if probabilities:
        np.testing.assert_array_equal(prediction.probabilities, load_probabilities(out / "c1.npz"))


def label_model(work: Path, labels: int = 2, **plan_changes) -> Path:
    plans = tiny_plans(labels=labels, transpose=(2, 0, 1), spacing=(1.0, 2.0, 1.0))
    save_random_model(work, replace(plans, **plan_changes))
    return work


def region_model(work: Path) -> Path:
    return label_model(work, labels=3, regions=BRATS)


def test_the_array_label_map_is_the_one_predict_writes(tmp_path):
    work = label_model(tmp_path / "work")
    out, paths = predict_with_command(work, tmp_path, 1, "--save-probabilities")
    data, spacing, affine = read_voxels(paths)
    predictor = nnlite.Predictor(work, config=CONFIG, folds=(0,), checkpoint="final", device="cpu")
    prediction = predictor.predict(data, spacing=spacing, affine=affine, probabilities=True)
    assert len(np.unique(prediction.labels)) == 3, "a random model that predicts every class"
    assert_same_as_written(prediction, out)
    # the spacing from the affine alone, a (Z, Y, X) array, the file itself: the same label map
    assert_same_as_written(predictor.predict(data[0], affine=affine), out, probabilities=False)
    assert_same_as_written(predictor.predict(paths[0], probabilities=True), out)
    assert predictor.predict(data, spacing=spacing).class_row is None


def test_an_array_with_only_its_spacing_is_written_axis_aligned(tmp_path):
    """Without an affine the label map is the one `predict` writes for a file with diag(x, y, z)."""
    work = label_model(tmp_path / "work")
    data, _, _ = read_voxels(write_case(tmp_path / "raw", "c1", 1))
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(data[0].transpose(2, 1, 0), np.diag([1.2, 1.0, 2.5, 1.0])), folder / "c1_0000.nii.gz")
    assert predict_main([str(work), str(folder), str(tmp_path / "out"), *FLAGS]) == 0
    prediction = nnlite.Predictor(work).predict(data, spacing=(2.5, 1.0, 1.2))
    assert_same_as_written(prediction, tmp_path / "out", probabilities=False)


def test_a_region_model_paints_the_label_map_predict_writes(tmp_path):
    work = region_model(tmp_path / "work")
    out, paths = predict_with_command(work, tmp_path, 1, "--save-probabilities")
    data, spacing, affine = read_voxels(paths)
    prediction = nnlite.Predictor(work).predict(data, spacing=spacing, affine=affine, probabilities=True)
    assert prediction.probabilities.shape[0] == len(BRATS)  # one sigmoid per region
    assert len(np.unique(prediction.labels)) > 2
    assert_same_as_written(prediction, out)


def test_postprocessing_and_two_channels_as_the_command(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2, channels=2, transpose=(2, 0, 1), spacing=(1.0, 2.0, 1.0)))
    (work / "results" / CONFIG / "postprocessing.json").write_text(json.dumps({"steps": [[1]]}))
    out, paths = predict_with_command(work, tmp_path, 2, "--postprocess")
    data, spacing, affine = read_voxels(paths)
    predictor = nnlite.Predictor(work, postprocess=True)
    assert_same_as_written(predictor.predict(data, spacing=spacing, affine=affine), out, probabilities=False)
    assert_same_as_written(predictor.predict(paths[0]), out, probabilities=False)  # channel 1 found beside it
    plain = nnlite.Predictor(work).predict(data, spacing=spacing, affine=affine).labels
    assert not np.array_equal(plain, written_labels(out / "c1.nii.gz")), "the steps change this case"


def test_best_is_predict_best(tmp_path):
    """best=True: the configuration and post-processing steps of results/best.json, as `predict --best`."""
    from nnlite.common.layout import best_file

    work = label_model(tmp_path / "work")
    best_file(work).write_text(json.dumps({"winner": {"name": CONFIG, "configurations": [CONFIG]},
                                           "postprocessing": {"steps": [[1]]}}))
    out, paths = predict_with_command(work, tmp_path, 1, "--best")
    data, spacing, affine = read_voxels(paths)
    predictor = nnlite.Predictor(work, config="2d", best=True)  # best.json's configuration wins
    assert predictor.configs == [CONFIG] and predictor.postprocessing == [[1]]
    assert_same_as_written(predictor.predict(data, spacing=spacing, affine=affine), out, probabilities=False)


def test_the_class_row_is_the_one_predict_writes(tmp_path):
    plans = tiny_plans(labels=2)
    config = plans.configurations[CONFIG]
    plans = replace(plans, case_classes=CLASSES,
                    configurations={CONFIG: replace(config, network=replace(config.network, class_head=2))})
    save_random_model(tmp_path / "work", plans)
    out, paths = predict_with_command(tmp_path / "work", tmp_path, 1)
    data, spacing, affine = read_voxels(paths)
    prediction = nnlite.Predictor(tmp_path / "work").predict(data, spacing=spacing, affine=affine)
    assert_same_as_written(prediction, out, probabilities=False)
    written = read_classification(out / "classification.csv", CLASSES)["c1"]
    row = prediction.class_row
    assert list(row) == ["predicted_class", "p_benign", "p_malignant"]
    assert row["predicted_class"] == CLASSES[int(np.argmax(written))] == prediction.predicted_class
    np.testing.assert_allclose([row["p_benign"], row["p_malignant"]], written, atol=1e-6)


def test_temperature_and_uncertainty_as_the_command(tmp_path):
    """A fitted temperature scales the probabilities as `<case>.npz` holds them; --uncertainty's maps
    and uncertainty.csv row come back with the label map."""
    from nnlite.common.layout import UNCERTAINTY_FILE, temperature_file
    from nnlite.inference.uncertainty import read_rows

    work = tmp_path / "work"
    save_random_model(work, tiny_plans(labels=2, transpose=(2, 0, 1), spacing=(1.0, 2.0, 1.0)), folds=(0, 1))
    temperature_file(work, CONFIG).write_text(json.dumps({"temperature": 2.5}))
    out, paths = predict_with_command(work, tmp_path, 1, "--folds", "0", "1", "--save-probabilities", "--uncertainty")
    data, spacing, affine = read_voxels(paths)
    prediction = nnlite.Predictor(work, folds=(0, 1), uncertainty=True).predict(
        data, spacing=spacing, affine=affine, probabilities=True)
    assert_same_as_written(prediction, out)
    for name, array in (("c1_uncertainty.nii.gz", prediction.uncertainty.entropy),
                        ("c1_disagreement.nii.gz", prediction.uncertainty.disagreement)):
        np.testing.assert_array_equal(array, np.asarray(nib.load(out / name).dataobj).transpose(2, 1, 0), name)
    written = read_rows(out / UNCERTAINTY_FILE)["c1"]
    assert written.keys() == prediction.uncertainty.row.keys()
    np.testing.assert_allclose(list(prediction.uncertainty.row.values()), list(written.values()), rtol=1e-5)
    unscaled = nnlite.Predictor(work, folds=(0, 1), temperature=False).predict(data, spacing=spacing, affine=affine,
                                                                               probabilities=True)
    assert not np.array_equal(unscaled.probabilities, prediction.probabilities)
    np.testing.assert_array_equal(unscaled.labels, prediction.labels)


def test_a_2d_image_as_an_array_is_the_picture_predict_writes(tmp_path, rng, monkeypatch):
    """An RGB picture as (3, Y, X) with its spacing (y, x): the label map `predict` writes as PNG."""
    from PIL import Image as PILImage

    from inference_fixtures import rgb_picture_model

    _, raw, pictures = rgb_picture_model(tmp_path, rng, monkeypatch)
    rgb = pictures[-1]
    (raw / "in").mkdir()
    PILImage.fromarray(rgb).save(raw / "in" / "c1_0000.png")
    assert predict_main([str(tmp_path / "work"), str(raw / "in"), str(tmp_path / "out"), "--config", "2d",
                         *FLAGS]) == 0
    prediction = nnlite.Predictor(tmp_path / "work", config="2d").predict(rgb.transpose(2, 0, 1), spacing=(1.0, 1.0))
    with PILImage.open(tmp_path / "out" / "c1.png") as written:
        np.testing.assert_array_equal(prediction.labels, np.asarray(written)[None])  # (Z = 1, Y, X)
    assert len(np.unique(prediction.labels)) == 2


def test_predict_folder_is_the_command(tmp_path):
    work = region_model(tmp_path / "work")
    out, _ = predict_with_command(work, tmp_path, 1)
    report = nnlite.Predictor(work).predict_folder(tmp_path / "in", tmp_path / "api_out")
    assert report.predicted == ["c1"]
    np.testing.assert_array_equal(written_labels(tmp_path / "api_out" / "c1.nii.gz"), written_labels(out / "c1.nii.gz"))


@pytest.mark.parametrize("call, where, problem", [
    (lambda p, data: p.predict(data), "spacing", "needs its voxel spacing"),
    (lambda p, data: p.predict(data[None].repeat(2, 0), spacing=(1, 1, 1)), "array", "C = 1"),
    (lambda p, data: p.predict(data, spacing=(1, 0, 1)), "spacing", "positive numbers"),
    (lambda p, data: p.predict(data, spacing=(1, 1, 1, 1)), "spacing", "3 positive numbers"),
    (lambda p, data: p.predict(data, spacing=(1, 1)), "array", r"expected \(C, Y, X\)"),
    (lambda p, data: p.predict(data, affine=np.eye(3)), "affine", "4×4"),
    (lambda p, data: p.predict(data, affine=[["a"] * 4] * 4), "affine", "4×4"),
    (lambda p, data: p.predict(data, spacing=("a", 1, 1)), "spacing", "positive numbers"),
    (lambda p, data: p.predict(str(data), spacing=(1, 1, 1)), "spacing", "only for an array"),
    (lambda p, data: p.predict(data.astype(str), spacing=(1, 1, 1)), "array", "expected numbers"),
    (lambda p, data: p.predict("missing_0000.nii.gz"), "missing_0000.nii.gz", "not found"),
])
def test_bad_input_is_a_user_error(tmp_path, call, where, problem):
    predictor = nnlite.Predictor(label_model(tmp_path / "work"))
    with pytest.raises(UserError, match=problem) as error:
        call(predictor, np.zeros((9, 20, 18), np.float32))
    assert error.value.where == where


def test_bad_arguments_are_user_errors_not_system_exit(tmp_path):
    work = label_model(tmp_path / "work")
    with pytest.raises(UserError, match="'2d' is not in"):
        nnlite.Predictor(work, config="2d")
    with pytest.raises(UserError, match="no such trained fold"):
        nnlite.Predictor(work, folds=(3,))
    with pytest.raises(UserError, match="plans.json"):
        nnlite.Predictor(tmp_path / "nowhere")
    with pytest.raises(UserError) as error:
        nnlite.train(work, settings={"training": {"epoch": 3}})
    assert error.value.where == "settings['training.epoch']" and "did you mean 'training.epochs'" in error.value.problem
    with pytest.raises(UserError) as error:
        nnlite.train(work, settings={"training.initial_lr": "fast"})
    assert error.value.where == "settings['training.initial_lr']"
    with pytest.raises(UserError, match="preset"):
        nnlite.plan(tmp_path / "raw", tmp_path / "work2", preset="huge")
    with pytest.raises(UserError, match="is not planned") as error:
        nnlite.add_config(work, "narrow", parent="3d_lowres")
    assert error.value.where == "parent"


def test_add_config_inherits_and_changes_the_given_fields(tmp_path):
    work = label_model(tmp_path / "work")
    plans = nnlite.add_config(work, "narrow", parent=CONFIG, settings={"network": {"features_per_stage": [2, 4, 4]},
                                                                       "batch_size": 3})
    narrow, parent = plans.configurations["narrow"], plans.configurations[CONFIG]
    assert narrow.network.features_per_stage == (2, 4, 4) and narrow.batch_size == 3
    assert narrow.patch_size == parent.patch_size and narrow.data_identifier == parent.data_identifier


def test_train_settings_become_the_commands_settings(tmp_path, monkeypatch):
    """Nested and dotted settings, config and pretrained reach the trainer as `--set`, `--config`
    and `--pretrained` would; the result reads the fold's metrics.jsonl and validation summary."""
    from nnlite.training import trainer

    folder = tmp_path / "fold_all"
    (folder / "validation").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.5}\n{"epoch": 1, "train_loss": 1.25}\n')
    (folder / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"dice": 0.75}}))
    calls = []
    monkeypatch.setattr(trainer, "train_folds", lambda *args, **kwargs: calls.append((args, kwargs)) or [folder])
    result = nnlite.train(tmp_path / "work", fold="all", config="2d", pretrained=tmp_path / "model.pt",
                          settings={"training": {"epochs": 7, "initial_lr": 3e-3}, "data.workers": 0},
                          resume=True)
    (work, settings, folds), options = calls[0]
    assert work == tmp_path / "work" and folds == ["all"] and options == {"resume": True, "overwrite": False}
    assert (settings.configuration, settings.training.epochs, settings.training.initial_lr, settings.data.workers) \
        == ("2d", 7, 3e-3, 0)
    assert settings.pretrained.checkpoint == str((tmp_path / "model.pt").resolve())
    assert result.folder == folder and [e["train_loss"] for e in result.epochs] == [1.5, 1.25]
    assert result.dice == 0.75


def test_import_nnlite_is_light_and_the_commands_stay_callable():
    """`import nnlite` and the API's names import no torch; the command modules (which Python binds
    to the same names when imported) run the API when called."""
    code = textwrap.dedent("""
        import sys
        import nnlite
        names = [nnlite.plan, nnlite.preprocess, nnlite.train, nnlite.Predictor, nnlite.Prediction]
        import nnlite.api
        light = not any(m in sys.modules for m in ("torch", "scipy"))
        import nnlite.train as command
        from nnlite import plan
        print(light, callable(command), callable(plan), callable(nnlite.preprocess), command.main.__module__)
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True", "nnlite.train"]


def test_a_command_module_called_runs_the_api(tmp_path):
    import nnlite.plan as command

    with pytest.raises(UserError, match="give RAW"):
        command(None, tmp_path / "work")
    assert command.main is not None  # still the command


def python_blocks(path: Path) -> str:
    return "\n".join(re.findall(r"^```python\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL))


def test_the_walk_through_has_every_step():
    code = python_blocks(REPO / "docs" / "python.md")
    for call in ("nnlite.plan(", "nnlite.preprocess(", "nnlite.train(", "nnlite.Predictor(", ".predict(volume",
                 ".predict_folder("):
        assert call in code, call


@pytest.mark.slow
def test_the_walk_through_runs(tmp_path, monkeypatch):
    """docs/python.md's code blocks, in order, as one script (fewer fingerprint samples: seconds)."""
    from nnlite.planning import fingerprint

    monkeypatch.setattr(fingerprint, "FOREGROUND_SAMPLES_TOTAL", 1e4)
    monkeypatch.chdir(tmp_path)
    code = python_blocks(REPO / "docs" / "python.md")
    namespace: dict = {"__name__": "__walk__"}
    exec(compile(code, "docs/python.md", "exec"), namespace)  # noqa: S102  the page's own code
    prediction, result = namespace["prediction"], namespace["result"]
    assert prediction.labels.shape == namespace["volume"].shape[1:]
    assert result.summary is not None and len(result.epochs) == 2
    assert (tmp_path / "python-walk" / "prediction.png").stat().st_size > 0
    # the array's label map is the one the folder prediction wrote for the same case
    written = np.asarray(nib.load(tmp_path / "python-walk" / "predictions" / "demo_001.nii.gz").dataobj)
    np.testing.assert_array_equal(prediction.labels, written.transpose(2, 1, 0))
