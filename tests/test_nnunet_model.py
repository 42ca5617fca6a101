"""`convert nnunet-model`: nnU-Net v2 model folders (laid out from recorded facts) → a WORK that predicts."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.convert import main as convert_main
from nnlite.network import build_unet
from nnlite.plans import load_plans
from nnlite.predict import main as predict_main
from nnlite.network.checkpoints import load_checkpoint
from nnlite.training.nnunet_model import convert_nnunet_model, load_nnunet_checkpoint
from tests import nnunet_fixtures
from tests.command_line import assert_one_line_error, run_command
from tests.nnunet_fixtures import (CHECKPOINT_FACTS, IN_CHANNELS, NUM_CLASSES, nnunet_checkpoint, nnunet_plans,
                                   nnunet_state_dict, write_model_folder, write_nnunet_postprocessing)


def test_checkpoint_of_nnunets_trainer_loads_with_the_recorded_allow_list_only(tmp_path):
    """The fixture holds what nnU-Net's trainer pickles (numpy scalars, a torch.device); plain
    weights_only=True refuses it, nnlite's allow-list loads it."""
    path = tmp_path / "checkpoint_final.pth"
    plans = nnunet_plans()
    torch.save(nnunet_checkpoint(nnunet_state_dict("plain_3d"), plans, "3d_fullres"), path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    checkpoint = load_nnunet_checkpoint(path)
    assert sorted(checkpoint) == CHECKPOINT_FACTS["keys"]
    assert checkpoint["init_args"]["configuration"] == "3d_fullres"


def test_foreign_objects_in_a_pth_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    checkpoint = nnunet_checkpoint(nnunet_state_dict("plain_2d"), nnunet_plans(), "3d_fullres")
    checkpoint["logging"] = argparse.Namespace(evil=True)
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match="never unpickles"):
        load_nnunet_checkpoint(path)


def write_case(folder, name, shape=(20, 40, 40), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for channel in range(IN_CHANNELS):
        image = rng.normal(size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{name}_{channel:04d}.nii.gz")


@pytest.mark.slow
def test_converted_model_predicts_with_the_command_line(tmp_path):
    """A model trained by a trainer variant converts; predict runs on it; mirror axes as trained."""
    model = write_model_folder(tmp_path / "results", nnunet_plans(), trainer="nnUNetTrainer_5epochs",
                               folds=(0, 1), mirror_axes=(1, 2))
    work = tmp_path / "work"
    result = run_command("convert", "nnunet-model", model, work)
    assert result.returncode == 0, result.stderr
    assert "folds 0, 1" in result.stdout
    plans = load_plans(work / "plans.json")
    config = plans.configurations["3d_fullres"]
    assert config.patch_size == (16, 32, 32) and config.inference_mirror_axes == (1, 2)
    assert (work / "dataset.json").is_file()
    write_case(tmp_path / "in", "case_a")
    result = run_command("predict", work, tmp_path / "in", tmp_path / "out", "--config", "3d_fullres",
                         "--device", "cpu")
    assert result.returncode == 0, result.stderr
    seg = np.asarray(nib.load(tmp_path / "out" / "case_a.nii.gz").dataobj)
    assert seg.shape == (20, 40, 40) and set(np.unique(seg)) <= {0, 1, 2}


def test_region_based_model_converts_and_paints_its_regions(tmp_path, monkeypatch):
    """nnU-Net's region models: as many sigmoid outputs as regions; labels painted in
    regions_class_order (BraTS-like: 3 nested regions, matching the fixture's 3 outputs)."""
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    region_json = {**nnunet_fixtures.dataset_json(), "labels": regions, "regions_class_order": [1, 2, 3]}
    monkeypatch.setattr(nnunet_fixtures, "dataset_json", lambda: region_json)
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    work = tmp_path / "work"
    assert convert_main(["nnunet-model", str(model), str(work)]) == 0
    plans = load_plans(work / "plans.json")
    assert [r.name for r in plans.regions] == ["whole", "core", "enhancing"] and plans.num_classes == NUM_CLASSES
    write_case(tmp_path / "in", "case_a")
    assert predict_main([str(work), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu",
                         "--save-probabilities"]) == 0
    seg = np.asarray(nib.load(tmp_path / "out" / "case_a.nii.gz").dataobj)
    assert seg.shape == (20, 40, 40) and set(np.unique(seg)) <= {0, 1, 2, 3}
    probabilities = np.load(tmp_path / "out" / "case_a.npz")["probabilities"]
    assert probabilities.shape == (3, *seg.shape[::-1])  # one sigmoid probability per region, (K, Z, Y, X)


def test_converted_weights_reproduce_the_nnunet_tensors(tmp_path):
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    convert_nnunet_model(model, tmp_path / "work")
    state = load_checkpoint(tmp_path / "work/results/3d_fullres/fold_0/checkpoint_final.pt")["network"]
    original = nnunet_state_dict("plain_3d", seed=0)
    assert torch.equal(state["encoder.stages.2.1.norm.bias"], original["encoder.stages.2.0.convs.1.norm.bias"])
    assert torch.equal(state["decoder.heads.2.weight"], original["decoder.seg_layers.2.weight"])


def test_residual_encoder_model_converts(tmp_path):
    model = write_model_folder(tmp_path / "results", nnunet_plans("resenc_3d"), network="resenc_3d")
    convert_nnunet_model(model, tmp_path / "work")
    plans = load_plans(tmp_path / "work/plans.json")
    network = plans.configurations["3d_fullres"].network
    assert network.encoder == "residual" and network.blocks_per_stage == (1, 2, 2, 3)
    net = build_unet(network, IN_CHANNELS, plans.num_classes)
    net.load_state_dict(load_checkpoint(tmp_path / "work/results/3d_fullres/fold_0/checkpoint_final.pt")["network"])


def test_lowres_and_cascade_folders_make_one_cascade_work(tmp_path):
    plans = nnunet_plans(cascade=True)
    lowres = write_model_folder(tmp_path / "results", plans, configuration="3d_lowres")
    cascade = write_model_folder(tmp_path / "results", plans, configuration="3d_cascade_fullres",
                                 first_input_channels=IN_CHANNELS + 2)  # + one-hot of labels 1, 2
    work = tmp_path / "work"
    convert_nnunet_model(lowres, work)
    convert_nnunet_model(cascade, work)
    converted = load_plans(work / "plans.json")
    assert converted.configurations["3d_cascade_fullres"].previous_stage == "3d_lowres"
    assert converted.configurations["3d_lowres"].next_stage == "3d_cascade_fullres"
    for name in ("3d_lowres", "3d_cascade_fullres"):
        assert (work / "results" / name / "fold_0" / "checkpoint_final.pt").is_file()
    write_case(tmp_path / "in", "case_a", shape=(16, 32, 32))
    args = [str(work), str(tmp_path / "in"), str(tmp_path / "out"), "--config", "3d_cascade_fullres", "--device", "cpu"]
    assert predict_main(args) == 0  # the lowres stage runs first, its labels feed the cascade
    assert np.asarray(nib.load(tmp_path / "out" / "case_a.nii.gz").dataobj).shape == (16, 32, 32)


def test_other_architecture_and_existing_folds_are_clear_errors(tmp_path):
    plans = nnunet_plans()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my_lab.nets.AttentionUNet"
    model = write_model_folder(tmp_path / "results", plans)
    result = run_command("convert", "nnunet-model", model, tmp_path / "work")
    assert_one_line_error(result, "my_lab.nets.AttentionUNet")
    good = write_model_folder(tmp_path / "good", nnunet_plans())
    convert_nnunet_model(good, tmp_path / "work2")
    with pytest.raises(UserError, match="already holds"):
        convert_nnunet_model(good, tmp_path / "work2")
    convert_nnunet_model(good, tmp_path / "work2", overwrite=True)


def test_a_missing_weight_is_named(tmp_path):
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["network_weights"]["decoder.seg_layers.1.bias"]
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match="decoder.heads.1.bias"):
        convert_nnunet_model(model, tmp_path / "work")


def test_plans_json_of_the_model_folder_is_required(tmp_path):
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    (model / "plans.json").unlink()
    with pytest.raises(UserError, match="plans.json is missing"):
        convert_nnunet_model(model, tmp_path / "work")
    assert json.loads((model / "dataset.json").read_text())["labels"]


def test_prediction_mirrors_the_axes_the_model_was_trained_with(mirror_axes_seen, fp32_on_cpu):
    from dataclasses import replace

    from nnlite.inference.sliding_window import predict_preprocessed
    from tests.inference_fixtures import tiny_plans

    config = replace(tiny_plans().configurations["3d_fullres"], inference_mirror_axes=(1, 2))
    net = build_unet(config.network, 1, 3, deep_supervision=False).eval()
    predict_preprocessed([net], np.zeros((1, 8, 16, 16), np.float32), config)
    assert mirror_axes_seen == [(1, 2)]  # spatial axes Y, X only, as trained
    predict_preprocessed([net], np.zeros((1, 8, 16, 16), np.float32), replace(config, inference_mirror_axes=None))
    assert mirror_axes_seen[-1] == (0, 1, 2)


def test_a_model_trained_without_mirroring_is_predicted_without_mirroring(tmp_path, mirror_axes_seen, fp32_on_cpu):
    """nnU-Net's NoMirroring trainers store inference_allowed_mirroring_axes = None, which nnU-Net's
    predictor reads as "do not mirror" (its sliding window mirrors only when the axes are not None)."""
    from nnlite.inference.sliding_window import predict_preprocessed

    model = write_model_folder(tmp_path / "results", nnunet_plans(), trainer="nnUNetTrainerNoMirroring",
                               mirror_axes=None)
    convert_nnunet_model(model, tmp_path / "work")
    config = load_plans(tmp_path / "work" / "plans.json").configurations["3d_fullres"]
    assert config.inference_mirror_axes == ()
    net = build_unet(config.network, IN_CHANNELS, NUM_CLASSES, deep_supervision=False).eval()
    predict_preprocessed([net], np.zeros((IN_CHANNELS, *config.patch_size), np.float32), config)
    assert mirror_axes_seen == [()]


def test_the_allow_list_is_exactly_what_nnunets_checkpoints_were_recorded_to_need():
    from nnlite.training.nnunet_model import nnunet_checkpoint_globals

    names = {f"{g.__module__}.{g.__qualname__}" for g in nnunet_checkpoint_globals()}
    names = {n.replace("numpy.core.", "numpy._core.") for n in names}
    assert names == set(CHECKPOINT_FACTS["weights_only_refuses"])


def test_a_model_whose_plans_predate_nnunet_2_4_converts(tmp_path):
    """Before v2.4 nnU-Net wrote the network as flat keys (UNet_class_name, …): the weights must
    be mapped by that class as plans_from_nnunet reads it, not by a missing `architecture` entry."""
    plans = nnunet_plans()
    config = plans["configurations"]["3d_fullres"]
    kw = config.pop("architecture")["arch_kwargs"]
    features = kw["features_per_stage"]
    config.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=features[0],
                  unet_max_num_features=max(features), conv_kernel_sizes=kw["kernel_sizes"],
                  pool_op_kernel_sizes=kw["strides"], n_conv_per_stage_encoder=kw["n_conv_per_stage"],
                  n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"])
    model = write_model_folder(tmp_path / "results", plans)
    report = convert_nnunet_model(model, tmp_path / "work")
    assert report.checkpoints == 1
    assert load_plans(tmp_path / "work" / "plans.json").configurations["3d_fullres"].network.encoder == "plain"


def write_world_case(folder, name, voxels, affine):
    """One case, every channel the same voxels (i, j, k) stored with `affine`."""
    folder.mkdir(parents=True, exist_ok=True)
    for channel in range(IN_CHANNELS):
        nib.save(nib.Nifti1Image(voxels * (channel + 1), affine), folder / f"{name}_{channel:04d}.nii.gz")


def test_a_reorienting_readers_model_predicts_any_stored_orientation_as_nnunet(tmp_path):
    """plans' image_reader_writer NibabelIOWithReorient: nnU-Net gives the network the case in its
    closest RAS orientation and writes the label map back in the file's orientation, so the same
    world image stored as RAS and as P-S-L gets the same labels at the same world positions."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    plans = nnunet_plans()
    plans["image_reader_writer"] = "NibabelIOWithReorient"
    model = write_model_folder(tmp_path / "results", plans, mirror_axes=None)  # mirroring would hide flips
    work = tmp_path / "work"
    convert_nnunet_model(model, work)
    assert load_plans(work / "plans.json").extra["orientation"] == "RAS"
    voxels = np.random.default_rng(3).normal(size=(24, 32, 16)).astype(np.float32)  # (i, j, k), RAS
    ras = nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 1.0, 1.0]))
    stored = ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(("P", "S", "L"))))
    write_world_case(tmp_path / "in", "ras", voxels, ras.affine)
    write_world_case(tmp_path / "in", "psl", np.asarray(stored.dataobj), stored.affine)
    assert predict_main([str(work), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"]) == 0
    pred_ras, pred_psl = (nib.load(tmp_path / "out" / f"{case}.nii.gz") for case in ("ras", "psl"))
    np.testing.assert_allclose(pred_psl.affine, stored.affine, atol=1e-5)  # written in the file's orientation
    labels_ras = np.asarray(pred_ras.dataobj)
    assert max(np.mean(labels_ras == v) for v in range(NUM_CLASSES)) < 0.95  # the labels depend on the input
    same = np.asarray(nib.as_closest_canonical(pred_psl).dataobj) == labels_ras
    assert same.mean() >= 0.999


def test_a_reader_nnlite_cannot_honour_is_refused_in_one_line_at_convert(tmp_path, monkeypatch):
    plans = nnunet_plans()
    plans["image_reader_writer"] = "SimpleITKIOWithReorient"
    model = write_model_folder(tmp_path / "results", plans)
    result = run_command("convert", "nnunet-model", model, tmp_path / "work")
    assert_one_line_error(result, "SimpleITKIOWithReorient")
    assert not (tmp_path / "work" / "plans.json").exists()
    del plans["image_reader_writer"]  # no plans key: dataset.json's overwrite_image_reader_writer chose it
    dataset = {**nnunet_fixtures.dataset_json(), "overwrite_image_reader_writer": "MyLabIO"}
    monkeypatch.setattr(nnunet_fixtures, "dataset_json", lambda: dataset)
    with pytest.raises(UserError, match="MyLabIO"):
        convert_nnunet_model(write_model_folder(tmp_path / "other", plans), tmp_path / "work")


def test_readers_that_give_voxels_as_stored_need_no_setting(tmp_path):
    for reader in ("SimpleITKIO", "NibabelIO"):
        plans = nnunet_plans()
        plans["image_reader_writer"] = reader
        convert_nnunet_model(write_model_folder(tmp_path / reader, plans), tmp_path / reader / "work")
        assert "orientation" not in load_plans(tmp_path / reader / "work" / "plans.json").extra


@pytest.mark.parametrize("kind, function", [("data", "resample_torch_fornnunet"), ("seg", "resample_torch_simple"),
                                            ("probabilities", "no_resampling_hack")])
def test_a_resampling_function_nnlite_does_not_implement_is_refused_naming_it(tmp_path, kind, function):
    plans = nnunet_plans()
    plans["configurations"]["3d_fullres"][f"resampling_fn_{kind}"] = function
    result = run_command("convert", "nnunet-model", write_model_folder(tmp_path / "results", plans), tmp_path / "w")
    assert_one_line_error(result, function)
    assert "3d_fullres" in result.stderr


def test_resampling_kwargs_are_read_with_the_functions_own_defaults(tmp_path):
    """resample_data_or_seg_to_shape's force_separate_z defaults to False (never separate z), not
    to nnlite's automatic rule: a plan without the key is refused, not read as None."""
    plans = nnunet_plans()
    del plans["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]["force_separate_z"]
    with pytest.raises(UserError, match="force_separate_z = False"):
        convert_nnunet_model(write_model_folder(tmp_path / "results", plans), tmp_path / "work")


def largest_component_of(seg, labels):
    """Expectation written from nnU-Net's remove_all_but_largest_component_from_segmentation: the
    union of `labels`, 26-connected (full connectivity), all but its biggest component → 0."""
    from scipy import ndimage

    mask = np.isin(seg, labels)
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return seg
    biggest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return np.where(mask & (components != biggest), 0, seg)


def test_nnunets_postprocessing_json_is_applied_by_predict_postprocess(tmp_path):
    """crossval_results_folds_0/postprocessing.json: keep the largest foreground component, then of
    label 2 (nnU-Net writes a label as an int, the foreground as a list)."""
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    fn = "remove_all_but_largest_component_from_segmentation"
    write_nnunet_postprocessing(model, [fn, fn], [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}])
    work = tmp_path / "work"
    convert_nnunet_model(model, work)
    decision = json.loads((work / "results" / "3d_fullres" / "postprocessing.json").read_text())
    assert decision["steps"] == [[1, 2], [2]]
    write_case(tmp_path / "in", "case_a", shape=(16, 32, 32))
    args = [str(work), str(tmp_path / "in"), "--device", "cpu", "--no-mirroring"]
    assert predict_main([args[0], args[1], str(tmp_path / "raw"), *args[2:]]) == 0
    assert predict_main([args[0], args[1], str(tmp_path / "pp"), *args[2:], "--postprocess"]) == 0
    raw, done = (np.asarray(nib.load(tmp_path / d / "case_a.nii.gz").dataobj) for d in ("raw", "pp"))
    expected = largest_component_of(largest_component_of(raw, [1, 2]), [2])
    assert not np.array_equal(expected, raw)  # the steps change this prediction
    np.testing.assert_array_equal(done, expected)


@pytest.mark.parametrize("functions, kwargs, named", [
    (["fill_holes_in_segmentation"], [{"labels_or_regions": 1}], "fill_holes_in_segmentation"),
    (["remove_all_but_largest_component_from_segmentation"], [{"labels_or_regions": 1, "background_label": 2}],
     "background_label"),
    (["remove_all_but_largest_component_from_segmentation"], [{"labels_or_regions": [[1, 7]]}], "7"),
])
def test_a_postprocessing_nnlite_cannot_apply_is_refused_in_one_line(tmp_path, functions, kwargs, named):
    model = write_model_folder(tmp_path / "results", nnunet_plans())
    write_nnunet_postprocessing(model, functions, kwargs, folder=None)  # beside plans.json
    result = run_command("convert", "nnunet-model", model, tmp_path / "work")
    assert_one_line_error(result, named)
    assert "postprocessing.json" in result.stderr and not (tmp_path / "work").exists()
