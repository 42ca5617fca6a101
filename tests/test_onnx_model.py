"""`export onnx`: a trained demo fold → ONNX, run by onnxruntime within 1e-3 of PyTorch; `predict --onnx`."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import onnxruntime
import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.inference.onnx_model import OnnxNetwork, export_onnx
from nnlite.inference.onnx_model import load_exported_network as load_fold_network
from nnlite.plans import load_plans, save_plans
from nnlite.predict import main as predict_main
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.train import main as train_main
from tests.command_line import assert_one_line_error, run_command
from tests.inference_fixtures import save_random_model, tiny_plans
from tests.work_fixtures import CONFIG, small_work

TOLERANCE = 1e-3  # the bound on |onnxruntime − PyTorch| logits in fp32


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """The 3-case demo WORK with a narrow network trained for a few iterations on fold 0."""
    root = tmp_path_factory.mktemp("onnx")
    work = small_work(root)
    plans = load_plans(work / "plans.json")
    config = plans.configurations[CONFIG]
    narrow = replace(config.network, features_per_stage=tuple(max(2, f // 8) for f in config.network.features_per_stage))
    save_plans(replace(plans, configurations={CONFIG: replace(config, network=narrow)}), work / "plans.json")
    run_preprocessing(work, workers=1)
    assert train_main([str(work), "--config", CONFIG, "--fold", "0", "--epochs", "2", "--iters-per-epoch", "2",
                       "--val-iters", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                       "--set", "validation.enabled=false"]) == 0  # the fold validation is not under test
    return root, work


@pytest.mark.slow
def test_exported_trained_fold_matches_pytorch_for_other_batch_and_sizes(trained_demo, tmp_path):
    _, work = trained_demo
    out = tmp_path / "model.onnx"
    result = run_command("export", "onnx", work, out, "--config", CONFIG, "--fold", "0")
    assert result.returncode == 0, result.stderr
    assert "max |Δ|" in result.stdout
    network, channels, classes = load_fold_network(work, CONFIG, "0")
    config = load_plans(work / "plans.json").configurations[CONFIG]
    shape = [s + t for s, t in zip(config.patch_size, config.network.total_stride)]  # not the export's size
    x = torch.randn(2, channels, *shape, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = network(x).numpy()
    assert logits.shape == (2, classes, *shape)
    assert np.abs(logits - expected).max() <= TOLERANCE
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros


@pytest.mark.slow
def test_predict_with_onnx_agrees_with_the_checkpoint(trained_demo, tmp_path, fp32_on_cpu):
    root, work = trained_demo
    out = tmp_path / "model.onnx"
    export_onnx(work, CONFIG, "0", out)
    images = root / "raw" / "imagesTr"
    case = sorted(images.iterdir())[0].name.rsplit("_", 1)[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in images.glob(f"{case}_*.nii.gz"):
        (inputs / path.name).symlink_to(path)
    common = ["--config", CONFIG, "--folds", "0", "--device", "cpu"]
    assert predict_main([str(work), str(inputs), str(tmp_path / "torch"), *common]) == 0
    assert predict_main([str(work), str(inputs), str(tmp_path / "onnx"), *common, "--onnx", str(out)]) == 0
    a = np.asarray(nib.load(tmp_path / "torch" / f"{case}.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "onnx" / f"{case}.nii.gz").dataobj)
    assert (a == b).mean() >= 0.999


def test_export_errors_are_one_line(tmp_path):
    work = tmp_path / "work"
    save_random_model(work, tiny_plans())
    assert_one_line_error(run_command("export", "onnx", work, tmp_path / "m.onnx", "--config", "2d"), "--config", "2d")
    with pytest.raises(UserError, match=r"\.onnx"):
        export_onnx(work, "3d_fullres", "0", tmp_path / "model.bin")
    with pytest.raises(UserError, match="not found"):
        OnnxNetwork(tmp_path / "missing.onnx")


def test_2d_network_exports_with_dynamic_sizes(tmp_path):
    from nnlite.network import build_unet
    from nnlite.plans import ConfigurationPlan, NetworkPlan

    plans = tiny_plans()
    network = NetworkPlan(strides=((1, 1), (2, 2)), kernel_sizes=((3, 3), (3, 3)), features_per_stage=(4, 8))
    config = ConfigurationPlan(spacing=(1.0, 1.0), patch_size=(16, 16), median_shape=(16, 16), batch_size=2,
                               network=network, normalization=("zscore",), use_mask_for_norm=(False,),
                               batch_dice=False, data_identifier="2d")
    plans = replace(plans, configurations={"2d": config})
    save_plans(plans, tmp_path / "work" / "plans.json")
    folder = tmp_path / "work" / "results" / "2d" / "fold_0"
    folder.mkdir(parents=True)
    net = build_unet(network, 1, plans.num_classes)
    torch.save({"network": net.state_dict(), "optimizer": {}, "epoch": 1, "metrics": [], "rng": {}, "plan": {},
                "config": {}}, folder / "checkpoint_final.pt")
    report = export_onnx(tmp_path / "work", "2d", "0", tmp_path / "m.onnx")
    assert report.max_abs_difference <= TOLERANCE
    x = torch.randn(3, 1, 24, 40)
    assert OnnxNetwork(tmp_path / "m.onnx")(x).shape == (3, 3, 24, 40)
